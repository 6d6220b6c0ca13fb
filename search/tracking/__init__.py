"""MLflow tracking of a study: runs, and the spool that survives an outage.

Empty on purpose: importing the package loads none of its modules (nor TensorFlow).
"""
