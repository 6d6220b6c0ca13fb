"""bench.search_quality: how systems are counted and compared, and its quick run end to end."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

import bench.search_systems
import bench.trials
from bench.search_quality import FULL, QUICK, QUICK_SPACE, fingerprint, results_name
from bench.search_results import (
    KERAS_TUNER,
    KERAS_TUNER_ENGINE,
    NO_PORTFOLIO,
    NO_RECIPE,
    RANDOM,
    RECIPE,
    SHIPPED,
    SYSTEMS,
    SearchTrial,
    SystemRun,
    conclusion,
    last_line,
    load,
    reach_ratios,
    save,
    table,
)
from bench.search_systems import in_space, run_random, run_recipe, study_spec
from bench.trials import HyperbandRounds, TrainedTrial, TrialData
from search.engines.keras_tuner_space import KerasTunerSuggester, declare_space
from search.pruning.collapse import EpochView
from search.study.portfolio import LABEL_PREFIX
from search.study.registry import DEMO_RECIPE
from tests.conftest import REPO
from trainers.config.schema import TrainConfig
from trainers.fit.window import EpochWindow


def _run(system: str, *trials: tuple[int, float | None], seed: int = 0) -> SystemRun:
    return SystemRun(
        system, seed, tuple(SearchTrial(epochs, 1.0, value, "t") for epochs, value in trials)
    )


KT = _run(KERAS_TUNER, (1, 0.2), (1, 0.3), (3, 0.5), (3, 0.4))  # 8 epochs, best 0.5
ASHA = _run("study + asha", (3, 0.45), (2, None), (3, 0.55), (3, 0.6))  # pruned value: None
MEDIAN = _run("study + median", (5, 0.3), (5, 0.4))


def test_a_run_counts_its_best_within_a_budget_and_when_it_reached_a_value() -> None:
    assert ASHA.anytime() == [(3, 0.45), (5, 0.45), (8, 0.55), (11, 0.6)]
    assert (ASHA.epochs, ASHA.best) == (11, 0.6)
    # At KerasTuner's budget (8 epochs) the last trial has not finished yet.
    assert ASHA.best_within(KT.epochs) == 0.55 and ASHA.best_within(2) == 0.0
    assert ASHA.epochs_to_reach(0.5) == 8 and ASHA.epochs_to_reach(0.7) is None


def test_the_last_line_is_the_shipped_study_against_stock_keras_tuners_best() -> None:
    runs = [KT, ASHA, MEDIAN]
    assert reach_ratios(runs, "study + asha") == [1.0]
    assert reach_ratios(runs, "study + median") == [math.inf]
    lines = conclusion(runs, "far", headline="study + asha")
    # At 25% of KerasTuner's 8 epochs (2), KerasTuner has 0.3; ASHA's first trial ends at 3.
    assert lines == [
        "study + asha: epochs to reach KerasTuner Hyperband's best: 100%",
        "study + median: epochs to reach KerasTuner Hyperband's best: not reached",
        "epochs to reach KerasTuner Hyperband's best: 100% (median of 1 seeds, far); "
        "best at 25% of its budget: 0.000 vs 0.300",
    ]
    assert conclusion(runs, "far", headline="study + median")[-1].startswith(
        "epochs to reach KerasTuner Hyperband's best: not reached (median of 1 seeds, far)"
    )


def test_the_last_line_takes_the_median_over_seeds() -> None:
    # Seed 0: KerasTuner spends 12 epochs for 0.6 (0.4 after 3, its quarter); the study
    # reaches 0.6 after 6 epochs (50%) and has 0.5 after 3. Seed 1: 20 epochs for 0.7 (0.2 at
    # 5); the study reaches it after 5 (25%), 0.7 at 5. Seed 2: never reached; 0.1 vs 0.3.
    runs = [
        _run(KERAS_TUNER, (3, 0.4), (9, 0.6), seed=0),
        _run(SHIPPED, (3, 0.5), (3, 0.6), seed=0),
        _run(KERAS_TUNER, (5, 0.2), (15, 0.7), seed=1),
        _run(SHIPPED, (5, 0.7), seed=1),
        _run(KERAS_TUNER, (4, 0.3), (12, 0.9), seed=2),
        _run(SHIPPED, (4, 0.1), (12, 0.8), seed=2),
        _run(KERAS_TUNER_ENGINE, (40, 0.95), seed=0),  # an extra row: no budget, no headline
    ]
    assert last_line(runs, "far_small") == (
        "epochs to reach KerasTuner Hyperband's best: 50% (median of 3 seeds, far_small); "
        "best at 25% of its budget: 0.500 vs 0.300"
    )
    assert conclusion(runs, "far_small")[:2] == [
        f"{SHIPPED}: epochs to reach KerasTuner Hyperband's best: 50%, 25%, not reached",
        f"{KERAS_TUNER_ENGINE}: epochs to reach KerasTuner Hyperband's best: 333%",
    ]


def test_stock_keras_tuner_heads_the_systems_and_the_shipped_study_starts_with_the_portfolio() -> (
    None
):
    assert SYSTEMS[0] == KERAS_TUNER
    assert {SHIPPED, NO_PORTFOLIO, NO_RECIPE, KERAS_TUNER_ENGINE, RANDOM, RECIPE} <= set(SYSTEMS)
    shipped = study_spec("asha", QUICK_SPACE)
    before = study_spec("asha", QUICK_SPACE, portfolio=False)
    alone = study_spec("asha", QUICK_SPACE, recipes=False, portfolio=False)
    labels = [known.label for known in shipped.enqueued]
    # The portfolio first, then the study's own recipes.
    own = len(before.enqueued)
    assert labels[-own:] == [known.label for known in before.enqueued]
    assert labels[:-own] and all(label.startswith(LABEL_PREFIX) for label in labels[:-own])
    assert not any(known.label.startswith(LABEL_PREFIX) for known in before.enqueued)
    assert alone.enqueued == ()
    assert shipped.sampler_startup_trials == len(shipped.enqueued)


def test_a_continued_hyperband_trial_trains_and_is_charged_only_its_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    windows: list[EpochWindow] = []

    def train(
        config: TrainConfig,
        decide: bench.trials.Decide = bench.trials._go_on,
        *,
        window: EpochWindow,
        save: Path | None = None,
    ) -> TrainedTrial:
        windows.append(window)
        first, last = window.after_epoch + 1, window.last_epoch(config)
        epochs = tuple(EpochView(e, 0, 1.0, e / 10, 1.0) for e in range(first, last + 1))
        if save is not None and epochs:
            save.write_text("weights")
        return TrainedTrial(epochs, float(len(epochs)), None, TrialData(10, 100))

    monkeypatch.setattr(bench.trials, "train_trial", train)
    config = QUICK_SPACE.sample(_recipe_trial(), "synthetic:far")  # 1 head + 2 fine-tune epochs
    rounds = HyperbandRounds(tmp_path)
    first = rounds.run("a", {"tuner/epochs": 1, "tuner/initial_epoch": 0}, {}, config)
    later = {"tuner/epochs": 3, "tuner/initial_epoch": 1, "tuner/trial_id": "a"}
    continued = rounds.run("b", later, {}, config)
    again = {"tuner/epochs": 5, "tuner/initial_epoch": 3, "tuner/trial_id": "b"}
    nothing_left = rounds.run("c", again, {}, config)
    assert (first.epochs, continued.epochs, nothing_left.epochs) == (1, 2, 0)
    assert continued.continues and continued.best == pytest.approx(0.3)
    assert nothing_left.best == continued.best and len(windows) == 2
    assert windows[1] == EpochWindow(1, 3, tmp_path / "a.weights.h5")


def _stand_in_training(monkeypatch: pytest.MonkeyPatch) -> list[TrainConfig]:
    """Replace the systems' training with whole runs of the config's epochs at accuracy 0.5,
    instantly; the configs trained are appended to the list returned."""
    trained: list[TrainConfig] = []

    def train(config: TrainConfig, *_: Any, **__: Any) -> TrainedTrial:
        trained.append(config)
        epochs = tuple(EpochView(e, 0, 1.0, 0.5, 1.0) for e in range(1, config.total_epochs + 1))
        return TrainedTrial(epochs, 1.0, None, TrialData(10, 100))

    monkeypatch.setattr(bench.search_systems, "train_trial", train)
    return trained


def test_random_search_spends_its_budget_and_ends_within_a_trial_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trained = _stand_in_training(monkeypatch)
    lines: list[str] = []
    trials = run_random(QUICK_SPACE, "synthetic:far", budget=4, seed=0, report=lines.append)
    # QUICK_SPACE trains 3 epochs a trial: two trials spend a budget of 4, and no third starts.
    assert [trial.epochs for trial in trials] == [3, 3] and len(trained) == 2
    assert [trial.outcome for trial in trials] == ["complete", "complete"] and len(lines) == 2
    # Its draws are the seed's: the same seed draws the same configs.
    again = _stand_in_training(monkeypatch)
    run_random(QUICK_SPACE, "synthetic:far", budget=4, seed=0, report=lambda _: None)
    assert again == trained


def test_the_hand_recipe_is_one_trial_of_the_demo_recipe_in_the_space(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trained = _stand_in_training(monkeypatch)
    trials = run_recipe(QUICK_SPACE, "synthetic:far", report=lambda _: None)
    assert [trial.epochs for trial in trials] == [3] and len(trained) == 1
    assert trained[0] == QUICK_SPACE.sample(_recipe_trial(), "synthetic:far")


def _recipe_trial() -> optuna.Trial:
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(dict(in_space(DEMO_RECIPE, QUICK_SPACE).params))
    return study.ask()


def test_saved_runs_are_kept_only_for_the_same_space_and_budget(tmp_path: Path) -> None:
    path = save([KT, ASHA], fingerprint(QUICK), tmp_path / "runs.json")
    assert load(fingerprint(QUICK), path) == [KT, ASHA]
    assert load(fingerprint(dataclasses.replace(QUICK, max_epochs=4)), path) == []
    assert load(fingerprint(FULL), path) == []
    assert load(fingerprint(dataclasses.replace(QUICK, task="far_small")), path) == []
    assert load(fingerprint(QUICK), tmp_path / "none.json") == []
    # Each task keeps its own file.
    assert results_name(QUICK, quick=True) == "search_quality_quick"
    assert results_name(dataclasses.replace(FULL, task="far_small"), quick=False) == (
        "search_quality_far_small"
    )


def test_the_table_has_a_row_per_run_and_a_summary_per_system() -> None:
    other_seed = _run(KERAS_TUNER, (4, 0.7), seed=1)
    lines = table([KT, ASHA, other_seed, _run("study + asha", (4, 0.5), seed=1)])
    # Best at 25% of KerasTuner's epochs (2 of 8), at its budget, final; epochs, s, trials.
    assert lines[1].split() == [*KERAS_TUNER.split(), "0", "0.300", "0.500", "0.500", "8", "4", "4"]
    assert lines[2].split() == [
        "study",
        "+",
        "asha",
        "0",
        "0.000",
        "0.550",
        "0.600",
        "11",
        "4",
        "4",
    ]
    summary = {line.split("  ")[0]: line for line in lines[6:]}
    # Mean ± standard deviation over the two seeds.
    assert "0.600 ± 0.141" in summary[KERAS_TUNER]
    assert "0.525 ± 0.035" in summary["study + asha"]


def test_the_demo_recipe_is_moved_into_a_shorter_space() -> None:
    moved = in_space(DEMO_RECIPE, QUICK_SPACE)
    assert (moved.params["head_epochs"], moved.params["ft_epochs"]) == (1, 2)
    assert {k: v for k, v in moved.params.items() if not k.endswith("_epochs")} == {
        k: v for k, v in DEMO_RECIPE.params.items() if not k.endswith("_epochs")
    }


def test_keras_tuner_samples_every_parameter_of_the_project_space() -> None:
    hp = declare_space(QUICK_SPACE)
    names = {p.name for p in hp.space}
    # Both fine-tune optimizers' learning rates, and everything the fine-tune phase asks for.
    assert {"ft_lr_adamw", "ft_lr_sgd", "freeze_bn", "ft_optimizer", "unfreeze_level"} <= names
    # What the oracle drew for a trial: the space reads it back through the engine's
    # suggester (the adamw rate is inactive under sgd, and not asked for).
    hp.values.update(
        {"unfreeze_level": 6, "ft_optimizer": "sgd", "ft_lr_sgd": 0.05, "freeze_bn": 1}
    )
    hp.ensure_active_values()  # the other fine-tune parameters, now active, drawn
    config = QUICK_SPACE.sample(KerasTunerSuggester(hp), "synthetic:far")
    (_, fine_tune) = config.phases
    assert fine_tune.unfreeze_blocks == 13 and fine_tune.optimizer == "sgd"
    assert fine_tune.learning_rate == pytest.approx(0.05)
    assert fine_tune.freeze_batchnorm is True


@pytest.mark.slow
def test_the_quick_benchmark_runs_the_systems_side_by_side(tmp_path: Path) -> None:
    # Stock KerasTuner's smallest Hyperband (max_epochs 1: one trial of one epoch) sets a budget
    # that one trial of every other system spends: a smoke run (a minute of trials) that can
    # honestly assert only that every system ran and was counted. The engine's Hyperband
    # stands for the others (each system costs a model's tracing here); random search and the
    # hand recipe are the two tests above, their training stood in for.
    asked = (KERAS_TUNER, SHIPPED, KERAS_TUNER_ENGINE)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.search_quality"),
            *("--quick", "--max-epochs", "1", "--output", str(tmp_path)),
            *("--systems", KERAS_TUNER_ENGINE),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    rows = {system: [line for line in lines if line.startswith(f"{system} ")] for system in SYSTEMS}
    # A row for seed 0 and a summary row for each system asked for (the shipped study always
    # runs: the benchmark's figure is about it), none for the others.
    assert all(len(rows[system]) == (2 if system in asked else 0) for system in SYSTEMS), rows
    budget = int(rows[KERAS_TUNER][0].split()[-3])
    assert budget == 1
    for system in asked:
        spent = int(rows[system][0].split()[-3])
        # Every system spent the budget, and its last trial ended past it by less than a
        # trial's length.
        assert budget <= spent < budget + 3
    assert lines[-1].startswith("epochs to reach KerasTuner Hyperband's best: ")
    assert "(median of 1 seeds, far); best at 25% of its budget: " in lines[-1]
    assert (tmp_path / "search_quality_quick.png").stat().st_size > 10_000
    assert (tmp_path / "search_quality_quick.json").exists()
