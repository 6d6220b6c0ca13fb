"""The generated tasks: deterministic, disjoint source/target, class-dependent images."""

from __future__ import annotations

import numpy as np
import pytest

from trainers.data.synthetic import MAX_CLASSES_PER_TASK, generate, task_classes


def test_same_seed_gives_identical_images_and_more_images_keep_the_first_ones() -> None:
    first = generate("target", num_classes=3, images_per_class=4, image_size=32, seed=7)
    again = generate("target", num_classes=3, images_per_class=4, image_size=32, seed=7)
    larger = generate("target", num_classes=4, images_per_class=6, image_size=32, seed=7)
    assert np.array_equal(first.images, again.images)
    # Image (class c, index i) depends only on (seed, c, i).
    assert np.array_equal(first.images[:4], larger.images[:4])
    other_seed = generate("target", num_classes=3, images_per_class=4, image_size=32, seed=8)
    assert not np.array_equal(first.images, other_seed.images)


def test_source_and_target_are_different_tasks() -> None:
    source = {cls.name for cls in task_classes("source", MAX_CLASSES_PER_TASK)}
    target = {cls.name for cls in task_classes("target", MAX_CLASSES_PER_TASK)}
    assert len(source) == len(target) == MAX_CLASSES_PER_TASK == 120
    # No class is shared, so pretraining on source and fine-tuning on target is real transfer.
    assert not source & target


def test_images_are_uint8_pixels_with_labels_in_class_order() -> None:
    data = generate("source", num_classes=5, images_per_class=3, image_size=40)
    assert data.images.shape == (15, 40, 40, 3) and data.images.dtype == np.uint8
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert len(set(data.class_names)) == 5
    # Real pixel range, not 0-1: the backbones expect 0-255.
    assert data.images.max() > 200


def test_classes_differ_more_than_images_within_a_class() -> None:
    data = generate("target", num_classes=6, images_per_class=30, image_size=32)
    # Mean colour of the central region per image: a crude class signal a linear probe can use.
    centres = data.images[:, 10:22, 10:22].reshape(len(data.images), -1, 3).mean(axis=1)
    class_means = np.stack([centres[data.labels == label].mean(axis=0) for label in range(6)])
    within = np.mean([centres[data.labels == label].std(axis=0).mean() for label in range(6)])
    between = class_means.std(axis=0).mean()
    assert between > 0.2 * within


def test_bad_task_arguments_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown synthetic task"):
        task_classes("imagenet", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"2\.\.120"):
        task_classes("source", 1)


def test_the_far_task_is_where_and_how_big_whatever_the_look() -> None:
    data = generate("far", num_classes=10, images_per_class=30, image_size=32)
    assert data.class_names[:2] == ("small-top-left", "small-top-right")
    assert data.class_names[5:] == (
        "large-top-left",
        "large-top-right",
        "large-bottom-left",
        "large-bottom-right",
        "large-centre",
    )
    # Objects are brighter than the background on average: a class's mean image is brightest
    # in the quadrant where its objects sit, and large objects cover more than small ones.
    brightness = data.images.astype(np.float32).mean(axis=3)
    quadrants = {"top-left": (0, 0), "top-right": (0, 1), "bottom-left": (1, 0)}
    for name, (row, column) in quadrants.items():
        mean = brightness[data.labels == data.class_names.index(f"large-{name}")].mean(axis=0)
        cells = mean.reshape(2, 16, 2, 16).mean(axis=(1, 3))
        assert np.unravel_index(cells.argmax(), cells.shape) == (row, column), name
    large = brightness[data.labels == data.class_names.index("large-centre")].mean()
    small = brightness[data.labels == data.class_names.index("small-centre")].mean()
    assert large > small
    # Deterministic like the other tasks, and its looks come from the whole catalogue.
    again = generate("far", num_classes=2, images_per_class=30, image_size=32)
    assert np.array_equal(data.images[:60], again.images)
    with pytest.raises(ValueError, match=r"2\.\.10 for far"):
        generate("far", num_classes=11, images_per_class=2, image_size=32)


def _bar_angle(image: np.ndarray) -> float:
    """The angle (radians, 0..pi) of the strongest straight edges of a blurred image: a bar's
    long sides, from the image's structure tensor."""
    kernel = np.ones(5) / 5  # blurs the textures away, keeps the bar's outline
    gray = image.astype(np.float32).mean(axis=2)
    for axis in (0, 1):
        gray = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="same"), axis, gray)
    gy, gx = np.gradient(gray)
    gradient = 0.5 * np.arctan2(2 * (gx * gy).sum(), (gx * gx).sum() - (gy * gy).sum())
    return float((gradient + np.pi / 2) % np.pi)  # edges run across their gradient


def test_the_orientation_task_is_the_angle_of_a_bar_whatever_the_look() -> None:
    data = generate("orientation", num_classes=6, images_per_class=20, image_size=64)
    assert data.class_names == (
        "angle-15",
        "angle-45",
        "angle-75",
        "angle-105",
        "angle-135",
        "angle-165",
    )
    # The bar's angle, read off the pixels by a crude edge estimate, falls in the image's class
    # bucket far more often than by chance (1 in 6): 80 of 120 images.
    buckets = [int(_bar_angle(image) // (np.pi / 6)) for image in data.images]
    assert sum(bucket == label for bucket, label in zip(buckets, data.labels, strict=True)) >= 72
    # Deterministic, and at most 12 classes.
    again = generate("orientation", num_classes=2, images_per_class=20, image_size=64)
    assert not np.array_equal(data.images[:40], again.images)  # 6 buckets are not 2 buckets
    assert np.array_equal(
        again.images,
        generate("orientation", num_classes=2, images_per_class=20, image_size=64).images,
    )
    with pytest.raises(ValueError, match=r"2\.\.12 for orientation"):
        generate("orientation", num_classes=13, images_per_class=2, image_size=32)
