"""Training a window of a config's global epochs from saved weights (Hyperband's continuation),
with and without the caches, and a worker that saves its best epoch's weights for it."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from search.runner.protocol import WorkerRequest
from search.runner.worker import _save_best_weights, save_weights_atomically
from tests.conftest import small_config_dict
from trainers.config.schema import TrainConfig
from trainers.errors import ModelBuildError
from trainers.fit.history import TrainingHistory
from trainers.fit.loop import FitResult, fit
from trainers.fit.window import EpochWindow
from trainers.model.surgery import build_model


def _config() -> TrainConfig:
    """Head 2 epochs, then 2 epochs with the top unit unfrozen; 4 classes of 12 images, 32 px."""
    raw = small_config_dict()
    raw["data"]["image_size"] = 32
    raw["data"]["synthetic"] = {"classes": 4, "images_per_class": 12}
    raw["phases"] = [
        {"epochs": 2, "learning_rate": 3e-3},
        {"epochs": 2, "learning_rate": 1e-4, "unfreeze_blocks": 1},
    ]
    raw["batch_size"] = 16
    return TrainConfig.from_dict(raw)


class _StartingWeights(keras.callbacks.Callback):
    """Records the fitted model's weights, by variable path, when each phase starts training."""

    def __init__(self) -> None:
        super().__init__()
        self.phases: list[dict[str, np.ndarray]] = []

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self.phases.append({v.path: keras.ops.convert_to_numpy(v) for v in self.model.weights})


def _weights_in_file(config: TrainConfig, path: Path) -> dict[str, np.ndarray]:
    network = build_model(config, config.data.synthetic.classes)  # type: ignore[union-attr]
    network.model.load_weights(path)
    return {v.path: keras.ops.convert_to_numpy(v) for v in network.model.weights}


