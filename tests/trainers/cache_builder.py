"""A cache build that a spawned test process runs (kept free of TensorFlow, to start fast)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from trainers.caching.store import CacheKey, cached_entry

DEMO_KEY = CacheKey("demo", {"size": 64})


def slow_build(root: str, marker_folder: str) -> None:
    def build(folder: Path) -> None:
        # Each build leaves a marker, so the test can count how many processes built.
        Path(marker_folder, f"built-{os.getpid()}").touch()
        time.sleep(0.5)
        (folder / "data.txt").write_text("payload")

    cached_entry(Path(root), DEMO_KEY, build)
