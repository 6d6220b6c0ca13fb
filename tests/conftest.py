"""Shared fixtures: small configs, generated image folders and the committed pretrained weights.

Everything runs on CPU with generated data; no test touches the network.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests (real training, whole studies) first, the rest after, each in its order.

    The test files are shared out between two processes as they come; a long file that came
    last would leave one process idle while the other trains.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def wait_for(predicate: Callable[[], object], timeout: float) -> bool:
    """Poll `predicate` every 50 ms until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


PRETRAINED_WEIGHTS = REPO / "spaces" / "weights" / "mobilenetv3small_synthetic_source_64.weights.h5"


def small_config_dict(**overrides: Any) -> dict[str, Any]:
    """A fast two-phase job on the generated target task (MobileNetV3Small, 64 px)."""
    raw: dict[str, Any] = {
        "data": {
            "source": "synthetic:target",
            "image_size": 64,
            "synthetic": {"classes": 6, "images_per_class": 40},
        },
        "model": {"backbone": "MobileNetV3Small", "weights": str(PRETRAINED_WEIGHTS)},
        "phases": [
            {"epochs": 2, "learning_rate": 3e-3},
            {"epochs": 2, "learning_rate": 1e-4, "unfreeze_blocks": 2},
        ],
        "batch_size": 32,
    }
    for key, value in overrides.items():
        raw[key] = value
    return raw


@pytest.fixture
def make_config() -> Callable[..., Any]:
    from trainers.config.schema import TrainConfig

    def make(**overrides: Any) -> TrainConfig:
        return TrainConfig.from_dict(small_config_dict(**overrides))

    return make


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Three classes x 8 PNGs at 40 px, in the Stanford Dogs folder layout."""
    from trainers.data.synthetic import write_image_folder

    return write_image_folder(
        tmp_path / "images", "target", num_classes=3, images_per_class=8, image_size=40
    )
