"""What `pip install` put here: the package's version, and whether TensorFlow came with it.

Every command's `--version` prints the installed distribution's version (`add_version_option`).
TensorFlow comes from an extra (`cpu` or `cuda`, see pyproject.toml), so a plain
`pip install .` has none; the commands that train say so in one line before they start. It is
looked for without being imported (`require_tensorflow`): the search coordinator must never
import it. Imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util

from trainers.errors import TrainerInputError

DISTRIBUTION = "finetune-search"


class MissingTensorFlowError(TrainerInputError):
    """TensorFlow is not installed: the package was installed without the cpu or cuda extra."""


def require_tensorflow() -> None:
    """Raise MissingTensorFlowError, naming the extras, if TensorFlow cannot be imported."""
    if importlib.util.find_spec("tensorflow") is None:
        raise MissingTensorFlowError(
            f'TensorFlow is not installed: pip install "{DISTRIBUTION}[cpu]", or '
            f'"{DISTRIBUTION}[cuda]" for NVIDIA GPUs (from a clone: pip install -e ".[cpu]")'
        )


def package_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed: pip install -e . in the clone)"


def add_version_option(parser: argparse.ArgumentParser) -> None:
    """`--version`: print `<prog> <version>` and exit."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
