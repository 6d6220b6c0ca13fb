"""Studies: the registry, study files and their overrides, opening a study, its budget.

Empty on purpose: importing the package loads none of its modules (nor TensorFlow).
"""
