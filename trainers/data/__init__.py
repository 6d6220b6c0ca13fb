"""Input data: image folders, generated tasks, augmentation and tf.data pipelines.

Empty on purpose: importing the package loads none of its modules (nor TensorFlow).
"""
