"""The study caches: entries written once and atomically, keyed by exactly what they depend on,
and a head phase on cached features that computes what the head phase on images computes."""

from __future__ import annotations

import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import PRETRAINED_WEIGHTS, small_config_dict
from tests.trainers.cache_builder import DEMO_KEY, slow_build
from trainers.caching.activations import PhaseOnCut, phase_on_cut, why_not_on_cut
from trainers.caching.features import feature_cache_key
from trainers.caching.images import decoded_images
from trainers.caching.store import CacheKey, cached_entry
from trainers.config.schema import TrainConfig
from trainers.data.examples import from_arrays
from trainers.data.pipelines import Datasets, load_datasets, load_examples
from trainers.fit.loop import fit
from trainers.model.surgery import FineTuneModel, build_model, set_trainable_units


def test_concurrent_processes_build_an_entry_once(tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=slow_build, args=(str(tmp_path / "cache"), str(markers)))
        for _ in range(3)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert len(list(markers.iterdir())) == 1
    entries = [path.name for path in (tmp_path / "cache").iterdir() if path.is_dir()]
    assert entries == [DEMO_KEY.folder_name]


def test_an_abandoned_partial_entry_is_removed_and_rebuilt(tmp_path: Path) -> None:
    key = CacheKey("demo", {"size": 64})
    # What a builder killed mid-write leaves: its temporary folder, and no entry.
    abandoned = tmp_path / f"{key.folder_name}.tmp-99999"
    abandoned.mkdir(parents=True)
    (abandoned / "data.txt").write_text("half")
    folder, built = cached_entry(tmp_path, key, lambda f: (f / "data.txt").write_text("whole"))
    assert built and (folder / "data.txt").read_text() == "whole"
    assert not abandoned.exists()
    # A failing build leaves nothing behind either.
    with pytest.raises(RuntimeError):
        cached_entry(tmp_path, CacheKey("demo", {"size": 96}), _fail)
    assert sorted(path.name for path in tmp_path.iterdir() if path.is_dir()) == [key.folder_name]
    # An existing entry is reused, not rebuilt.
    assert cached_entry(tmp_path, key, _fail) == (folder, False)


def _fail(folder: Path) -> None:
    (folder / "data.txt").write_text("half")
    raise RuntimeError("build failed")


def _folder_config(source: Path, **model: object) -> TrainConfig:
    raw = small_config_dict()
    raw["data"] = {"source": str(source), "image_size": 40, "validation": 0.25}
    raw["model"] = {"backbone": "MobileNetV3Small", "weights": str(PRETRAINED_WEIGHTS), **model}
    return TrainConfig.from_dict(raw)


def test_feature_key_changes_with_an_image_the_weights_or_the_size(
    image_folder: Path, tmp_path: Path
) -> None:
    config = _folder_config(image_folder)

    def key(config: TrainConfig) -> str:
        return feature_cache_key(config, load_examples(config)).digest

    original = key(config)
    assert key(config) == original  # deterministic
    resized = config.model_copy(update={"data": config.data.model_copy(update={"image_size": 48})})
    other_weights = tmp_path / "other.weights.h5"
    shutil.copyfile(PRETRAINED_WEIGHTS, other_weights)
    assert key(_folder_config(image_folder, weights=str(other_weights))) == original  # same bytes
    with open(other_weights, "ab") as file:
        file.write(b"\0")
    reweighted = _folder_config(image_folder, weights=str(other_weights))
    image = sorted((image_folder / sorted(os.listdir(image_folder))[0]).iterdir())[0]
    keys = {"resized": key(resized), "reweighted": key(reweighted)}
    image.write_bytes(image.read_bytes() + b"\0")  # same pixels, a different file
    keys["image changed"] = key(config)
    assert original not in keys.values() and len(set(keys.values())) == 3, keys


