"""Generated image-classification tasks for tests, the demo and pretraining, with no download.

Each class is a combination of a shape, a fill texture and a hue, drawn at a random position,
scale and rotation over a noisy background. The 240 combinations are split once, by a fixed
shuffle, into two disjoint halves: the *source* task (for pretraining a backbone) and the
*target* task (for fine-tuning it). Both draw on the same visual vocabulary, so features
learned on one transfer to the other, as ImageNet features do to Stanford Dogs.

A third task, *far*, stands for data far from the backbone's pretraining: its 10 classes are
where an object sits and how big it is (five places, two sizes), whatever its shape, texture
and hue. Pretraining on the source task taught the backbone to ignore exactly that (poses are
random there), so a head on frozen features stays low and fine-tuning decides, as on a real
dataset far from ImageNet.

A fourth task, *orientation*, is far in another way, and is kept out of what chooses the
search's portfolio (`bench.portfolio`) so that it can judge it: its classes are the angle at
which a bar lies (`ORIENTATION_CLASSES` buckets of 180 degrees), whatever its place, size,
texture and hue. Pretraining drew every object at a random angle, so the backbone learned to
ignore exactly that.

Every image depends only on (seed, class index, image index): asking for more images or
classes never changes the ones already generated.

    python -m trainers.synthetic --task target --classes 8 --images-per-class 50 --out data/target
"""

from __future__ import annotations

import colorsys
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

Task = Literal["source", "target", "far", "orientation"]

SHAPES = ("disk", "square", "triangle", "ring", "cross", "diamond", "bar", "hourglass")
TEXTURES = ("solid", "striped", "checkered", "dotted", "graded")
HUES = {"red": 0.0, "orange": 0.08, "yellow": 0.16, "green": 0.33, "blue": 0.6, "purple": 0.78}

#: Bumped whenever a change here alters any generated image: caches keyed by it then refill.
GENERATOR_VERSION = 1

# Fixed, so that the split into source and target classes never changes between releases.
_CATALOGUE_SEED = 20_261_122


@dataclass(frozen=True)
class SyntheticClass:
    shape: str
    texture: str
    hue: str

    @property
    def name(self) -> str:
        return f"{self.hue}-{self.texture}-{self.shape}"


def _catalogue() -> list[SyntheticClass]:
    combos = [SyntheticClass(*combo) for combo in itertools.product(SHAPES, TEXTURES, HUES)]
    order = np.random.default_rng(_CATALOGUE_SEED).permutation(len(combos))
    return [combos[index] for index in order]


MAX_CLASSES_PER_TASK = len(SHAPES) * len(TEXTURES) * len(HUES) // 2

#: The far task's places (object centre) and sizes (radius range), as shares of the image.
FAR_PLACES = {
    "top-left": (0.3, 0.3),
    "top-right": (0.7, 0.3),
    "bottom-left": (0.3, 0.7),
    "bottom-right": (0.7, 0.7),
    "centre": (0.5, 0.5),
}
FAR_SIZES = {"small": (0.10, 0.15), "large": (0.22, 0.28)}
FAR_CLASSES = tuple((size, place) for size, place in itertools.product(FAR_SIZES, FAR_PLACES))
#: The orientation task's most classes: 15-degree buckets of the bar's angle.
ORIENTATION_CLASSES = 12


def task_classes(task: Task, num_classes: int) -> tuple[SyntheticClass, ...]:
    """The first `num_classes` classes of a task; source and target never share a class."""
    if task not in ("source", "target"):
        raise ValueError(f"unknown synthetic task {task!r}; allowed: source, target")
    if not 2 <= num_classes <= MAX_CLASSES_PER_TASK:
        raise ValueError(f"num_classes must be in 2..{MAX_CLASSES_PER_TASK}, got {num_classes}")
    catalogue = _catalogue()
    half = (
        catalogue[:MAX_CLASSES_PER_TASK] if task == "source" else catalogue[MAX_CLASSES_PER_TASK:]
    )
    return tuple(half[:num_classes])


