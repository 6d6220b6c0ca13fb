"""Optuna storage: URLs, riding out a lost connection, the study lock.

Empty on purpose: importing the package loads none of its modules (nor TensorFlow).
"""
