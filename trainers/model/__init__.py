"""The model: backbones, surgery, preprocessing, regularization and optimization.

Empty on purpose: importing the package loads none of its modules (nor TensorFlow).
"""
