"""How each system of `bench.search_quality` runs on one seed, trained in this process.

Stock KerasTuner Hyperband (`bench.keras_tuner_stock`), the KerasTuner engine's Hyperband
(`bench.keras_tuner_hyperband`), the project's study (with the shipped portfolio, with the
study's own recipes only, or with neither), random search and the hand recipe. Each returns
its trials as `SearchTrial`s in the order it ran them, and reports a line per trial.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import optuna
from optuna.trial import TrialState

from bench.keras_tuner_hyperband import run_keras_tuner_hyperband
from bench.keras_tuner_stock import run_keras_tuner_stock
from bench.search_results import SearchTrial
from bench.trials import HyperbandTrial, deciding, train_trial
from search.study.portfolio import SHIPPED_PORTFOLIO, with_portfolio
from search.study.registry import DEMO_RECIPE, EnqueuedTrial, StudySpec, get_study_spec
from spaces.finetune import FineTuneSpace

Progress = Callable[[str], None]


def in_space(known: EnqueuedTrial, space: FineTuneSpace) -> EnqueuedTrial:
    """A demo recipe with its phase lengths moved to the nearest that `space` allows (the
    quick space's phases are shorter than the demo's)."""

    def nearest(value: int, allowed: Sequence[int]) -> int:
        return min(allowed, key=lambda choice: abs(choice - value))

    params = dict(known.params)
    params["head_epochs"] = nearest(params["head_epochs"], space.head_epochs)
    params["ft_epochs"] = nearest(params["ft_epochs"], space.ft_epochs)
    return dataclasses.replace(known, params=params)


def study_spec(
    pruner: str, space: FineTuneSpace, *, recipes: bool = True, portfolio: bool = True
) -> StudySpec:
    """The demo study with the benchmark's space: its sampler, rules and `pruner`, warming up
    over the space's longest head phase; unless not `portfolio`, the shipped portfolio placed
    on the space first, as users get it, then its own recipes unless not `recipes`."""
    demo = get_study_spec("demo")
    spec = dataclasses.replace(
        demo,
        space=space,
        enqueued=tuple(in_space(known, space) for known in demo.enqueued) if recipes else (),
        pruner=pruner,
        pruner_warmup_epochs=max(space.head_epochs),
    )
    if portfolio:
        spec, _placements = with_portfolio(spec, SHIPPED_PORTFOLIO)
    return spec


def run_project_study(
    spec: StudySpec, data_source: str, *, budget: int, seed: int, report: Progress
) -> list[SearchTrial]:
    """The project's study as the coordinator runs it, one trial at a time, until it has spent
    `budget` epochs: enqueued trials first (the portfolio, its recipes), then TPE; the collapse
    rules, then the pruner."""
    study = optuna.create_study(
        direction="maximize", sampler=spec.make_sampler(seed), pruner=spec.make_pruner()
    )
    for known in spec.enqueued:
        study.enqueue_trial(dict(known.params))
    trials: list[SearchTrial] = []
    while sum(trial.epochs for trial in trials) < budget:
        trial = study.ask()
        config = spec.space(trial, data_source)
        trained = train_trial(config, deciding(config, spec.rules, trial))
        if trained.pruned is None:
            study.tell(trial, trained.best)
            stop = trained.stopped_by
            outcome = "complete" if stop is None else f"complete, stopped: {stop.reason}"
            searched = SearchTrial(len(trained.epochs), trained.seconds, trained.best, outcome)
        else:
            study.tell(trial, state=TrialState.PRUNED)
            outcome = f"pruned: {trained.pruned}"
            searched = SearchTrial(len(trained.epochs), trained.seconds, None, outcome)
        trials.append(searched)
        report(_trial_line(searched, trials, budget, trained.best))
    return trials


def run_random(
    space: FineTuneSpace, data_source: str, *, budget: int, seed: int, report: Progress
) -> list[SearchTrial]:
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed)
    )
    trials: list[SearchTrial] = []
    while sum(trial.epochs for trial in trials) < budget:
        trial = study.ask()
        trained = train_trial(space.sample(trial, data_source))
        study.tell(trial, trained.best)
        trials.append(SearchTrial(len(trained.epochs), trained.seconds, trained.best, "complete"))
        report(_trial_line(trials[-1], trials, budget, trained.best))
    return trials


def run_recipe(space: FineTuneSpace, data_source: str, *, report: Progress) -> list[SearchTrial]:
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(dict(in_space(DEMO_RECIPE, space).params))
    trained = train_trial(space.sample(study.ask(), data_source))
    trial = SearchTrial(len(trained.epochs), trained.seconds, trained.best, "complete")
    report(_trial_line(trial, [trial], None, trained.best))
    return [trial]


def run_hyperband(
    space: FineTuneSpace,
    data_source: str,
    *,
    engine: bool,
    max_epochs: int,
    seed: int,
    report: Progress,
) -> list[SearchTrial]:
    """One iteration of KerasTuner's Hyperband (factor 3): stock `keras_tuner.Hyperband`, or
    with `engine` the KerasTuner engine's oracle with the demo study's collapse rules."""

    def on_trial(trial: HyperbandTrial) -> None:
        report(_hyperband_line(trial))

    if engine:
        rules = get_study_spec("demo").rules
        hyperband = run_keras_tuner_hyperband(
            space, data_source, max_epochs=max_epochs, seed=seed, rules=rules, on_trial=on_trial
        )
    else:
        hyperband = run_keras_tuner_stock(
            space, data_source, max_epochs=max_epochs, seed=seed, on_trial=on_trial
        )
    return [
        SearchTrial(
            trial.epochs,
            trial.seconds,
            trial.value,
            "hyperband round" if trial.pruned is None else f"pruned: {trial.pruned}",
        )
        for trial in hyperband
    ]


def _hyperband_line(trial: HyperbandTrial) -> str:
    return (
        f"    {'continued' if trial.continues else 'new'} trial: {trial.epochs} epochs, best "
        f"{trial.best:.3f}"
        + (f", pruned: {trial.pruned}" if trial.pruned else "")
        + f", {trial.seconds:.0f} s"
    )


def _trial_line(
    trial: SearchTrial, so_far: Sequence[SearchTrial], budget: int | None, reached: float
) -> str:
    spent = sum(t.epochs for t in so_far)
    of = f"/{budget}" if budget is not None else ""
    return (
        f"    trial {len(so_far) - 1:>2}: {trial.epochs} epochs, best {reached:.3f} "
        f"({trial.outcome}); {spent}{of} epochs spent, {trial.seconds:.0f} s"
    )
