"""`python -m trainers.train`: files written, MLflow run logged, one-line errors (a study file
given to it among them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from trainers.config.schema import load_config
from trainers.errors import ConfigError
from trainers.fit.history import TrainingHistory
from trainers.train import main as train_main

#: The command's main, then whether it imported TensorFlow, as the last line of its output.
_SAYS_IF_TENSORFLOW = (
    "import sys\n"
    "from trainers.train import main\n"
    "code = main(sys.argv[1:])\n"
    "print('tensorflow imported:', 'tensorflow' in sys.modules)\n"
    "sys.exit(code)\n"
)


def _run(
    args: list[str], cwd: Path, *, say_if_tensorflow: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = ["-c", _SAYS_IF_TENSORFLOW] if say_if_tensorflow else ["-m", "trainers.train"]
    return subprocess.run(
        [sys.executable, *command, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _refused_before_tensorflow(args: list[str], cwd: Path) -> str:
    """Run the command on bad input: exit status 2, said before TensorFlow was imported (it
    takes seconds); returns what it printed on stderr."""
    done = _run(args, cwd, say_if_tensorflow=True)
    assert done.returncode == 2, done.stderr
    assert done.stdout.splitlines()[-1] == "tensorflow imported: False"
    return done.stderr


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    # The example config names its weights relative to the working directory, as users run it.
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "weights").symlink_to(REPO / "spaces" / "weights")
    return tmp_path


@pytest.mark.slow
def test_small_example_trains_saves_and_logs_to_mlflow(workdir: Path) -> None:
    config_path = REPO / "configs" / "cpu_small.yaml"
    done = _run(["--config", str(config_path), "--output", "out", "--cache-dir", "cache"], workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    # Per-epoch progress on stdout.
    assert "epoch   1/8 [phase 1]" in done.stdout and "epoch   8/8 [phase 2]" in done.stdout
    # With --cache-dir, both phases trained on cached inputs, kept for the next run.
    assert "feature cache: head phase on frozen features, computed in" in done.stdout
    assert "cut-point cache: phase 2 trains its unfrozen blocks" in done.stdout
    kinds = sorted(
        path.name.split("-")[0] for path in (workdir / "cache").iterdir() if path.is_dir()
    )
    assert kinds == ["activations", "features", "images"]
    out = workdir / "out"
    assert {p.name for p in out.iterdir()} == {
        "model.keras",
        "config.yaml",
        "history.csv",
        "learning_curves.png",
    }
    # The saved config is the resolved input config.
    assert load_config(out / "config.yaml") == load_config(config_path)
    history = TrainingHistory.from_csv(out / "history.csv")
    assert history.series("epoch") == [1, 2, 3, 4, 5, 6, 7, 8]

    import keras

    model = keras.saving.load_model(out / "model.keras")
    assert model.output_shape == (None, 8)

    from mlflow import MlflowClient

    # Default tracking store: sqlite:///mlflow.db in the working directory.
    assert (workdir / "mlflow.db").is_file()
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("production")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["phase2.unfreeze_blocks"] == "3"
    assert run.data.params["unfrozen_units"] == "3"
    assert run.data.params["model.backbone"] == "MobileNetV3Small"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"model.keras", "config.yaml", "history.csv", "learning_curves.png"}
    # Beside the store (here the working directory's), not in MLflow's ./mlruns.
    beside = workdir / "mlartifacts" / "production" / run.info.run_id / "artifacts"
    assert {path.name for path in beside.iterdir()} == artifacts
    assert not (workdir / "mlruns").exists()
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(history.best_val_accuracy)


@pytest.mark.slow
def test_an_image_folder_trains_without_warnings_and_keeps_artifacts_beside_the_store(
    image_folder: Path, tmp_path: Path
) -> None:
    # From one folder, with the store and the output in two others: nothing lands in the first.
    work, store = tmp_path / "work", tmp_path / "store"
    work.mkdir()
    store.mkdir()
    config = tmp_path / "folder.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"source": str(image_folder), "image_size": 32},
                "model": {"backbone": "MobileNetV3Small", "weights": None},
                "phases": [{"epochs": 1, "learning_rate": 1e-3}],
                "batch_size": 8,
            }
        )
    )
    tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
    output = tmp_path / "out"
    done = _run(
        ["--config", str(config), "--output", str(output), "--tracking-uri", tracking_uri], work
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # A folder's pipeline knows its length: Keras has no "ran out of data" to say (it did at
    # the end of every fit's first epoch), nor any other warning.
    assert "ran out of data" not in done.stderr
    assert "Warning" not in done.stderr, done.stderr[-3000:]
    assert list(work.iterdir()) == []

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("production")
    (run,) = client.search_runs([experiment.experiment_id])
    beside = store / "mlartifacts" / "production" / run.info.run_id / "artifacts"
    listed = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert listed == {"model.keras", "config.yaml", "history.csv", "learning_curves.png"}
    assert {path.name for path in beside.iterdir()} == listed


def test_bad_config_is_one_error_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"source": "synthetic:target"},
                "model": {"backbone": "EfficientNetB0"},
                "phases": [{"epochs": 1, "learning_rate": 1e-3, "optimiser": "adam"}],
            }
        )
    )
    done = _run(["--config", str(config)], tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ")
    assert "phases[0].optimiser: unknown key" in done.stderr
    assert "Traceback" not in done.stderr
    # Nothing was created for a config that never ran.
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    "study", sorted((REPO / "studies").glob("*.yaml")), ids=lambda path: path.name
)
def test_a_study_file_is_one_line_saying_how_to_run_it(
    study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / study.name).write_text(study.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as raised:
        load_config(study.name)
    name = study.name
    expected = f"{name} is a study file; run it with python -m search.run --study {name}"
    assert str(raised.value) == expected
    # The command, in process (a config's errors come before TensorFlow is imported).
    assert train_main(["--config", study.name]) == 2
    assert capsys.readouterr().err == f"error: {expected}\n"
    # Nothing was created for a study file that never ran.
    assert sorted(path.name for path in tmp_path.iterdir()) == [study.name]


def test_a_config_with_a_mistake_is_not_taken_for_a_study_file(tmp_path: Path) -> None:
    # A config's own mistakes are still reported as such, whatever its keys.
    config = tmp_path / "typo.yaml"
    config.write_text(
        (REPO / "configs" / "cpu_small.yaml").read_text(encoding="utf-8") + "batch_sise: 8\n"
    )
    with pytest.raises(ConfigError, match=r"typo\.yaml: invalid config: batch_sise: unknown key"):
        load_config(config)


def test_malformed_exported_yaml_is_one_error_line(tmp_path: Path) -> None:
    config = tmp_path / "best.yaml"
    config.write_text(
        "# Best trial of study 'demo'\ndata:\n  source: [synthetic:target\nmodel: {}\n"
    )
    done = _run(["--config", str(config)], tmp_path)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {config}: not valid YAML at line 4")
    assert "Traceback" not in done.stderr


def test_missing_config_file_is_one_error_line(tmp_path: Path) -> None:
    done = _run(["--config", "nope.yaml"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: nope.yaml: no such config file"


def test_unwritable_output_is_reported_before_training(workdir: Path) -> None:
    blocker = workdir / "a-file"
    blocker.write_text("")
    output = blocker / "out" / "run"
    config = str(REPO / "configs" / "cpu_small.yaml")
    stderr = _refused_before_tensorflow(["--config", config, "--output", str(output)], workdir)
    assert stderr == f"error: output folder {output} is not writable: Not a directory ({blocker})\n"
    # Nothing was created.
    assert sorted(path.name for path in workdir.iterdir()) == ["a-file", "spaces"]


def test_bad_data_directory_is_one_error_line(tmp_path: Path) -> None:
    config = tmp_path / "dogs.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"source": str(tmp_path / "no-such-dogs"), "image_size": 32},
                "model": {"backbone": "EfficientNetB0", "weights": None},
                "phases": [{"epochs": 1, "learning_rate": 1e-3}],
            }
        )
    )
    stderr = _refused_before_tensorflow(["--config", str(config), "--output", "out"], tmp_path)
    assert stderr == f"error: data directory {tmp_path / 'no-such-dogs'} does not exist\n"
    # Nothing was written: no folder, no store.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dogs.yaml"]


def test_a_missing_weights_file_is_one_error_line_and_writes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "mine.yaml"
    raw = yaml.safe_load((REPO / "configs" / "cpu_small.yaml").read_text(encoding="utf-8"))
    raw["model"]["weights"] = "nope.weights.h5"
    config.write_text(yaml.safe_dump(raw))
    stderr = _refused_before_tensorflow(["--config", str(config), "--output", "out"], tmp_path)
    assert stderr == "error: model.weights: no such weights file: nope.weights.h5\n"
    # No output folder, no MLflow store, no run.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine.yaml"]