def test_decoded_image_cache_holds_the_decoded_images(image_folder: Path, tmp_path: Path) -> None:
    config = _folder_config(image_folder)
    examples = load_examples(config)
    cached = decoded_images(examples, tmp_path / "cache")
    assert (cached.train_count, cached.validation_count) == (18, 6)
    (entry,) = [path for path in (tmp_path / "cache").iterdir() if path.is_dir()]
    stored = np.load(entry / "train_images.npy", mmap_mode="r")
    assert stored.dtype == np.uint8 and stored.shape == (18, 40, 40, 3)
    for (image, label), (stored_image, stored_label) in zip(
        examples.train.as_numpy_iterator(), cached.train.as_numpy_iterator(), strict=True
    ):
        assert label == stored_label
        # Rounded to uint8 after resizing: at most half a level off.
        assert np.abs(image - stored_image).max() <= 0.5
    # The second load reads the entry: a changed pipeline would not be seen.
    assert decoded_images(examples, tmp_path / "cache").train_count == 18
    assert [path for path in (tmp_path / "cache").iterdir() if path.is_dir()] == [entry]


@pytest.mark.slow
def test_head_phase_on_cached_features_matches_the_head_phase_on_images(tmp_path: Path) -> None:
    raw = small_config_dict()
    raw["phases"] = [raw["phases"][0], dict(raw["phases"][1], epochs=1)]
    config = TrainConfig.from_dict(raw)
    cache = tmp_path / "cache"
    logs: dict[str, list[str]] = {"images": [], "built": [], "reused": []}
    results = {
        "images": fit(config, log=logs["images"].append),
        "built": fit(config, log=logs["built"].append, cache_dir=cache),
        # The head phase alone, to see the entry reused.
        "reused": fit(
            config.model_copy(update={"phases": config.phases[:1]}),
            log=logs["reused"].append,
            cache_dir=cache,
        ),
    }
    head_epochs = config.phases[0].epochs
    on_images = results["images"].history.records[:head_epochs]
    for name in ("built", "reused"):
        on_features = results[name].history.records[:head_epochs]
        for image_epoch, feature_epoch in zip(on_images, on_features, strict=True):
            # Same batches in the same order: equal up to float rounding, within one image.
            assert feature_epoch["val_accuracy"] == pytest.approx(
                image_epoch["val_accuracy"], abs=1 / 48
            )
            assert feature_epoch["loss"] == pytest.approx(image_epoch["loss"], rel=1e-3)
    # The fine-tune phase then trains the full model, which carries the trained head.
    assert results["built"].history.records[-1]["val_accuracy"] > 0.6
    assert any("computed in" in line for line in logs["built"])
    assert any(
        "feature cache: head phase on frozen features, reused" in line for line in logs["reused"]
    )
    # Phase 2 unfreezes the top 2 units: it trains them on the activations below.
    assert any(
        line.startswith("cut-point cache: phase 2 trains its unfrozen blocks on activations")
        for line in logs["built"]
    )
    assert any(line.endswith("on cached features") for line in logs["reused"])
    assert not any("cache" in line for line in logs["images"])
    kinds = sorted(path.name.split("-")[0] for path in cache.iterdir() if path.is_dir())
    assert kinds == ["activations", "features", "images"]


@pytest.mark.slow
def test_random_augmentation_turns_the_feature_cache_off_and_says_why(tmp_path: Path) -> None:
    raw = small_config_dict()
    raw["data"]["augmentation"] = "basic"
    raw["data"]["synthetic"] = {"classes": 3, "images_per_class": 8}
    raw["phases"] = raw["phases"][:1]
    raw["phases"][0]["epochs"] = 1
    config = TrainConfig.from_dict(raw)
    lines: list[str] = []
    datasets = load_datasets(config, cache_dir=tmp_path)
    fit(config, datasets=datasets, log=lines.append, cache_dir=tmp_path)
    assert any(
        line.startswith("feature cache not used: random augmentation (basic)") for line in lines
    )
    assert [path.name.split("-")[0] for path in tmp_path.iterdir() if path.is_dir()] == ["images"]


