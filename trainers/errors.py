"""Errors a user can fix, raised before training time is spent; the CLIs print them as one line.

Keras-free, so the search coordinator can catch and classify them too.
"""


class TrainerInputError(ValueError):
    """Base of every error caused by input (config, data, weights), not by a bug."""


class ConfigError(TrainerInputError):
    """A config that cannot be used; the message names each offending key."""


class DataError(TrainerInputError):
    """The data cannot be used for training; raised before any model is built."""


class PreprocessingError(TrainerInputError):
    """The input pipeline does not deliver the value range the backbone expects."""


class ModelBuildError(TrainerInputError):
    """The configured backbone or its weights cannot be built."""


class OutputFolderError(TrainerInputError):
    """An output folder that cannot be created or written."""


class DataWarning(UserWarning):
    """Something was skipped in the data (e.g. unreadable files); training goes on."""
