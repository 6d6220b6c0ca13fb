"""The training loop: phases, epoch windows, history and learning-curve plots.

Empty on purpose: importing the package loads none of its modules (nor TensorFlow).
"""
