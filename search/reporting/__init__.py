"""What a study shows: console lines, the parent run's plots, analysis tables and figures.

Empty on purpose: importing the package loads none of its modules (nor TensorFlow).
"""
