"""`python -m search.run` and `python -m search.export` as users run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def _run(
    module: str, args: list[str], cwd: Path, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_unknown_study_lists_the_valid_names(tmp_path: Path) -> None:
    line = _one_error_line(_run("search.run", ["--study", "effnet_b9"], tmp_path))
    assert line == (
        "error: unknown study 'effnet_b9'; valid studies: demo, effnet_b0, effnet_b4, smoke"
    )
    assert not (tmp_path / "optuna.db").exists()


def test_missing_data_folder_is_reported_before_any_trial(tmp_path: Path) -> None:
    line = _one_error_line(_run("search.run", ["--study", "effnet_b4"], tmp_path))
    assert "data directory data/stanford_dogs/train does not exist" in line
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_single_class_data_folder_is_reported_before_any_trial(tmp_path: Path) -> None:
    from trainers.data.synthetic import write_image_folder

    write_image_folder(
        tmp_path / "dogs", "target", num_classes=2, images_per_class=2, image_size=32
    )
    for extra in sorted((tmp_path / "dogs").iterdir())[1:]:
        for image in extra.iterdir():
            image.unlink()
        extra.rmdir()
    line = _one_error_line(_run("search.run", ["--study", "effnet_b0", "--data", "dogs"], tmp_path))
    assert "has 1 class; at least 2 are needed" in line
    assert not (tmp_path / "optuna.db").exists()


def test_a_missing_weights_file_is_one_error_line_naming_the_option(tmp_path: Path) -> None:
    line = _one_error_line(
        _run("search.run", ["--study", "demo", "--weights", "mine.weights.h5"], tmp_path)
    )
    assert line.startswith("error: --weights: ")
    assert f"{tmp_path / 'mine.weights.h5'} does not exist" in line
    assert not (tmp_path / "optuna.db").exists()


def test_a_study_whose_weights_are_not_a_keras_file_is_one_error_line(tmp_path: Path) -> None:
    # The file is there (the study file's own check), but it is no .weights.h5: every trial
    # would fail on it.
    (tmp_path / "mine.txt").write_text("not weights")
    (tmp_path / "mine.yaml").write_text("name: mine\nspace: demo\nweights: mine.txt\n")
    line = _one_error_line(_run("search.run", ["--study", "mine.yaml"], tmp_path))
    assert line == (
        "error: the mine study's model.weights: expected a Keras .weights.h5 file, got "
        f"{tmp_path / 'mine.txt'}; pass --weights imagenet or a .weights.h5 file"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine.txt", "mine.yaml"]


def test_a_data_source_the_space_rejects_is_one_error_line(tmp_path: Path) -> None:
    line = _one_error_line(
        _run("search.run", ["--study", "demo", "--data", "synthetic:foo"], tmp_path)
    )
    assert "synthetic task 'foo' is unknown" in line


def test_unwritable_output_is_reported_before_any_trial(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    args = ["--study", "demo", "--output", "a-file/runs"]
    line = _one_error_line(_run("search.run", args, tmp_path))
    assert "output folder a-file/runs is not writable" in line
    assert not (tmp_path / "optuna.db").exists()


def test_bad_worker_options_are_one_error_line(tmp_path: Path) -> None:
    line = _one_error_line(
        _run("search.run", ["--study", "demo", "--workers", "3", "--gpus", "0,1"], tmp_path)
    )
    assert "one worker per GPU" in line
    line = _one_error_line(
        _run(
            "search.run",
            ["--study", "demo", "--grace-period", "5", "--heartbeat-interval", "10"],
            tmp_path,
        )
    )
    assert "--grace-period must exceed --heartbeat-interval" in line


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--budget-epochs", "0"], "--budget-epochs must be at least 1, got 0"),
        (["--budget-hours", "-1"], "--budget-hours must be positive, got -1.0"),
        (["--budget-hours", "nan"], "--budget-hours must be positive, got nan"),
    ],
)
def test_a_bad_budget_is_one_error_line(tmp_path: Path, option: list[str], expected: str) -> None:
    line = _one_error_line(_run("search.run", ["--study", "demo", *option], tmp_path))
    assert expected in line
    assert not (tmp_path / "optuna.db").exists()


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--oracle", "bayesian"], "--oracle chooses a KerasTuner oracle: pass --engine"),
        (
            ["--engine", "keras-tuner", "--pruner", "asha"],
            "--pruner is Optuna's: KerasTuner's oracles have none",
        ),
    ],
)
def test_engine_options_that_do_not_go_together_are_one_error_line(
    tmp_path: Path, option: list[str], expected: str
) -> None:
    line = _one_error_line(_run("search.run", ["--study", "demo", *option], tmp_path))
    assert expected in line
    # Refused before anything is written.
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("not a url", "malformed storage URL 'not a url'"),
        ("postgresql://nobody:secret@127.0.0.1:1/none", "is unreachable"),
    ],
)
def test_bad_storage_is_one_error_line(tmp_path: Path, storage: str, expected: str) -> None:
    line = _one_error_line(_run("search.run", ["--study", "demo", "--storage", storage], tmp_path))
    assert expected in line
    # Passwords never reach the terminal.
    assert "secret" not in line


def test_a_storage_file_that_is_not_a_database_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("these are notes, not a study\n" * 100)
    args = ["--study", "demo", "--storage", "sqlite:///notes.db"]
    line = _one_error_line(_run("search.run", args, tmp_path))
    assert "notes.db is not a SQLite database" in line
    # The file is left as it was.
    assert (tmp_path / "notes.db").read_text().startswith("these are notes")


def test_the_resume_command_is_quoted_for_the_shell_and_hides_passwords() -> None:
    from search.run import _resume_command

    command = _resume_command(
        ["--study", "demo", "--data", "my dogs", "--storage=postgresql://me:secret@db/optuna"]
    )
    assert command == (
        "python -m search.run --study demo --data 'my dogs' '--storage=postgresql://me:***@db/optuna'"
    )
    separate = _resume_command(["--storage", "postgresql://me:secret@db/optuna"])
    assert "secret" not in separate and "postgresql://me:***@db/optuna" in separate


def test_unreachable_tracking_server_is_one_error_line(tmp_path: Path) -> None:
    args = ["--study", "demo", "--tracking-uri", "http://127.0.0.1:9"]
    line = _one_error_line(_run("search.run", args, tmp_path))
    assert "MLflow tracking server http://127.0.0.1:9 is unreachable" in line
    assert not (tmp_path / "optuna.db").exists()


def test_export_of_an_unknown_or_unfinished_study_is_one_error_line(tmp_path: Path) -> None:
    line = _one_error_line(_run("search.export", ["--study", "nothing-here"], tmp_path))
    assert "no study storage at sqlite:///optuna.db" in line
    # Asking did not create an empty database.
    assert not (tmp_path / "optuna.db").exists()
