"""bench.study_cost: the configs it draws, the scripts' specs and times (`study_cost_sides`), the
accuracy check (`study_cost_report`), and a run end to end (the study's times:
test_study_timeline)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from bench.study_cost import FULL, QUICK, RATIO_PREFIX, config_of, draw_params, head_share
from bench.study_cost_report import AccuracyCheck, check_accuracy
from bench.study_cost_run import STUDY_NAME, UnprunedStudySpec, space_from_plan, study_spec
from bench.study_cost_sides import last_json_line, script_run, script_spec
from search.pruning.collapse import CollapseRules, EpochView, find_collapse
from spaces.demo import PRETRAINED_WEIGHTS
from tests.conftest import REPO
from trainers.data.image_folder import ImageFolder

DATA = "/data/images"


def test_configs_are_drawn_by_the_seed_and_train_the_head_for_at_least_half() -> None:
    drawn = draw_params(FULL.space, 6, seed=0, data=DATA)
    assert draw_params(FULL.space, 6, seed=0, data=DATA) == drawn
    assert draw_params(FULL.space, 6, seed=1, data=DATA) != drawn
    configs = [config_of(FULL.space, params, DATA) for params in drawn]
    assert len({config.to_yaml() for config in configs}) == 6
    for config in configs:
        assert head_share(config) >= 0.5
        # Every config fine-tunes, without augmentation, on the demo's backbone and weights.
        assert config.unfrozen_units > 0 and config.data.augmentation == "none"
        assert config.model.weights == PRETRAINED_WEIGHTS
        assert config.data.source == DATA and config.data.image_size == 64
    quick = config_of(QUICK.space, draw_params(QUICK.space, 1, seed=0, data=DATA)[0], DATA)
    assert [phase.epochs for phase in quick.phases] == [1, 1]


def test_the_study_enqueues_the_drawn_configs_in_order_and_never_prunes() -> None:
    params = draw_params(FULL.space, 3, seed=0, data=DATA)
    # The plan goes through JSON, which keeps no tuples.
    plan = json.loads(
        json.dumps({"space": dataclasses.asdict(FULL.space), "params": params, "data": DATA})
    )
    assert space_from_plan(plan["space"]) == FULL.space
    spec = study_spec(plan)
    assert isinstance(spec, UnprunedStudySpec) and spec.name == STUDY_NAME
    assert [dict(known.params) for known in spec.enqueued] == params
    assert (spec.n_trials, spec.default_data) == (3, DATA)
    assert isinstance(spec.make_pruner(), optuna.pruners.NopPruner)
    # What the space makes of an enqueued trial's params is the drawn config.
    assert spec.space(optuna.trial.FixedTrial(params[1]), DATA) == config_of(
        FULL.space, params[1], DATA
    )
    # A curve every default rule prunes (wrecked at the first fine-tune epoch, then stuck)
    # goes on; a non-finite loss still stops.
    wrecked = [
        EpochView(1, 1, 1.0, 0.80),
        EpochView(2, 1, 0.8, 0.85),
        EpochView(3, 2, 5.0, 0.10),
        EpochView(4, 2, 5.0, 0.10),
        EpochView(5, 2, 5.0, 0.10),
    ]

    def decide(epochs: list[EpochView], rules: CollapseRules | None = None) -> str | None:
        decision = find_collapse(
            epochs,
            num_classes=10,
            validation_images=100,
            unfreezing_phases=(2,),
            rules=rules or CollapseRules(),
        )
        return None if decision is None else decision.reason

    assert decide(wrecked[:3]) == "unfreeze_shock"
    assert all(decide(wrecked[:end], spec.rules) is None for end in range(1, 6))
    assert decide([*wrecked[:2], EpochView(3, 2, math.nan, 0.1)], spec.rules) == "nan"


def test_a_script_trains_the_projects_split_and_unfreezes_whole_units() -> None:
    folder = ImageFolder(
        Path(DATA),
        tuple(f"{DATA}/c{label}/{index}.png" for label in range(2) for index in range(10)),
        tuple(label for label in range(2) for _ in range(10)),
        ("c0", "c1"),
        (),
    )
    units = (("conv_1", "conv_1_bn"), ("block_a", "block_a_bn"), ("block_b",), ("stem",))
    config = config_of(FULL.space, draw_params(FULL.space, 1, seed=0, data=DATA)[0], DATA)
    spec = script_spec(config, folder, units)
    assert sorted(spec["train_files"] + spec["validation_files"]) == sorted(folder.paths)
    # 20% of each class held out, as the trainer splits it.
    assert sorted(spec["validation_labels"]) == [0, 0, 1, 1]
    head, fine_tune = spec["phases"]
    assert head["unfreeze_layers"] == [] and head["epochs"] == config.phases[0].epochs
    blocks = config.phases[1].unfreeze_blocks
    assert fine_tune["unfreeze_layers"] == [name for unit in units[:blocks] for name in unit]
    assert fine_tune["learning_rate"] == config.phases[1].learning_rate
    assert spec["weights"] == str(REPO / config.model.weights)  # type: ignore[operator]
    assert spec["batch_size"] == config.batch_size and spec["num_classes"] == 2


def test_a_scripts_breakdown_comes_from_the_times_it_printed() -> None:
    printed = json.dumps(
        {
            "started": 100.1,
            "imported": 106.0,
            "data_ready": 107.0,
            "built": 109.0,
            "finished": 126.0,
            "epochs": [{"seconds": 10.0}, {"seconds": 5.0}],
            "best_val_accuracy": 0.8,
        }
    )
    result = last_json_line(f"some warning\n{printed}\n")
    run = script_run(100.0, 130.0, result)
    assert dataclasses.astuple(run.breakdown) == pytest.approx((6.0, 1.0, 2.0, 15.0, 30.0))
    assert run.breakdown.other == pytest.approx(6.0)
    assert run.epoch_seconds == (10.0, 5.0) and run.best_val_accuracy == 0.8
    with pytest.raises(ValueError, match="no JSON"):
        last_json_line("Traceback ...\n")


def test_accuracies_agree_within_the_noise_of_their_difference() -> None:
    close = check_accuracy(0.80, 0.85, 100)
    # Two standard errors of the difference of two proportions near 0.8 on 100 images.
    assert close.tolerance == pytest.approx(0.11, abs=0.01) and close.passed
    assert not check_accuracy(0.80, 0.55, 100).passed
    assert not check_accuracy(None, 0.8, 100).passed
    assert not AccuracyCheck(0.8, 0.8, math.nan).passed


@pytest.mark.slow
def test_one_quick_config_runs_on_both_sides_and_ends_with_the_ratio(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.study_cost", "--quick", "--configs", "1"),
            *("--output", str(tmp_path / "work"), "--results", str(tmp_path)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("cfg "))
    assert header.split() == [
        *("cfg", "side", "startup", "data", "build", "epochs", "other", "total", "val_acc"),
        "notes",
    ]
    rows = [line for line in lines if re.match(r"^\s+0 scripts |^\s+study ", line)]
    assert len(rows) == 2
    assert re.search(r"^accuracy 0: scripts 0\.\d{3} study 0\.\d{3}, .*: ok$", done.stdout, re.M)
    assert re.fullmatch(rf"{re.escape(RATIO_PREFIX)} \d+\.\d\d", lines[-1])
    saved = json.loads((tmp_path / "study_cost_quick.json").read_text())
    assert saved["accuracy"][0]["passed"] and len(saved["study"]) == 1
    assert saved["ratio"] == pytest.approx(saved["study_wall"] / saved["scripts_wall"])
