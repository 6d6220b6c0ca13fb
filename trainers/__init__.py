"""The Keras side of the project: one complete fine-tuning job from a validated config.

`trainers` knows nothing of Optuna or of `search`; production training runs exactly the code the
search trials ran. `trainers.config.schema` and `trainers.model.backbones` import neither TensorFlow
nor Keras, so the search coordinator can use them without holding any accelerator memory. The
training entry point is `trainers.fit.loop.fit`; the production CLI is `python -m trainers.train`.
"""
