"""A trial's end: verdicts, closing, outcomes and the retry policy.

Empty on purpose: importing the package loads none of its modules (nor TensorFlow).
"""