MaskFunction = Callable[[np.ndarray, np.ndarray, float], np.ndarray]

_SHAPE_MASKS: dict[str, MaskFunction] = {
    "disk": lambda u, v, r: u * u + v * v < r * r,
    "square": lambda u, v, r: (np.abs(u) < 0.85 * r) & (np.abs(v) < 0.85 * r),
    "triangle": lambda u, v, r: (v < 0.7 * r) & (v > -0.9 * r + 1.9 * np.abs(u)),
    "ring": lambda u, v, r: (u * u + v * v < r * r) & (u * u + v * v > 0.36 * r * r),
    "cross": lambda u, v, r: (
        ((np.abs(u) < 0.3 * r) & (np.abs(v) < r)) | ((np.abs(v) < 0.3 * r) & (np.abs(u) < r))
    ),
    "diamond": lambda u, v, r: np.abs(u) + np.abs(v) < r,
    "bar": lambda u, v, r: (np.abs(u) < 1.1 * r) & (np.abs(v) < 0.35 * r),
    "hourglass": lambda u, v, r: (np.abs(u) < np.abs(v) + 0.05) & (np.abs(v) < r),
}


def _texture(name: str, u: np.ndarray, v: np.ndarray, r: float, frequency: float) -> np.ndarray:
    if name == "solid":
        return np.ones_like(u)
    if name == "striped":
        return 0.5 + 0.5 * (np.sin(u * frequency * 2 * np.pi) > 0)
    if name == "checkered":
        return 0.5 + 0.5 * ((np.floor(u * frequency) + np.floor(v * frequency)) % 2)
    if name == "dotted":
        waves = np.sin(u * frequency * 2 * np.pi) * np.sin(v * frequency * 2 * np.pi)
        return 0.4 + 0.6 * (waves > 0.3)
    return np.clip(0.3 + (u / r + 1) / 2 * 0.7, 0.3, 1.0)


@dataclass(frozen=True)
class Placement:
    """Where the object's centre may fall and how big it may be, as shares of the image."""

    centre_low: tuple[float, float] = (0.3, 0.3)
    centre_high: tuple[float, float] = (0.7, 0.7)
    radius: tuple[float, float] = (0.18, 0.32)


def render(
    cls: SyntheticClass,
    image_size: int,
    rng: np.random.Generator,
    placement: Placement = Placement(),
    angle_range: tuple[float, float] = (0.0, np.pi),
) -> np.ndarray:
    """One uint8 RGB image of `cls`, with its pose, colour and background drawn from `rng`."""
    grid = np.arange(image_size, dtype=np.float32) / image_size
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    centre_x, centre_y = rng.uniform(placement.centre_low, placement.centre_high)
    radius = float(rng.uniform(*placement.radius))
    angle = rng.uniform(*angle_range)
    dx, dy = xx - centre_x, yy - centre_y
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    mask = _SHAPE_MASKS[cls.shape](u, v, radius)
    pattern = _texture(cls.texture, u, v, radius, float(rng.uniform(8, 12)))
    hue = (HUES[cls.hue] + rng.normal(0, 0.02)) % 1.0
    colour = np.array(
        colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0)), np.float32
    )
    background = rng.uniform(0, 0.5, 3).astype(np.float32)
    noise = rng.normal(0, 0.06, (image_size, image_size, 3)).astype(np.float32)
    image = np.where(mask[..., None], colour * pattern[..., None], background + noise)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


@dataclass(frozen=True)
class SyntheticImages:
    images: np.ndarray  # uint8, (count, size, size, 3)
    labels: np.ndarray  # int64, (count,)
    class_names: tuple[str, ...]


