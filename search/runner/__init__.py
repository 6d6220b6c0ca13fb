"""Running trials: the coordinator, worker processes, their protocol, slots and liveness.

Empty on purpose: importing the package loads none of its modules (nor TensorFlow).
"""
