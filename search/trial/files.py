"""A trial's folder under the study's output, and the files a finished trial leaves there.

`trial-NNNN/` holds the worker's log, the trial's config, its history and learning curves, and
for a Hyperband trial its best epoch's weights, which a later round continues from.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from trainers.fit.history import TrainingHistory
from trainers.fit.plots import plot_learning_curves

#: The file a trial's worker saves its best-epoch weights to, in the trial's folder.
BEST_WEIGHTS = "best.weights.h5"


def trial_folder(output_dir: Path, number: int) -> Path:
    """The folder of the study's trial `number` under the study's `output_dir`."""
    return output_dir / f"trial-{number:04d}"


def trial_files(
    folder: Path, config_yaml: str, history: TrainingHistory, title: str
) -> tuple[list[Path], list[str]]:
    """Write a trial's artifacts to `folder`: its config, and its history and learning curves
    when it trained at least one epoch. The worker's log is already there.

    Returns the files written and why the others were not: a full disk costs the trial its
    files, never its result."""
    writers: dict[str, Callable[[Path], object]] = {
        "config.yaml": lambda path: path.write_text(config_yaml, encoding="utf-8")
    }
    if len(history):
        writers["history.csv"] = history.to_csv
        writers["learning_curves.png"] = lambda path: plot_learning_curves(
            history, path, title=title
        )
    files, failures = [], []
    for name, write in writers.items():
        path = folder / name
        try:
            write(path)
            files.append(path)
        except OSError as error:
            path.unlink(missing_ok=True)  # no half-written artifact
            failures.append(f"{name} ({error.strerror or error})")
    log = folder / "worker.log"
    if log.is_file() and log.stat().st_size > 0:
        files.insert(1 if files else 0, log)
    return files, failures