def generate(
    task: Task, *, num_classes: int, images_per_class: int, image_size: int, seed: int = 0
) -> SyntheticImages:
    """All images of a task, class by class."""
    if task == "far":
        return _generate_far(num_classes, images_per_class, image_size, seed)
    if task == "orientation":
        return _generate_orientation(num_classes, images_per_class, image_size, seed)
    classes = task_classes(task, num_classes)
    count = num_classes * images_per_class
    images = np.empty((count, image_size, image_size, 3), np.uint8)
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), images_per_class)
    task_index = 0 if task == "source" else 1
    for position, (class_index, image_index) in enumerate(
        itertools.product(range(num_classes), range(images_per_class))
    ):
        rng = np.random.default_rng([seed, task_index, class_index, image_index])
        images[position] = render(classes[class_index], image_size, rng)
    return SyntheticImages(images, labels, tuple(cls.name for cls in classes))


def _far_placement(size: str, place: str) -> Placement:
    x, y = FAR_PLACES[place]
    jitter = 0.06
    return Placement((x - jitter, y - jitter), (x + jitter, y + jitter), FAR_SIZES[size])


def _draw_classes(
    num_classes: int,
    images_per_class: int,
    seed: int,
    task_index: int,
    draw: Callable[[int, np.random.Generator], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Every image of a task whose classes are not looks, and its labels: `draw` renders one
    image of a class from the image's own generator, seeded by (seed, task, class, image)."""
    images = np.stack(
        [
            draw(class_index, np.random.default_rng([seed, task_index, class_index, image_index]))
            for class_index, image_index in itertools.product(
                range(num_classes), range(images_per_class)
            )
        ]
    )
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), images_per_class)
    return images, labels


def _generate_far(
    num_classes: int, images_per_class: int, image_size: int, seed: int
) -> SyntheticImages:
    if not 2 <= num_classes <= len(FAR_CLASSES):
        raise ValueError(f"num_classes must be in 2..{len(FAR_CLASSES)} for far, got {num_classes}")
    looks = _catalogue()

    def draw(class_index: int, rng: np.random.Generator) -> np.ndarray:
        look = looks[int(rng.integers(len(looks)))]
        placement = _far_placement(*FAR_CLASSES[class_index])
        return render(look, image_size, rng, placement)

    images, labels = _draw_classes(num_classes, images_per_class, seed, 2, draw)
    names = tuple(f"{size}-{place}" for size, place in FAR_CLASSES[:num_classes])
    return SyntheticImages(images, labels, names)


def _generate_orientation(
    num_classes: int, images_per_class: int, image_size: int, seed: int
) -> SyntheticImages:
    if not 2 <= num_classes <= ORIENTATION_CLASSES:
        raise ValueError(
            f"num_classes must be in 2..{ORIENTATION_CLASSES} for orientation, got {num_classes}"
        )
    looks = _catalogue()
    width = np.pi / num_classes

    def draw(class_index: int, rng: np.random.Generator) -> np.ndarray:
        # Any texture and hue, always a bar: the one shape whose angle shows.
        drawn = looks[int(rng.integers(len(looks)))]
        look = SyntheticClass("bar", drawn.texture, drawn.hue)
        # The middle half of the class's bucket: neighbouring classes never touch.
        centre = (class_index + 0.5) * width
        return render(look, image_size, rng, angle_range=(centre - width / 4, centre + width / 4))

    images, labels = _draw_classes(num_classes, images_per_class, seed, 3, draw)
    names = tuple(f"angle-{round(180 * (k + 0.5) / num_classes)}" for k in range(num_classes))
    return SyntheticImages(images, labels, names)


def write_image_folder(
    root: str | Path,
    task: Task,
    *,
    num_classes: int,
    images_per_class: int,
    image_size: int,
    seed: int = 0,
) -> Path:
    """Write a task as `root/<class name>/<index>.png`, the Stanford Dogs folder layout."""
    from PIL import Image

    root = Path(root)
    data = generate(
        task,
        num_classes=num_classes,
        images_per_class=images_per_class,
        image_size=image_size,
        seed=seed,
    )
    for index, (image, label) in enumerate(zip(data.images, data.labels, strict=True)):
        folder = root / data.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:06d}.png")
    return root
