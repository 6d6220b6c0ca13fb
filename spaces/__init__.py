"""Search spaces: one module per space, each a pure function trial -> TrainConfig.

A space takes any object with Optuna's `suggest_float / suggest_int / suggest_categorical` methods
(an `optuna.Trial`, `optuna.trial.FixedTrial`, or an adapter for another engine), imports only the
TensorFlow-free `trainers.config.schema` and `trainers.model.backbones`, and has no side effects.
Each module's docstring gives its run command and which parameters are scientific, nuisance and
fixed.
"""
