"""Study files (`search.study.files`, `space_changes`, `overrides`), the space listing,
`--backbone/--image-size/--weights`, resume checks on the model a study trains, and enqueued
configs run by the real coordinator.

The shipped examples in `studies/` are loaded as they are; bad files are written to a temporary
folder, each with exactly one problem, and must be refused with one `ConfigError` (or one
`error:` line from the CLI) that names the file and the key, before anything is written; a file
with several is refused with all of them, one line each, and a mistake is not reported twice. The
coordinator tests use the TensorFlow-free scripted worker; one slow test runs the image-folder
example for real, from a copy of the layout it expects.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FixedTrial, TrialState

from search.runner.coordinator import run_study
from search.studies import main as studies_main
from search.study.files import LoadedStudy, StudyFileModel, load_study_file, resolve_study
from search.study.overrides import study_config, with_overrides
from search.study.registry import (
    DEMO_BATCHNORM_UNFROZEN,
    DEMO_RECIPE,
    EFFNET_B4_RECIPE,
    STUDIES,
    StudySpec,
    get_study_spec,
)
from search.study.setup import StudyMismatchError, open_study
from search.trial.retry import enqueue_retry
from search.vocabulary import Reason, StudyAttr, TrialAttr
from spaces import demo
from spaces.finetune import FineTuneSpace
from spaces.generic import default_ladder
from tests.conftest import PRETRAINED_WEIGHTS, REPO
from tests.search.scripted_worker import ScriptedWorker
from tests.search.test_cli import _one_error_line, _run
from tests.search.tiny_study import settings
from trainers.config.schema import STUDY_FILE_KEYS, TrainConfig, load_config
from trainers.errors import ConfigError
from trainers.model.backbones import get_backbone

STUDIES_FOLDER = REPO / "studies"
HAND_RECIPE = "recipes/mobilenet_hand_recipe.yaml"


def _space(spec: StudySpec) -> FineTuneSpace:
    assert isinstance(spec.space, FineTuneSpace)
    return spec.space


def _example(name: str) -> LoadedStudy:
    return load_study_file(STUDIES_FOLDER / f"{name}.yaml")


def _demo_config(**params: Any) -> TrainConfig:
    """The demo recipe (a point of the demo space) with some parameters changed."""
    return demo.SPACE.sample(FixedTrial({**DEMO_RECIPE.params, **params}), "synthetic:target")


# -- 1. the shipped examples -------------------------------------------------------------------


def test_the_b4_example_is_the_seed_guides_study_and_its_recipe_is_a_point() -> None:
    loaded = _example("stanford_dogs_b4")
    spec, space = loaded.spec, _space(loaded.spec)
    assert spec.name == "stanford_dogs_b4"
    assert (space.backbone, space.image_size, space.weights) == ("EfficientNetB4", 380, "imagenet")
    assert space.unfreeze_ladder == (0, 1, 2, 3, 4, 5, 11, 17, 23)
    assert dict(space.fixed) == {} and dict(space.roles) == {}
    assert (loaded.budget_epochs, loaded.budget_hours) == (None, 48)
    assert loaded.path == STUDIES_FOLDER / "stanford_dogs_b4.yaml"
    assert (spec.n_trials, spec.pruner, space.validation) == (60, "asha", 0.2)
    assert spec.default_data == str(REPO / "data" / "stanford_dogs" / "train")
    (recipe,) = spec.enqueued
    assert recipe.label == "recipes/seed_guide_b4.yaml" and recipe.params == {}
    assert recipe.config is not None and recipe.config.provenance is None
    # On the study's data, it is the registered effnet_b4 study's recipe, parameter for parameter.
    on_study_data = study_config(recipe.config, space, spec.default_data)
    assert space.params_of(on_study_data) == EFFNET_B4_RECIPE.params
    assert space.params_of(recipe.config) == EFFNET_B4_RECIPE.params


def test_the_b0_example_fixes_augmentation_so_the_guides_recipe_runs_as_written() -> None:
    loaded = _example("stanford_dogs_b0")
    spec, space = loaded.spec, _space(loaded.spec)
    assert spec.name == "stanford_dogs_b0"
    assert (space.backbone, space.image_size, space.weights) == ("EfficientNetB0", 224, "imagenet")
    assert space.unfreeze_ladder == _space(get_study_spec("effnet_b0")).unfreeze_ladder
    assert dict(space.fixed) == {"augmentation": "basic"}
    assert (space.batch_sizes, space.ft_epochs) == ((16, 32, 64), (5, 10))
    assert (loaded.budget_epochs, loaded.budget_hours) == (400, None)
    assert spec.n_trials == 40
    (recipe,) = spec.enqueued
    assert recipe.label == "recipes/seed_guide_b0.yaml" and recipe.config is not None
    assert recipe.config.data.augmentation == "none"
    assert space.params_of(study_config(recipe.config, space, spec.default_data)) is None


def test_the_image_folder_example_has_local_weights_ladder_fixed_values_and_roles() -> None:
    loaded = _example("image_folder_local_weights")
    spec, space = loaded.spec, _space(loaded.spec)
    assert spec.name == "image_folder_local_weights"
    assert (space.backbone, space.image_size) == ("MobileNetV3Small", 64)
    assert space.weights is not None and Path(space.weights).is_absolute()
    assert Path(space.weights).is_file() and Path(space.weights).samefile(PRETRAINED_WEIGHTS)
    assert spec.default_data == str(REPO / "data" / "my_images")
    assert space.validation == 0.25 and spec.n_trials == 6
    assert space.unfreeze_ladder == (0, 1, 2, 4, 6)
    assert (space.head_lr, space.ft_lr_adamw) == ((1e-3, 3e-2), (1e-5, 3e-3))
    assert (space.head_epochs, space.ft_epochs, space.batch_sizes) == ((2, 3), (2, 3), (16, 32))
    assert dict(space.fixed) == {"augmentation": "none", "label_smoothing": 0.0, "use_l2sp": False}
    roles = {p.name: p.role.value for p in space.parameters()}
    assert roles["ft_optimizer"] == "nuisance"  # scientific by default; the file says otherwise
    assert roles["unfreeze_level"] == roles["freeze_bn"] == "scientific"
    assert roles["augmentation"] == roles["label_smoothing"] == roles["use_l2sp"] == "fixed"
    # The pruner waits for the longest head phase, the enqueued hand recipe's 4 epochs (the
    # space's are 2 or 3), not effnet_b4's 8.
    assert spec.pruner_warmup_epochs == 4
    assert (loaded.budget_epochs, loaded.budget_hours) == (None, None)
    (recipe,) = spec.enqueued
    assert recipe.label == HAND_RECIPE and recipe.config is not None
    # Its weights were named relative to the recipe file, and resolved there.
    assert recipe.config.model.weights is not None
    assert Path(recipe.config.model.weights).samefile(PRETRAINED_WEIGHTS)
    # 4 head epochs; the space has {2, 3}: not a point, it runs exactly as written.
    assert recipe.config.phases[0].epochs == 4
    assert space.params_of(study_config(recipe.config, space, spec.default_data)) is None


def test_resolve_study_takes_a_name_or_a_file() -> None:
    assert resolve_study("effnet_b4") == LoadedStudy(STUDIES["effnet_b4"])
    by_path = resolve_study(str(STUDIES_FOLDER / "stanford_dogs_b0.yaml"))
    assert by_path.spec.name == "stanford_dogs_b0" and by_path.budget_epochs == 400
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such study file"):
        resolve_study("nope.yaml")


# -- 2. bad study files ------------------------------------------------------------------------

BASE = "name: bad\nspace: demo\n"
BAD_FILES = {
    "unknown top-level key": (BASE + "colour: red\n", "colour: unknown key"),
    "low above high": (
        BASE + "ranges:\n  head_lr: [0.1, 0.01]\n",
        "ranges.head_lr: low 0.1 is above high 0.01",
    ),
    "log scale with 0": (
        BASE + "ranges:\n  ft_lr_adamw: [0, 0.001]\n",
        "ranges.ft_lr_adamw: the range is on a log scale, so low must be above 0; got 0",
    ),
    "missing weights": (
        BASE + "weights: mine.weights.h5\n",
        "weights: {folder}/mine.weights.h5 does not exist",
    ),
    "missing enqueue": (
        BASE + "enqueue: [best.yaml]\n",
        "enqueue[0]: {folder}/best.yaml does not exist",
    ),
    "unknown range": (
        BASE + "ranges:\n  momentum: [0.8, 0.9]\n",
        "ranges.momentum: unknown parameter; parameters: augmentation, batch_size,",
    ),
    "unknown fixed": (BASE + "fixed:\n  momentum: 0.9\n", "fixed.momentum: unknown parameter"),
    "ladder as a range": (
        BASE + "ranges:\n  unfreeze_level: [0, 3]\n",
        "ranges.unfreeze_level: unknown parameter; the ladder is `unfreeze_ladder`",
    ),
    "finetune without backbone": (
        "name: bad\nspace: finetune\ndata: synthetic:target\n",
        "backbone: required with space: finetune",
    ),
    "unknown backbone": (
        BASE + "backbone: ResNet9000\n",
        "backbone: unknown backbone 'ResNet9000'; valid: EfficientNetB0,",
    ),
    "role of a fixed parameter": (
        BASE + "fixed:\n  head_lr: 0.001\nroles:\n  head_lr: scientific\n",
        "roles.head_lr: not a searched parameter of this space; searched: batch_size,",
    ),
    "role of an unknown parameter": (
        BASE + "roles:\n  momentum: nuisance\n",
        "roles.momentum: not a searched parameter of this space",
    ),
    "bad choice": (
        BASE + "ranges:\n  augmentation: [sepia]\n",
        "ranges.augmentation: got 'sepia'; choices must be none, basic, randaugment",
    ),
    "decreasing ladder": (
        BASE + "unfreeze_ladder: [0, 3, 2]\n",
        "unfreeze_ladder: steps must increase; got [0, 3, 2]",
    ),
    "ladder beyond the backbone": (
        BASE + "unfreeze_ladder: [0, 1, 99]\n",
        "unfreeze_ladder: steps are whole units unfrozen, 0..13 on MobileNetV3Small",
    ),
    "fixed step off the ladder": (
        BASE + "fixed:\n  unfreeze_level: 9\n",
        "fixed.unfreeze_level: a step of the unfreeze ladder, 0..6; got 9",
    ),
    "stochastic depth on MobileNet": (
        BASE + "ranges:\n  drop_connect_rate: [0, 0.2]\n",
        "ranges.drop_connect_rate: MobileNetV3Small has no stochastic depth to set",
    ),
    "choice listed twice": (
        BASE + "ranges:\n  batch_size: [16, 16]\n",
        "ranges.batch_size: a choice is listed twice",
    ),
    "unknown base space": ("name: bad\nspace: effnet_b9\n", "space: got 'effnet_b9'"),
    "bad role": (BASE + "roles:\n  head_lr: important\n", "roles.head_lr: got 'important'"),
    "not a mapping": ("- demo\n", "expected a mapping with keys name, space"),
}


@pytest.mark.parametrize("problem", list(BAD_FILES))
def test_a_bad_study_file_is_one_config_error_naming_the_file_and_the_key(
    problem: str, tmp_path: Path
) -> None:
    text, expected = BAD_FILES[problem]
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_study_file(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: "), message
    assert expected.format(folder=tmp_path.resolve()) in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (BASE + "ranges:\n  head_lr: [0.1, 0.01]\n", "ranges.head_lr"),
        (BASE + "colour: red\n", "colour"),
    ],
)
def test_a_bad_study_file_is_one_error_line_from_the_cli_and_writes_nothing(
    text: str, key: str, tmp_path: Path
) -> None:
    (tmp_path / "bad.yaml").write_text(text, encoding="utf-8")
    line = _one_error_line(_run("search.run", ["--study", "bad.yaml"], tmp_path, timeout=120))
    assert line.startswith("error: bad.yaml: ") and f"{key}: " in line
    # No optuna.db, mlflow.db or runs/.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


#: Files with one mistake that a later check could echo: each is still one line.
ONE_MISTAKE_NOT_TWO = {
    "a fixed step of a refused ladder": (
        # Step 8 of the file's ladder; the base space's has 7.
        BASE + "unfreeze_ladder: [0, 1, 2, 3, 4, 5, 6, 8, 7]\nfixed:\n  unfreeze_level: 8\n",
        "unfreeze_ladder: steps must increase",
    ),
    "a ladder on an unknown backbone": (
        BASE + "backbone: ResNet9000\nunfreeze_ladder: [0, 1, 99]\n",
        "backbone: unknown backbone 'ResNet9000'",
    ),
    "a backbone the schema refuses is not also missing": (
        "name: bad\nspace: finetune\ndata: synthetic:target\nbackbone: [ResNet50]\n",
        "invalid study file: backbone: got ['ResNet50']",
    ),
    "L2-SP fixed on with its refused range": (
        BASE + "ranges:\n  l2sp_alpha: [0, 0.1]\nfixed:\n  use_l2sp: true\n",
        "ranges.l2sp_alpha: the range is on a log scale",
    ),
    "the role of a parameter whose range was refused": (
        # The demo space fixes augmentation; the file's range would have searched it.
        BASE + "ranges:\n  augmentation: [basic, sepia]\nroles:\n  augmentation: nuisance\n",
        "ranges.augmentation: got 'sepia'",
    ),
}


@pytest.mark.parametrize("problem", list(ONE_MISTAKE_NOT_TWO))
def test_a_mistake_is_not_reported_again_by_the_checks_that_depend_on_it(
    problem: str, tmp_path: Path
) -> None:
    text, expected = ONE_MISTAKE_NOT_TWO[problem]
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_study_file(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: {expected}") and "\n" not in message, message


def test_every_mistake_of_a_study_file_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        BASE
        + "colour: red\nbackbone: ResNet9000\nenqueue: [best.yaml, also.yaml]\n"
        + "ranges:\n  head_lr: [0.1, 0.01]\n  momentum: [0.8, 0.9]\n"
        + "fixed:\n  augmentation: sepia\nroles:\n  head_dropout: important\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as raised:
        load_study_file(path)
    first, *lines = str(raised.value).split("\n")
    assert first == f"{path}: invalid study file (8 problems):"
    folder = tmp_path.resolve()
    # The schema's refusals first (as pydantic lists them), then the rest of the file, checked
    # without what the schema refused, in the order of the checks.
    assert [line.split(";")[0] for line in lines] == [
        "  roles.head_dropout: got 'important'",
        "  colour: unknown key",
        "  backbone: unknown backbone 'ResNet9000'",
        "  ranges.head_lr: low 0.1 is above high 0.01",
        "  ranges.momentum: unknown parameter",
        "  fixed.augmentation: got 'sepia'",
        f"  enqueue[0]: {folder}/best.yaml does not exist",
        f"  enqueue[1]: {folder}/also.yaml does not exist",
    ]


def test_a_study_file_with_three_mistakes_is_one_error_from_the_cli_and_writes_nothing(
    tmp_path: Path,
) -> None:
    (tmp_path / "bad.yaml").write_text(
        BASE + "colour: red\nranges:\n  head_lr: [0.1, 0.01]\nroles:\n  momentum: nuisance\n",
        encoding="utf-8",
    )
    done = _run("search.run", ["--study", "bad.yaml"], tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    first, *lines = done.stderr.strip().split("\n")
    assert first == "error: bad.yaml: invalid study file (3 problems):"
    assert [line.split(":")[0] for line in lines] == [
        "  colour",
        "  ranges.head_lr",
        "  roles.momentum",
    ]
    assert "low 0.1 is above high 0.01" in lines[1]
    assert "not a searched parameter of this space" in lines[2]
    # No optuna.db, mlflow.db or runs/.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_the_keys_that_tell_a_study_file_from_a_config_are_a_study_files_only() -> None:
    # trainers names them without importing search (`load_config` of a study file).
    assert STUDY_FILE_KEYS.issubset(StudyFileModel.model_fields)
    assert STUDY_FILE_KEYS.isdisjoint(TrainConfig.model_fields)
    assert "space" in STUDY_FILE_KEYS  # which every study file has


# -- 3. python -m search.studies ---------------------------------------------------------------


def _table(output: str) -> list[list[str]]:
    """The printed lines as cells: columns are separated by two spaces or more."""
    return [re.split(r"\s{2,}", line.strip()) for line in output.splitlines()]


def test_the_listing_has_every_registered_study_and_the_example_files(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    assert studies_main([]) == 0
    output = capsys.readouterr().out
    names = [line.split()[0] for line in output.split("\n\n")[0].splitlines()]
    assert names == sorted(STUDIES)
    assert "study files in studies/ (pass the path as --study):" in output
    for example in ("image_folder_local_weights", "stanford_dogs_b0", "stanford_dogs_b4"):
        assert f"  studies/{example}.yaml" in output.splitlines()


def test_a_study_listing_prints_every_parameter_and_the_ladder(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert studies_main(["effnet_b4"]) == 0
    output = capsys.readouterr().out
    rows = _table(output)
    space = _space(STUDIES["effnet_b4"])
    for parameter in space.parameters():
        assert [parameter.name, parameter.describe(), parameter.condition, parameter.role] in rows
    assert ["head_lr", "0.0001 .. 0.03 log", "always", "nuisance"] in rows
    assert ["ft_lr_adamw", "1e-06 .. 0.001 log", "ft_optimizer == adamw", "nuisance"] in rows
    assert ["ft_lr_sgd", "0.0001 .. 0.03 log", "ft_optimizer == sgd", "nuisance"] in rows
    assert ["unfreeze_level", "0 .. 8 linear", "always", "scientific"] in rows
    assert ["freeze_bn", "{true, false}", "unfreeze_level >= 1", "scientific"] in rows
    assert ["l2sp_alpha", "0.0001 .. 0.1 log", "use_l2sp", "scientific"] in rows
    assert ["augmentation", "{none, basic, randaugment}", "always", "nuisance"] in rows
    assert ["8", "23 units", "top .. block4a"] in rows
    assert ["0", "0 units", "none (linear probe: head only)"] in rows
    assert ["1", "1 unit", "top"] in rows
    assert "tried first  seed_guide_recipe" in output


def test_a_study_file_and_a_backbone_override_are_listed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert studies_main([str(STUDIES_FOLDER / "image_folder_local_weights.yaml")]) == 0
    rows = _table(capsys.readouterr().out)
    assert rows[0][0].startswith("study image_folder_local_weights: ")
    assert ["augmentation", "= none", "always", "fixed"] in rows
    assert ["use_l2sp", "= false", "unfreeze_level >= 1", "fixed"] in rows
    assert ["ft_optimizer", "{adamw, sgd}", "unfreeze_level >= 1", "nuisance"] in rows
    assert ["tried first", HAND_RECIPE] in rows
    assert ["4", "6 units", "top .. expanded_conv_6"] in rows

    assert studies_main(["demo", "--backbone", "ResNet50"]) == 0
    output = capsys.readouterr().out
    rows = _table(output)
    assert "  backbone     ResNet50 @224px, weights imagenet" in output.splitlines()
    assert "unfreeze ladder on ResNet50" in output
    ladder = [row for row in rows if len(row) == 3 and row[0].isdigit()]
    assert ladder == [
        ["0", "0 units", "none (linear probe: head only)"],
        ["1", "1 unit", "conv5"],
        ["2", "2 units", "conv5, conv4"],
        ["3", "3 units", "conv5 .. conv3"],
        ["4", "4 units", "conv5 .. conv2"],
    ]
    # The demo's BatchNorm-unfrozen recipe (level 6) is beyond ResNet50's ladder.
    assert ["tried first", "known_good"] in rows


def test_a_bad_listing_argument_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert studies_main(["nope.yaml"]) == 2
    assert capsys.readouterr().err == "error: nope.yaml: no such study file\n"
    assert studies_main(["effnet_b9"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown study 'effnet_b9'; valid studies:")
    assert studies_main(["demo", "--backbone", "ResNet9000"]) == 2
    assert capsys.readouterr().err.startswith("error: --backbone: unknown backbone 'ResNet9000'")


# -- 4. --backbone, --image-size, --weights ----------------------------------------------------


def test_another_backbone_gets_its_ladder_size_and_weights_and_drops_recipes_off_it() -> None:
    spec = STUDIES["demo"]
    assert [known.label for known in spec.enqueued] == [
        DEMO_RECIPE.label,
        DEMO_BATCHNORM_UNFROZEN.label,
    ]
    moved = with_overrides(spec, backbone="ResNet50")
    space = _space(moved)
    assert space.backbone == "ResNet50"
    assert space.unfreeze_ladder == default_ladder(get_backbone("ResNet50")) == (0, 1, 2, 3, 4)
    assert (space.weights, space.image_size) == ("imagenet", 224)
    # unfreeze_level 6 is beyond ResNet50's ladder; the known-good recipe (level 4) stays.
    assert moved.enqueued == (DEMO_RECIPE,)
    # The ranges are the demo's.
    assert (space.head_lr, space.ft_lr_adamw, space.batch_sizes) == (
        demo.SPACE.head_lr,
        demo.SPACE.ft_lr_adamw,
        demo.SPACE.batch_sizes,
    )
    assert with_overrides(spec) is spec


def test_another_image_size_changes_only_the_size() -> None:
    spec = STUDIES["demo"]
    moved = with_overrides(spec, image_size=96)
    assert moved == replace(spec, space=replace(demo.SPACE, image_size=96))
    with pytest.raises(ConfigError, match=r"^--image-size: got 16; must be 32\.\.2048 pixels$"):
        with_overrides(spec, image_size=16)


def test_weights_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "mine.weights.h5").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    moved = with_overrides(STUDIES["demo"], weights="w/mine.weights.h5")
    assert _space(moved).weights == str((tmp_path / "w" / "mine.weights.h5").resolve())
    assert _space(moved).backbone == "MobileNetV3Small" and _space(moved).image_size == 64
    assert _space(with_overrides(STUDIES["demo"], weights="imagenet")).weights == "imagenet"
    with pytest.raises(ConfigError) as missing:
        with_overrides(STUDIES["demo"], weights="other.weights.h5")
    assert str(missing.value).startswith(
        f"--weights: {(tmp_path / 'other.weights.h5').resolve()} does not exist"
    )


def test_an_unknown_backbone_override_names_the_option() -> None:
    with pytest.raises(ConfigError, match=r"^--backbone: unknown backbone 'ResNet9000'; valid: "):
        with_overrides(STUDIES["demo"], backbone="ResNet9000")


def test_a_known_config_that_is_no_longer_a_point_is_dropped_by_an_override() -> None:
    spec = _example("stanford_dogs_b4").spec
    moved = with_overrides(spec, backbone="ResNet50")
    # with_overrides' docstring: "Known configs that are no longer points of the space are
    # dropped."
    assert moved.enqueued == ()


# -- 5. resume checks --------------------------------------------------------------------------


def _open(spec: StudySpec, folder: Path) -> optuna.Study:
    study, storage = open_study(spec, settings(folder, 1), identity="test:1")
    storage.remove_session()
    return study


def test_a_study_records_its_model_and_roles_and_refuses_another_on_resume(
    tmp_path: Path,
) -> None:
    spec = STUDIES["demo"]
    study = _open(spec, tmp_path)
    attrs = study.user_attrs
    assert attrs[StudyAttr.BACKBONE] == "MobileNetV3Small"
    assert attrs[StudyAttr.WEIGHTS] == demo.PRETRAINED_WEIGHTS
    assert attrs[StudyAttr.IMAGE_SIZE] == 64
    assert attrs[StudyAttr.DATA_SOURCE] == "synthetic:target" and attrs[StudyAttr.PRUNER] == "asha"
    roles = attrs[StudyAttr.PARAM_ROLES]
    assert roles == {p.name: p.role.value for p in demo.SPACE.parameters()}
    assert roles["unfreeze_level"] == roles["freeze_bn"] == roles["ft_optimizer"] == "scientific"
    assert roles["head_lr"] == "nuisance" and roles["augmentation"] == "fixed"

    with pytest.raises(StudyMismatchError) as size:
        _open(with_overrides(spec, image_size=96), tmp_path)
    assert str(size.value) == (
        "study 'demo' was started with image size 64, not 96; pass --image-size 64 to continue "
        "it, or use another --storage for a new study"
    )
    with pytest.raises(StudyMismatchError) as backbone:
        _open(with_overrides(spec, backbone="ResNet50", image_size=64), tmp_path)
    assert str(backbone.value).startswith(
        "study 'demo' was started with backbone 'MobileNetV3Small', not 'ResNet50'; pass "
        "--backbone MobileNetV3Small to continue it"
    )
    with pytest.raises(StudyMismatchError) as weights:
        _open(with_overrides(spec, weights="imagenet"), tmp_path)
    assert f"pass --weights {demo.PRETRAINED_WEIGHTS} to continue it" in str(weights.value)

    # Refused resumes changed nothing; the same spec continues, queueing nothing twice.
    again = _open(spec, tmp_path)
    assert again.user_attrs == attrs
    assert [t.user_attrs[TrialAttr.ENQUEUED] for t in again.get_trials()] == [
        DEMO_RECIPE.label,
        DEMO_BATCHNORM_UNFROZEN.label,
    ]


# -- 6. enqueued configs, end to end with the scripted worker ----------------------------------


def _enqueue_study(folder: Path) -> tuple[StudySpec, TrainConfig, TrainConfig]:
    """A demo-space study file enqueueing a point of the space and a hand recipe that is not."""
    point = _demo_config()
    hand_raw = _demo_config().to_dict()
    hand_raw["phases"][0]["epochs"] = 4  # the demo searches 2 or 3 head epochs
    # Written for a folder of images; the study runs it on its own (generated) data.
    hand_raw["data"] |= {"source": "/data/elsewhere", "synthetic": None, "validation": 0.3}
    hand = TrainConfig.from_dict(hand_raw)
    (folder / "point.yaml").write_text(point.to_yaml(), encoding="utf-8")
    (folder / "known").mkdir()
    (folder / "known" / "hand.yaml").write_text(hand.to_yaml(), encoding="utf-8")
    (folder / "study.yaml").write_text(
        "name: enqueued\nspace: demo\ndata: synthetic:target\nn_trials: 3\n"
        "enqueue:\n  - point.yaml\n  - known/hand.yaml\n",
        encoding="utf-8",
    )
    return load_study_file(folder / "study.yaml").spec, point, hand


def test_enqueued_configs_run_as_params_when_points_and_exactly_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, point, hand = _enqueue_study(tmp_path)
    space, data = _space(spec), "synthetic:target"
    assert [known.label for known in spec.enqueued] == ["point.yaml", "known/hand.yaml"]
    monkeypatch.chdir(tmp_path)  # MLflow puts a SQLite store's artifacts under ./mlruns
    run_study(
        spec, settings(tmp_path, 3, prewarm=False), log=lambda _: None, worker=ScriptedWorker()
    )
    study = optuna.load_study(study_name="enqueued", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3

    first, second, third = trials
    expected_params = space.params_of(study_config(point, space, data))
    assert expected_params == DEMO_RECIPE.params
    assert first.params == expected_params
    assert first.user_attrs[TrialAttr.ENQUEUED] == "point.yaml"
    assert TrialAttr.ENQUEUED_CONFIG not in first.user_attrs
    recorded = TrainConfig.from_yaml(first.user_attrs[TrialAttr.CONFIG_YAML])
    assert recorded == space.sample(FixedTrial(first.params), data) == point

    assert second.params == {}
    assert second.user_attrs[TrialAttr.ENQUEUED] == "known/hand.yaml"
    recorded = TrainConfig.from_yaml(second.user_attrs[TrialAttr.CONFIG_YAML])
    assert recorded == study_config(hand, space, data)
    assert recorded == TrainConfig.from_yaml(second.user_attrs[TrialAttr.ENQUEUED_CONFIG])
    assert recorded.phases[0].epochs == 4 and recorded.data.source == data
    assert recorded.data.synthetic == point.data.synthetic and recorded.data.validation == 0.2

    assert TrialAttr.ENQUEUED not in third.user_attrs
    assert TrialAttr.ENQUEUED_CONFIG not in third.user_attrs
    assert "unfreeze_level" in third.params and "head_lr" in third.params

    # Opening the finished study again queues neither config a second time.
    reopened = _open(spec, tmp_path)
    assert len(reopened.get_trials()) == 3


def test_opening_a_study_twice_queues_each_config_once(tmp_path: Path) -> None:
    spec, _, hand = _enqueue_study(tmp_path)
    _open(spec, tmp_path)
    study = _open(spec, tmp_path)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs[TrialAttr.ENQUEUED] for t in waiting] == ["point.yaml", "known/hand.yaml"]
    with_params, without = waiting
    assert with_params.system_attrs["fixed_params"] == DEMO_RECIPE.params
    assert without.system_attrs["fixed_params"] == {}
    queued = TrainConfig.from_yaml(without.user_attrs[TrialAttr.ENQUEUED_CONFIG])
    assert queued == study_config(hand, _space(spec), "synthetic:target")


def test_a_retried_trial_keeps_its_enqueued_config() -> None:
    study = optuna.create_study()
    hand_yaml = _demo_config(head_epochs=3).to_yaml()
    attrs: dict[str, Any] = {
        TrialAttr.ENQUEUED: "known/hand.yaml",
        TrialAttr.ENQUEUED_CONFIG: hand_yaml,
        TrialAttr.CONFIG_YAML: hand_yaml,
        TrialAttr.RETRY_COUNT: 0,
    }
    enqueue_retry(study, number=1, params={}, user_attrs=attrs, reason=Reason.WORKER_DIED)
    retried = study.ask()
    assert retried.params == {}
    assert retried.user_attrs == {
        TrialAttr.RETRY_OF: 1,
        TrialAttr.RETRY_COUNT: 1,
        TrialAttr.RETRY_REASON: Reason.WORKER_DIED,
        TrialAttr.ENQUEUED: "known/hand.yaml",
        TrialAttr.ENQUEUED_CONFIG: hand_yaml,
    }
    # A sampled trial's retry carries neither.
    enqueue_retry(study, number=2, params={"head_lr": 0.01}, user_attrs={}, reason=Reason.HOST_OOM)
    plain = study.ask()
    assert TrialAttr.ENQUEUED_CONFIG not in plain.user_attrs
    assert TrialAttr.ENQUEUED not in plain.user_attrs


# -- 7. params_of, the inverse of sample -------------------------------------------------------


@pytest.mark.parametrize(
    ("study", "label"),
    [(spec.name, known.label) for spec in STUDIES.values() for known in spec.enqueued],
)
def test_params_of_gives_back_the_params_of_every_registered_recipe(study: str, label: str) -> None:
    spec = STUDIES[study]
    (known,) = [k for k in spec.enqueued if k.label == label]
    space = _space(spec)
    config = space.sample(FixedTrial(dict(known.params)), spec.default_data)
    assert space.params_of(config) == known.params


def test_params_of_is_none_for_configs_off_the_space() -> None:
    space = demo.SPACE
    config = _demo_config()
    assert space.params_of(config) == DEMO_RECIPE.params
    raw = config.to_dict()
    raw["phases"].append({**raw["phases"][1], "unfreeze_blocks": 6})
    assert space.params_of(TrainConfig.from_dict(raw)) is None  # an extra phase
    assert space.params_of(config.model_copy(update={"batch_size": 48})) is None
    raw = config.to_dict()
    raw["phases"][0]["epochs"] = 4  # the demo searches 2 or 3 head epochs
    assert space.params_of(TrainConfig.from_dict(raw)) is None
    raw = config.to_dict()
    raw["phases"][1]["weight_decay"] = 1e-4  # the space uses the head's decay in both phases
    assert space.params_of(TrainConfig.from_dict(raw)) is None
    raw = config.to_dict()
    raw["phases"][1]["unfreeze_blocks"] = 9  # not a step of the ladder
    assert space.params_of(TrainConfig.from_dict(raw)) is None
    # Data source aside: a point on other data is the same point.
    elsewhere = space.sample(FixedTrial(dict(DEMO_RECIPE.params)), "/data/dogs")
    assert space.params_of(elsewhere) == DEMO_RECIPE.params


def test_params_of_inverts_sampled_fine_tuning_trials() -> None:
    for name in ("effnet_b4", "demo"):
        spec = STUDIES[name]
        space = _space(spec)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
        for _ in range(30):
            trial = study.ask()
            config = space.sample(trial, spec.default_data)
            assert space.params_of(config) == trial.params, name
            study.tell(trial, 0.5)


def test_params_of_inverts_a_linear_probe_of_an_l2sp_space() -> None:
    params = dict(EFFNET_B4_RECIPE.params)
    for fine_tune_only in ("ft_optimizer", "ft_lr_adamw", "ft_epochs", "warmup_frac", "freeze_bn"):
        del params[fine_tune_only]
    del params["use_l2sp"]
    params["unfreeze_level"] = 0
    space = _space(STUDIES["effnet_b4"])
    config = space.sample(FixedTrial(params), "data/dogs")
    assert space.params_of(config) == params


def test_params_of_on_a_space_with_a_single_choice() -> None:
    space = replace(demo.SPACE, batch_sizes=(16,))
    assert space.params_of(_demo_config()) == {
        k: v for k, v in DEMO_RECIPE.params.items() if k != "batch_size"
    }


def test_whole_number_choices_of_a_float_parameter_still_match(tmp_path: Path) -> None:
    (tmp_path / "study.yaml").write_text(
        BASE + "ranges:\n  warmup_frac: [0, 0.2]\n", encoding="utf-8"
    )
    space = _space(load_study_file(tmp_path / "study.yaml").spec)
    assert space.params_of(_demo_config()) == DEMO_RECIPE.params


def test_the_generic_ladder_of_b4_is_the_effnet_b4_ladder() -> None:
    b4_ladder = _space(STUDIES["effnet_b4"]).unfreeze_ladder
    assert default_ladder(get_backbone("EfficientNetB4")) == b4_ladder


# -- 8. the image-folder example, for real -----------------------------------------------------


@pytest.mark.slow
def test_the_image_folder_example_runs_its_hand_recipe_and_exports_it(tmp_path: Path) -> None:
    from trainers.data.synthetic import write_image_folder

    # The layout the example expects: studies/, studies/recipes/, spaces/weights/, data/.
    (tmp_path / "studies" / "recipes").mkdir(parents=True)
    study_file = tmp_path / "studies" / "image_folder_local_weights.yaml"
    shutil.copy(STUDIES_FOLDER / "image_folder_local_weights.yaml", study_file)
    shutil.copy(STUDIES_FOLDER / HAND_RECIPE, tmp_path / "studies" / HAND_RECIPE)
    (tmp_path / "spaces" / "weights").mkdir(parents=True)
    (tmp_path / "spaces" / "weights" / PRETRAINED_WEIGHTS.name).symlink_to(PRETRAINED_WEIGHTS)
    images = write_image_folder(
        tmp_path / "data" / "my_images", "target", num_classes=3, images_per_class=8, image_size=40
    )

    # The file's own config alone (the portfolio, which runs first, is tested on its own).
    args = ["--study", str(study_file), "--n-trials", "1", "--no-prewarm", "--portfolio", "none"]
    done = _run("search.run", args, tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(
        study_name="image_folder_local_weights", storage=f"sqlite:///{tmp_path / 'optuna.db'}"
    )
    (trial,) = study.get_trials()
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs[TrialAttr.ENQUEUED] == HAND_RECIPE and trial.params == {}
    recorded = TrainConfig.from_yaml(trial.user_attrs[TrialAttr.CONFIG_YAML])
    assert [phase.epochs for phase in recorded.phases] == [4, 3]
    assert recorded.data.source == str(images.resolve()) and recorded.data.validation == 0.25
    assert recorded.model.weights is not None
    assert Path(recorded.model.weights).samefile(PRETRAINED_WEIGHTS)
    assert study.user_attrs[StudyAttr.BACKBONE] == "MobileNetV3Small"

    exported = _run("search.export", ["--study", str(study_file), "-o", "best.yaml"], tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert "trial 0 of image_folder_local_weights" in exported.stdout
    best = load_config(tmp_path / "best.yaml")
    assert best.provenance is not None and best.provenance.trial_number == 0
    assert best.model_copy(update={"provenance": None}) == recorded


def test_a_fixed_value_sets_a_parameter_the_base_space_does_not_search(tmp_path: Path) -> None:
    # The demo space searches no weight decay and no L2-SP: fixing them still applies them.
    (tmp_path / "study.yaml").write_text(
        BASE + "fixed:\n  weight_decay: 0.001\n  use_l2sp: true\n  l2sp_alpha: 0.01\n",
        encoding="utf-8",
    )
    space = _space(load_study_file(tmp_path / "study.yaml").spec)
    params = {k: v for k, v in DEMO_RECIPE.params.items()}
    config = space.sample(FixedTrial(params), "synthetic:target")
    assert [phase.weight_decay for phase in config.phases] == [0.001, 0.001]
    assert config.l2sp_alpha == 0.01
    fixed = {p.name: p.value for p in space.parameters() if p.role == "fixed"}
    assert fixed["weight_decay"] == 0.001 and fixed["l2sp_alpha"] == 0.01


def test_fixing_drop_connect_on_a_backbone_without_stochastic_depth_names_the_key(
    tmp_path: Path,
) -> None:
    (tmp_path / "study.yaml").write_text(BASE + "fixed:\n  drop_connect_rate: 0.2\n")
    with pytest.raises(ConfigError, match=r"fixed\.drop_connect_rate: MobileNetV3Small has no"):
        load_study_file(tmp_path / "study.yaml")
