"""Engines: where a study's trials come from (Optuna, or a KerasTuner oracle).

Empty on purpose: importing the package loads none of its modules (nor TensorFlow).
"""
