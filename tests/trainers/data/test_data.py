"""Input pipelines: splits, bad data handling, and what the batches contain."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import small_config_dict
from trainers.config.schema import TrainConfig
from trainers.data.image_folder import scan_data_folders, scan_image_folder, stratified_split
from trainers.data.pipelines import balanced_class_weights, load_datasets
from trainers.errors import DataError, DataWarning


def _folder_config(source: Path, **data: object) -> TrainConfig:
    raw = small_config_dict()
    raw["data"] = {"source": str(source), "image_size": 32, **data}
    raw["batch_size"] = 4
    return TrainConfig.from_dict(raw)


def _count(dataset: object) -> int:
    return sum(int(images.shape[0]) for images, _ in dataset)  # type: ignore[attr-defined]


def test_directory_source_splits_deterministically_and_stratified(image_folder: Path) -> None:
    folder = scan_image_folder(image_folder)
    assert folder.num_classes == 3 and len(folder.paths) == 24
    first = stratified_split(folder.labels, 0.25, seed=3)
    again = stratified_split(folder.labels, 0.25, seed=3)
    other = stratified_split(folder.labels, 0.25, seed=4)
    assert np.array_equal(first.validation, again.validation)
    assert not np.array_equal(first.validation, other.validation)
    # Two of every class's eight images are held out, and no image is in both parts.
    held_out_labels = np.asarray(folder.labels)[first.validation]
    assert np.bincount(held_out_labels).tolist() == [2, 2, 2]
    assert not set(first.train) & set(first.validation)


def test_directory_pipeline_yields_raw_pixels_and_one_hot_labels(image_folder: Path) -> None:
    datasets = load_datasets(_folder_config(image_folder, validation=0.25))
    assert (datasets.train_count, datasets.validation_count) == (18, 6)
    images, labels = next(iter(datasets.train))
    assert images.shape == (4, 32, 32, 3) and labels.shape == (4, 3)
    assert float(images.numpy().max()) > 1.5  # 0-255, never pre-normalised
    assert np.allclose(labels.numpy().sum(axis=1), 1.0)
    assert _count(datasets.train) == 18 and _count(datasets.validation) == 6
    # Known lengths, in batches of 4: Keras never has to find an epoch's end by running out.
    assert int(datasets.train.cardinality()) == 5 and int(datasets.validation.cardinality()) == 2


def test_a_file_pillow_accepts_but_tensorflow_cannot_decode_keeps_the_count(
    image_folder: Path,
) -> None:
    from PIL import Image

    first_class = sorted(p for p in image_folder.iterdir())[0]
    # TensorFlow decodes no TIFF; Pillow reads it, so the scan keeps it.
    with Image.open(next(first_class.glob("*.png"))) as image:
        image.save(first_class / "scan.tif")
    datasets = load_datasets(_folder_config(image_folder, validation=0.25))
    assert datasets.skipped_files == ()
    assert datasets.train_count + datasets.validation_count == 25
    # Its place is taken by another of the split's images: the length stays the one counted.
    assert _count(datasets.train) == datasets.train_count
    assert _count(datasets.validation) == datasets.validation_count
    expected = -(-datasets.train_count // 4)
    assert int(datasets.train.cardinality()) == expected


def test_separate_validation_folder_is_used(image_folder: Path, tmp_path: Path) -> None:
    from trainers.data.synthetic import write_image_folder

    validation = write_image_folder(
        tmp_path / "val", "target", num_classes=3, images_per_class=2, image_size=40, seed=9
    )
    datasets = load_datasets(_folder_config(image_folder, validation=str(validation)))
    assert (datasets.train_count, datasets.validation_count) == (24, 6)


def test_validation_folder_must_have_the_same_classes(image_folder: Path, tmp_path: Path) -> None:
    from trainers.data.synthetic import write_image_folder

    other = write_image_folder(
        tmp_path / "val", "source", num_classes=3, images_per_class=2, image_size=40
    )
    config = _folder_config(image_folder, validation=str(other))
    with pytest.raises(DataError, match="must have the training classes"):
        load_datasets(config)
    # The scan that search.run and trainers.train make before TensorFlow says so too.
    with pytest.raises(DataError, match="must have the training classes"):
        scan_data_folders(config.data)


def test_the_folders_scanned_first_are_the_ones_loaded(image_folder: Path) -> None:
    from PIL import Image

    config = _folder_config(image_folder, validation=0.25)
    folders = scan_data_folders(config.data)
    assert folders is not None and folders.validation is None
    assert len(folders.train.paths) == 24
    # An image added after the scan is not read: the pipelines load what was checked, and
    # read no file twice.
    first_class = sorted(image_folder.iterdir())[0]
    with Image.open(next(first_class.glob("*.png"))) as image:
        image.save(first_class / "late.png")
    datasets = load_datasets(config, folders=folders)
    assert datasets.train_count + datasets.validation_count == 24
    assert scan_data_folders(TrainConfig.from_dict(small_config_dict()).data) is None


def test_corrupt_and_non_image_files_are_skipped_counted_and_never_crash_an_epoch(
    image_folder: Path,
) -> None:
    first_class = sorted(p for p in image_folder.iterdir())[0]
    (first_class / "notes.txt").write_text("not an image")
    good_png = next(first_class.glob("*.png")).read_bytes()
    (first_class / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (first_class / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    with pytest.warns(DataWarning, match="skipped 3 unreadable or non-image file"):
        datasets = load_datasets(_folder_config(image_folder, validation=0.25))
    assert sorted(Path(path).name for path in datasets.skipped_files) == [
        "garbage.jpg",
        "notes.txt",
        "truncated.png",
    ]
    # A full pass over both pipelines works and sees exactly the 24 good images.
    assert _count(datasets.train) + _count(datasets.validation) == 24


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_datasets(_folder_config(tmp_path / "nowhere"))


def test_empty_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no class subfolders"):
        load_datasets(_folder_config(tmp_path / "empty"))


def test_single_class_is_an_error(image_folder: Path) -> None:
    for extra in sorted(image_folder.iterdir())[1:]:
        for file in extra.iterdir():
            file.unlink()
        extra.rmdir()
    with pytest.raises(DataError, match="has 1 class; at least 2 are needed"):
        load_datasets(_folder_config(image_folder))


def test_class_without_images_is_an_error(image_folder: Path) -> None:
    (image_folder / "zebra").mkdir()
    (image_folder / "zebra" / "readme.txt").write_text("no pictures here")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(DataError, match=r"classes with no readable images: \['zebra'\]"):
            load_datasets(_folder_config(image_folder))


def test_a_file_instead_of_a_directory_is_an_error(tmp_path: Path) -> None:
    file = tmp_path / "images.zip"
    file.write_bytes(b"PK")
    with pytest.raises(DataError, match="is not a directory"):
        load_datasets(_folder_config(file))


def test_tfds_source_without_the_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_tfds(name: str, *args: object, **kwargs: object) -> object:
        if name == "tensorflow_datasets":
            raise ImportError("No module named 'tensorflow_datasets'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    # Fault injection: CI may or may not have the optional extra installed.
    monkeypatch.setattr(builtins, "__import__", no_tfds)
    raw = small_config_dict()
    raw["data"] = {"source": "tfds:stanford_dogs", "image_size": 32}
    with pytest.raises(DataError, match=r"pip install -e '\.\[tfds\]'"):
        load_datasets(TrainConfig.from_dict(raw))


def test_synthetic_source_and_class_weights(make_config: object) -> None:
    raw = small_config_dict()
    raw["data"]["class_weighting"] = "balanced"
    datasets = load_datasets(TrainConfig.from_dict(raw))
    # 6 classes x 40 images, 20% held out per class.
    assert (datasets.train_count, datasets.validation_count) == (192, 48)
    assert datasets.class_weights == {label: 1.0 for label in range(6)}
    assert balanced_class_weights([0, 0, 0, 1], 2) == {0: 4 / 6, 1: 2.0}


def test_augmentation_keeps_shapes_and_pixel_range() -> None:
    for policy in ("basic", "randaugment"):
        raw = small_config_dict()
        raw["data"]["augmentation"] = policy
        datasets = load_datasets(TrainConfig.from_dict(raw))
        images, _ = next(iter(datasets.train))
        values = images.numpy()
        assert values.shape == (32, 64, 64, 3)
        assert values.min() >= 0.0 and values.max() <= 255.0 and values.max() > 1.5
