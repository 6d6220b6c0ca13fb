"""The validated, immutable job config and its error messages.

Empty on purpose: importing the package loads none of its modules (nor TensorFlow).
"""
