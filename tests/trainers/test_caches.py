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
from trainers.cache_store import CacheKey, cached_entry
from trainers.config import TrainConfig
from trainers.data import load_datasets, load_examples
from trainers.feature_cache import feature_cache_key
from trainers.fit import fit
from trainers.image_cache import decoded_images


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
    assert any(line.endswith("on cached features") for line in logs["reused"])
    assert not any("cache" in line for line in logs["images"])
    kinds = sorted(path.name.split("-")[0] for path in cache.iterdir() if path.is_dir())
    assert kinds == ["features", "images"]


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