def _assert_starts_from(captured: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    # Every weight the phase trains on starts as the loaded file holds it, bit for bit.
    assert captured and set(captured) <= set(expected)
    for path, value in captured.items():
        np.testing.assert_array_equal(value, expected[path], err_msg=path)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study cache the tests share; entries are built by the first run, from pretrained."""
    return tmp_path_factory.mktemp("study") / "cache"


@pytest.fixture(scope="module")
def first_run(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> tuple[FitResult, Path, list[str]]:
    """Epochs 1-3 of the config, its best epoch's weights saved for the continuation the way
    the worker saves them when a Hyperband round asks (`save_weights`); the worker's line is
    the last of `lines`."""
    lines: list[str] = []
    result = fit(
        _config(), window=EpochWindow(until_epoch=3), log=lines.append, cache_dir=cache_dir
    )
    weights = tmp_path_factory.mktemp("first") / "best.weights.h5"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        _save_best_weights(WorkerRequest(7, "", "", save_weights=str(weights)), result)
    lines.append(printed.getvalue().strip())
    return result, weights, lines


@pytest.mark.slow
def test_the_worker_saves_the_best_epochs_weights_whole(first_run: Any) -> None:
    result, weights, lines = first_run
    # One line saying which epoch's weights went where, and no temporary file beside them.
    assert lines[-1] == f"trial 7: saved epoch {result.best_epoch}'s weights to {weights}"
    assert [path.name for path in weights.parent.iterdir()] == [weights.name]


@pytest.mark.slow
def test_a_window_ending_inside_a_phase_stops_there(first_run: Any) -> None:
    result, _, lines = first_run
    # Epochs 1-2 are the head phase; epoch 3 is the first of phase 2, which is cut short.
    assert result.history.series("epoch") == [1, 2, 3]
    # Global epoch numbers still say which phase each epoch belongs to.
    assert result.history.series("phase") == [1, 1, 2]
    # Reaching the window's end is a normal end, not a stop.
    assert result.stop_reason == "completed" and result.stop_detail is None
    # The truncated phase's line says how much of it this run trains.
    assert "phase 2/2: 1 of its 2 epochs (epoch 3), adam lr 0.0001" in "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("cached", [False, True], ids=["on images", "on cached activations"])
def test_a_continuation_skips_trained_phases_and_starts_from_the_loaded_weights(
    first_run: Any, cache_dir: Path, cached: bool
) -> None:
    config = _config()
    _, weights, _ = first_run
    starting = _StartingWeights()
    lines: list[str] = []
    result = fit(
        config,
        window=EpochWindow(after_epoch=3, initial_weights=weights),
        callbacks=[starting],
        log=lines.append,
        cache_dir=cache_dir if cached else None,
    )
    # Only epoch 4 is left; the skipped head phase says who trained its epochs.
    assert result.history.series("epoch") == [4]
    assert result.stop_reason == "completed"
    assert (
        "phase 1/2: skipped, epochs 1-2 were trained by the run whose weights were loaded" in lines
    )
    # Phase 2 resumes, so it trains once, on the model its cache path chose, and every weight
    # of that model starts as the file holds it.
    assert len(starting.phases) == 1
    _assert_starts_from(starting.phases[0], _weights_in_file(config, weights))
    phase_line = next(line for line in lines if line.startswith("phase 2/2"))
    # The resumed phase still unfreezes its blocks first.
    assert "1 of its 2 epochs (epoch 4)" in phase_line and "unfrozen 1 blocks (top)" in phase_line
    # With the cache, it trains the top unit on the activations below it.
    assert phase_line.endswith("on cached activations after expanded_conv_10_add") == cached, (
        phase_line
    )


def _weights_with(config: TrainConfig, path: Path, unit_index: int | None) -> Path:
    """The pretrained model with its head, or one weight of backbone unit `unit_index` (0 = top),
    changed, as a run of the config might have saved it."""
    network = build_model(config, config.data.synthetic.classes)  # type: ignore[union-attr]
    if unit_index is None:
        layer = network.model.get_layer("head_predictions")
    else:
        names = set(network.units[unit_index].layer_names)
        layer = next(
            layer for layer in network.backbone.layers if layer.name in names and layer.weights
        )
    kernel = layer.weights[0]
    kernel.assign(kernel + 0.5)
    network.model.save_weights(path)
    return path


@pytest.mark.slow
def test_a_head_phase_resumed_on_cached_features_starts_from_the_loaded_head(
    tmp_path: Path, cache_dir: Path
) -> None:
    config = _config()
    # After epoch 1 only the head has trained; the backbone is still the pretrained one.
    weights = _weights_with(config, tmp_path / "epoch1.weights.h5", unit_index=None)
    starting = _StartingWeights()
    lines: list[str] = []
    result = fit(
        config,
        window=EpochWindow(after_epoch=1, until_epoch=2, initial_weights=weights),
        callbacks=[starting],
        log=lines.append,
        cache_dir=cache_dir,
    )
    # Epoch 2 only: the head phase resumes at its second epoch and the window ends with it.
    assert result.history.series("epoch") == [2]
    assert "phase 1/2: 1 of its 2 epochs (epoch 2)" in "\n".join(lines)
    # The window ends with the head phase: phase 2 does not run.
    assert "stopped after epoch 2: the end of this run's window (the config has 4)" in lines
    assert not any(line.startswith("phase 2/2") for line in lines)
    # It trains the head on cached features, and the head starts from the loaded head.
    assert any(line.endswith("on cached features") for line in lines)
    assert set(starting.phases[0]) == {"head_predictions/kernel", "head_predictions/bias"}
    _assert_starts_from(starting.phases[0], _weights_in_file(config, weights))


class _StopBeforeTraining(keras.callbacks.Callback):
    """Ends the run as a phase is about to train, keeping the model it would have trained."""

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self.fitted = self.model
        raise _StoppedBeforeTrainingError


class _StoppedBeforeTrainingError(Exception):
    pass


@pytest.mark.slow
def test_caches_hold_what_the_pretrained_backbone_computes_whatever_weights_are_loaded(
    tmp_path: Path, cache_dir: Path, first_run: Any
) -> None:
    """`first_run` built `cache_dir`'s entries from the pretrained weights: the reference."""
    config = _config()
    # A unit that no phase up to epoch 3 trains differs: the file is not from this config's
    # run, and the pretrained backbone's cached activations are not what this model computes.
    weights = _weights_with(config, tmp_path / "deep.weights.h5", unit_index=2)
    fresh_cache = tmp_path / "cache"
    stop = _StopBeforeTraining()
    lines: list[str] = []
    with pytest.raises(_StoppedBeforeTrainingError):
        fit(
            config,
            window=EpochWindow(after_epoch=3, initial_weights=weights),
            callbacks=[stop],
            log=lines.append,
            cache_dir=fresh_cache,
        )
    assert any(
        line.startswith("caches not used: the loaded weights changed the top 3") for line in lines
    )
    # So phase 2 trains the full model on images.
    assert stop.fitted.name == "mobilenetv3small_classifier"
    assert not any("on cached" in line for line in lines)
    # The feature entry built on the way holds the pretrained backbone's features, as its key
    # says, not the loaded weights': the same as the first run's, which loaded nothing.
    (built,) = (path for path in fresh_cache.glob("features-*") if path.is_dir())
    for name in ("train_features.npy", "validation_features.npy"):
        np.testing.assert_array_equal(np.load(built / name), np.load(cache_dir / built.name / name))


@pytest.mark.slow
def test_a_window_after_the_last_epoch_trains_nothing(first_run: Any) -> None:
    _, weights, _ = first_run
    result = fit(
        _config(), window=EpochWindow(after_epoch=4, initial_weights=weights), log=lambda _: None
    )
    # Nothing is left to train: an empty history, and still a normal end.
    assert result.history.records == ()
    assert result.stop_reason == "completed" and result.best_epoch is None


@pytest.mark.parametrize(
    ("window", "message"),
    [
        (dict(after_epoch=-1), "after_epoch=-1"),
        (dict(after_epoch=2, until_epoch=2, initial_weights=Path("w.weights.h5")), "until_epoch=2"),
        (dict(until_epoch=0), "until_epoch=0"),
        (dict(after_epoch=1), "initial_weights"),
    ],
)
def test_an_invalid_window_names_the_field_and_value(window: dict[str, Any], message: str) -> None:
    # Validated when built, Optuna style: the message shows the offending value.
    with pytest.raises(ValueError, match=message):
        EpochWindow(**window)


@pytest.mark.slow
def test_weights_that_cannot_be_loaded_are_an_input_error_naming_the_file(tmp_path: Path) -> None:
    config = _config()
    missing = tmp_path / "missing.weights.h5"
    with pytest.raises(ModelBuildError, match=f"no such file: {missing}"):
        fit(config, window=EpochWindow(after_epoch=3, initial_weights=missing), log=lambda _: None)
    # Saved from a model with 6 classes: the head does not fit this config's 4.
    other = tmp_path / "six_classes.weights.h5"
    build_model(config, 6).model.save_weights(other)
    with pytest.raises(ModelBuildError) as raised:
        fit(config, window=EpochWindow(after_epoch=3, initial_weights=other), log=lambda _: None)
    # One line, naming the file and saying what is wrong with it.
    message = str(raised.value)
    assert str(other) in message and "\n" not in message
    assert "cannot be loaded into this config's model" in message and "head_predictions" in message


class _FullDisk(keras.Model):
    """A model whose weights cannot be saved: the write fails halfway, as on a full disk."""

    def save_weights(self, filepath: Any, *args: Any, **kwargs: Any) -> None:
        Path(filepath).write_bytes(b"half")
        raise OSError(28, "No space left on device")


def test_a_failed_weights_save_leaves_nothing_and_does_not_fail_the_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "best.weights.h5"
    with pytest.raises(OSError):
        save_weights_atomically(_FullDisk(), target)
    # Neither the half-written temporary file nor a half file under the final name remains.
    assert list(tmp_path.iterdir()) == []
    request = WorkerRequest(1, "", str(tmp_path / "log"), save_weights=str(target))
    history = TrainingHistory().append({"epoch": 2, "val_accuracy": 0.5})
    result = FitResult(history, "completed", None, (), _FullDisk())
    _save_best_weights(request, result)
    # The worker logs one line and goes on to send its result.
    assert capsys.readouterr().out.strip() == (
        f"trial 1: could not save weights to {target}: [Errno 28] No space left on device"
    )
