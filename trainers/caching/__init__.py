"""Caches shared by a study's trials: decoded images, frozen features, activations at a cut.

Empty on purpose: importing the package loads none of its modules (nor TensorFlow).
"""
