"""The installed package as the commands see it: each prints its version (`--version`), and,
installed without TensorFlow (`pip install .`, no extra), those that train say which extra to
install, in one line, before they start anything."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

#: An interpreter whose import system cannot find TensorFlow: the path finder, wrapped, finds
#: no `tensorflow` (so `find_spec` answers None, as where it was never installed) and
#: everything else as before.
HIDE_TENSORFLOW = """
import runpy, sys
from importlib.machinery import PathFinder

class PathFinderWithoutTensorFlow:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] == "tensorflow":
            return None
        return PathFinder.find_spec(name, path, target)

    @staticmethod
    def invalidate_caches():
        PathFinder.invalidate_caches()

sys.meta_path[sys.meta_path.index(PathFinder)] = PathFinderWithoutTensorFlow
"""
#: ... running a module as `python -m MODULE ARGS...` does.
RUN_MODULE = (
    'module = sys.argv.pop(1)\nrunpy.run_module(module, run_name="__main__", alter_sys=True)'
)


def _python_without_tensorflow(
    code: str, args: list[str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-c", HIDE_TENSORFLOW + code, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_interpreter_finds_no_tensorflow_and_everything_else(tmp_path: Path) -> None:
    probe = (
        "import importlib.util\n"
        "print(importlib.util.find_spec('tensorflow'), importlib.util.find_spec('keras').name)\n"
        "import tensorflow\n"
    )
    done = _python_without_tensorflow(probe, [], tmp_path)
    assert done.stdout.split() == ["None", "keras"]
    assert "ModuleNotFoundError: No module named 'tensorflow'" in done.stderr


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("search.run", ["--study", "demo"]),
        ("trainers.train", ["--config", str(REPO / "configs" / "cpu_small.yaml")]),
        ("trainers.pretrain", ["--out", "backbone.weights.h5"]),
    ],
)
def test_a_command_that_trains_names_the_extra_to_install(
    module: str, args: list[str], tmp_path: Path
) -> None:
    done = _python_without_tensorflow(RUN_MODULE, [module, *args], tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        'error: TensorFlow is not installed: pip install "finetune-search[cpu]", or '
        '"finetune-search[cuda]" for NVIDIA GPUs (from a clone: pip install -e ".[cpu]")'
    ]
    assert list(tmp_path.iterdir()) == []  # no store, no output folder: nothing started


COMMANDS = (
    "search.run",
    "search.export",
    "search.studies",
    "search.sync",
    "trainers.train",
    "trainers.synthetic",
    "trainers.pretrain",
)


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_prints_its_version(module: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", module, "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    version = importlib.metadata.version("finetune-search")
    assert done.stdout == f"python -m {module} {version}\n"
    assert list(tmp_path.iterdir()) == []