def _cut_setup(
    tmp_path: Path, budget_bytes: int = 2**30
) -> tuple[TrainConfig, FineTuneModel, Datasets, PhaseOnCut | str]:
    raw = small_config_dict()
    raw["model"]["head_dropout"] = 0.0  # so that training-mode outputs can be compared
    raw["data"]["synthetic"] = {"classes": 3, "images_per_class": 8}
    config = TrainConfig.from_dict(raw)
    datasets = load_datasets(config, cache_dir=tmp_path)
    network = build_model(config, datasets.num_classes)
    set_trainable_units(network, 2, freeze_batchnorm=False)
    assert why_not_on_cut(config, 1, datasets, network) is None
    return (
        config,
        network,
        datasets,
        phase_on_cut(config, 1, network, datasets, tmp_path, budget_bytes),
    )


def test_the_model_on_cached_activations_computes_what_the_full_model_computes(
    tmp_path: Path,
) -> None:
    _, network, datasets, on_cut = _cut_setup(tmp_path)
    assert isinstance(on_cut, PhaseOnCut)
    # MobileNetV3Small's top 2 units are `top` and expanded_conv_10: the cut is below them.
    assert on_cut.cut_layer == "expanded_conv_9_add"
    images = np.stack([image for image, _ in datasets.examples.validation.as_numpy_iterator()])
    activations = np.load(on_cut.folder / "validation_activations.npy")
    assert len(activations) == len(images)
    for training in (False, True):
        # In training mode too: the frozen part below the cut runs in inference mode anyway,
        # and the unfrozen BatchNorm layers see the same batch either way.
        full = np.asarray(network.model(images, training=training))
        cut = np.asarray(on_cut.model(activations, training=training))
        np.testing.assert_allclose(cut, full, atol=1e-5)


def test_activations_over_the_budget_are_not_cached(tmp_path: Path) -> None:
    *_, on_cut = _cut_setup(tmp_path, budget_bytes=1000)
    assert isinstance(on_cut, str)
    assert on_cut.startswith("activations after expanded_conv_9_add take 0.00 GiB, over the")
    assert not [path for path in tmp_path.iterdir() if path.name.startswith("activations-")]


def test_a_phase_after_deeper_unfreezing_or_with_augmentation_is_not_cut(make_config) -> None:  # type: ignore[no-untyped-def]
    config = make_config(
        phases=[
            {"epochs": 1, "learning_rate": 1e-3},
            {"epochs": 1, "learning_rate": 1e-4, "unfreeze_blocks": 4},
            {"epochs": 1, "learning_rate": 1e-5, "unfreeze_blocks": 2},
        ]
    )
    datasets = load_datasets(config)
    network = build_model(config, datasets.num_classes)
    assert why_not_on_cut(config, 1, datasets, network) is None
    assert why_not_on_cut(config, 2, datasets, network) == (
        "an earlier phase trained blocks below this phase's cut"
    )
    everything = config.phases[1].model_copy(update={"unfreeze_blocks": len(network.units)})
    whole = config.model_copy(update={"phases": (config.phases[0], everything)})
    assert why_not_on_cut(whole, 1, datasets, network) == (
        "nothing below the unfrozen blocks stays frozen"
    )
    augmented = config.model_copy(
        update={"data": config.data.model_copy(update={"augmentation": "basic"})}
    )
    assert why_not_on_cut(augmented, 1, datasets, network) == (
        "random augmentation (basic) changes every image each epoch"
    )


def test_arrays_too_large_for_memory_are_streamed_in_order(tmp_path: Path) -> None:
    path = tmp_path / "values.npy"
    values = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(150, 4, 4, 3))
    values[:] = np.arange(150, dtype=np.uint8)[:, None, None, None]
    values.flush()
    labels = np.arange(150, dtype=np.int64) % 7
    mapped = np.load(path, mmap_mode="r")
    pipeline = from_arrays(mapped, labels, in_memory_bytes=100)
    assert int(pipeline.cardinality()) == 150  # known, though streamed from a generator
    streamed = list(pipeline.as_numpy_iterator())
    assert len(streamed) == 150
    assert [int(value[0, 0, 0]) for value, _ in streamed] == list(range(150))
    assert [int(label) for _, label in streamed] == labels.tolist()
