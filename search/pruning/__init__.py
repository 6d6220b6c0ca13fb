"""Pruning: the collapse rules, the noise they must exceed, and the per-epoch decision.

Empty on purpose: importing the package loads none of its modules (nor TensorFlow).
"""
