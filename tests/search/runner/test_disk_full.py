"""The output folder's disk is full: trials still train and report; only their files are lost.

The study's output folder is a small tmpfs the test mounts and fills to the last byte before
the study starts (it needs root, as on the project's machines and CI; elsewhere the test is
skipped, saying why). Two real tiny trials then run: their workers cannot write a log line,
the study caches cannot be written (decoded images, frozen features, activations), and the
coordinator cannot write a trial's config, history or curves. Each trial still completes, is
told to Optuna and has its per-epoch metrics in MLflow (whose store is elsewhere); each trial
gets one warning that names the files it lost, and no partial cache entry is left behind.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from search.runner.coordinator import run_study
from tests.search.tiny_study import enqueued, settings, tiny_spec

pytestmark = pytest.mark.slow


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs with no byte free."""
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        with (mount_point / "filler").open("wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError:
                pass  # full
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_output_disk_costs_files_not_results(tmp_path: Path, full_disk: Path) -> None:
    with pytest.raises(OSError, match="No space left"):
        (full_disk / "probe").write_bytes(b"x" * 4096)
    spec = tiny_spec(
        "full", enqueued("fine_tune", "pretrained", 1), enqueued("probe", "pretrained", 0)
    )
    lines: list[str] = []
    on_full_disk = settings(tmp_path, 2, output_dir=full_disk / "runs")
    summary = run_study(spec, on_full_disk, log=lines.append)

    study = optuna.load_study(study_name="full", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert summary.finished == 2
    assert [trial.state for trial in study.trials] == [TrialState.COMPLETE] * 2
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for trial in study.trials:
        assert trial.value is not None and trial.value > 0.25  # pretrained: above chance
        run_id = trial.user_attrs["mlflow_run_id"]
        history = client.get_metric_history(run_id, "val_accuracy")
        assert {m.step: m.value for m in history} == trial.intermediate_values
        assert client.get_run(run_id).data.metrics["objective"] == trial.value
        warnings = [line for line in lines if line.startswith(f"warning: trial {trial.number}:")]
        assert len(warnings) == 1
        for name in ("config.yaml", "history.csv", "learning_curves.png"):
            assert f"{name} (No space left on device)" in warnings[0]
    # A cache that could not be written leaves nothing half-written behind.
    cache = full_disk / "runs" / "cache"
    entries = [path.name for path in cache.iterdir()] if cache.is_dir() else []
    assert not [name for name in entries if not name.endswith(".lock")]
