"""Index a folder of class subfolders (the Stanford Dogs layout) and split it, without TensorFlow.

Scanning checks every file with Pillow, so that non-image and corrupt files are skipped and
counted before training instead of crashing an epoch, and so that an empty folder, a class with
no images or a single class is an error before any model is built. The search coordinator and
`trainers.train` scan a config's folders (`scan_data_folders`) to reject a bad data directory
before any trial starts or TensorFlow is imported.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trainers.errors import DataError, DataWarning

if TYPE_CHECKING:
    from trainers.config.schema import DataConfig


@dataclass(frozen=True)
class ImageFolder:
    """Readable image files and their labels, in a deterministic (sorted) order."""

    root: Path
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    skipped: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Split:
    """Indices into an ImageFolder (or an array dataset) for training and validation."""

    train: np.ndarray
    validation: np.ndarray


def _is_readable_image(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False
    return True


def scan_image_folder(root: str | Path, *, class_names: Sequence[str] | None = None) -> ImageFolder:
    """Index `root/<class>/<image>`; with `class_names`, require exactly those classes.

    Hidden files are ignored; anything else that Pillow cannot read is skipped, counted and
    reported once in a DataWarning.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data directory {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data source {root} is not a directory of class subfolders")
    found = sorted(
        entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    if not found:
        raise DataError(f"data directory {root} has no class subfolders (expected root/<class>/)")
    if class_names is not None and list(class_names) != found:
        missing = sorted(set(class_names) - set(found))
        extra = sorted(set(found) - set(class_names))
        raise DataError(
            f"validation folder {root} must have the training classes; "
            f"missing: {missing or 'none'}, unexpected: {extra or 'none'}"
        )
    if len(found) < 2:
        raise DataError(f"data directory {root} has {len(found)} class; at least 2 are needed")

    paths: list[str] = []
    labels: list[int] = []
    skipped: list[str] = []
    empty_classes: list[str] = []
    for label, name in enumerate(found):
        files = sorted(
            entry
            for entry in (root / name).rglob("*")
            if entry.is_file() and not entry.name.startswith(".")
        )
        readable = [path for path in files if _is_readable_image(path)]
        skipped.extend(str(path) for path in sorted(set(files) - set(readable)))
        if not readable:
            empty_classes.append(name)
        paths.extend(str(path) for path in readable)
        labels.extend([label] * len(readable))
    if empty_classes:
        raise DataError(f"data directory {root}: classes with no readable images: {empty_classes}")
    if skipped:
        shown = ", ".join(Path(path).name for path in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(
            DataWarning(
                f"skipped {len(skipped)} unreadable or non-image file(s) in {root}: {shown}{more}"
            ),
            stacklevel=2,
        )
    return ImageFolder(root, tuple(paths), tuple(labels), tuple(found), tuple(skipped))


@dataclass(frozen=True)
class DataFolders:
    """A directory source's scanned folders: the training folder, and the validation folder
    where the config names one (else its validation images are split off the training one)."""

    train: ImageFolder
    validation: ImageFolder | None = None


def scan_data_folders(data: DataConfig) -> DataFolders | None:
    """Scan the folders `data` names (None for a synthetic or TFDS source): the check that
    rejects a bad data directory before TensorFlow is imported or anything is written, and
    whose result the pipelines then use (`trainers.data.pipelines.load_datasets`)."""
    if data.source_kind != "directory":
        return None
    train = scan_image_folder(data.source)
    if not isinstance(data.validation, str):
        return DataFolders(train)
    return DataFolders(train, scan_image_folder(data.validation, class_names=train.class_names))


def stratified_split(labels: Sequence[int] | np.ndarray, fraction: float, seed: int) -> Split:
    """Hold out `fraction` of every class, chosen by `seed`; the same inputs give the same split.

    A class with a single image stays entirely in training.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    validation: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held_out = min(len(members) - 1, max(1, round(fraction * len(members))))
        validation.append(members[:held_out])
        train.append(members[held_out:])
    train_indices = np.sort(np.concatenate(train))
    validation_indices = np.sort(np.concatenate(validation))
    if validation_indices.size == 0:
        raise DataError("the validation split is empty: every class has a single image")
    return Split(train_indices, validation_indices)
