"""Search quality at an equal budget of epochs: `python -m bench.search_quality [--quick]`.

Side by side in one run, for each seed, on `synthetic:far` (the demo's backbone, pretrained on
one generated task, fine-tuned on a task whose classes are where an object sits and how big it
is, which pretraining taught it to ignore: heads stay at 15 to 25%, and the fine-tuning
strategy decides, `bench.corpus`):

- `keras-tuner hyperband`: the KerasTuner engine (`search.run --engine keras-tuner`) with its
  Hyperband oracle over the same space and data (`bench.keras_tuner_hyperband`), one iteration
  of every bracket: the same trainer, collapse rules and epoch windows as the engine, a
  continued trial starting from its earlier round's weights. Its epochs set the budget.
- `study + median`, `study + asha`, `study + hyperband`: this project's study as `search.run`
  runs it (the demo study's TPE sampler, its enqueued recipes first, the collapse rules, then
  the Optuna pruner), starting trials until it has spent the budget; and the study with the
  pruner it ships with but without its enqueued recipes (`..., no recipe`), to show what the
  search finds on its own.
- `random search`: Optuna's `RandomSampler`, every trial trained to the end, same budget.
- `hand recipe`: the demo study's known-good recipe alone, trained once.

Every trial trains with the project's trainer in this process (`bench.trials`), so an epoch
costs every system the same. A system's result at a budget is what it would export: its best
counted trial among those finished within that many epochs (a pruned trial's value never
counts, whichever engine pruned it).

It prints one line per trial, a table (best at the budget, final best, epochs and wall seconds
spent, trials; per seed, then mean and spread per system), writes the anytime curves (best so
far against epochs spent) as a PNG and the trials as JSON, and ends with `epochs to reach
KerasTuner Hyperband's best: X% of KerasTuner's` for the demo study as it ships (the median
over seeds), or `not reached`. Each finished (system, seed) is saved at once, and a later run
for the same space keeps it and runs only what is missing (`--fresh`: everything again).
`--quick` trains a smaller space for one seed in minutes (CI runs it as a smoke test).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from bench.anytime_plot import plot_anytime
from bench.corpus import BENCH_SPACE, TASKS
from bench.keras_tuner_hyperband import run_keras_tuner_hyperband
from bench.search_results import (
    KERAS_TUNER,
    NO_RECIPE_SUFFIX,
    RANDOM,
    RECIPE,
    SHIPPED,
    STUDY_PREFIX,
    SYSTEMS,
    SearchTrial,
    SystemRun,
    conclusion,
    load,
    save,
    table,
)
from bench.trials import deciding, train_trial
from search.study.registry import DEMO_RECIPE, EnqueuedTrial, StudySpec, get_study_spec
from spaces.finetune import FineTuneSpace

#: The quick (CI) space: one head epoch, two fine-tune epochs, a third of the images.
QUICK_SPACE = dataclasses.replace(
    BENCH_SPACE, head_epochs=(1,), ft_epochs=(2,), synthetic={"classes": 10, "images_per_class": 30}
)


@dataclass(frozen=True)
class Mode:
    space: FineTuneSpace
    seeds: tuple[int, ...]
    #: KerasTuner Hyperband's max_epochs: the longest configuration of the space.
    max_epochs: int
    #: The systems run; KerasTuner's Hyperband always (its epochs are the others' budget).
    systems: tuple[str, ...] = SYSTEMS


#: The full run's space: the pruning corpus's (`bench.corpus`), with the phase lengths of the
#: demo's recipe (2 head and 3 fine-tune epochs), so that three seeds of every system fit in
#: about an hour on 2 CPU cores.
FULL_SPACE = dataclasses.replace(BENCH_SPACE, head_epochs=(2,), ft_epochs=(3,))
FULL = Mode(FULL_SPACE, seeds=(0, 1, 2), max_epochs=5)
QUICK = Mode(QUICK_SPACE, seeds=(0,), max_epochs=2)


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


def _study_spec(pruner: str, space: FineTuneSpace) -> StudySpec:
    """The demo study with the benchmark's space: its sampler, recipes, rules and `pruner`,
    warming up over the space's longest head phase."""
    demo = get_study_spec("demo")
    return dataclasses.replace(
        demo,
        space=space.sample,
        enqueued=tuple(in_space(known, space) for known in demo.enqueued),
        pruner=pruner,
        pruner_warmup_epochs=max(space.head_epochs),
    )


def run_project_study(
    spec: StudySpec, data_source: str, *, budget: int, seed: int, report: Progress
) -> list[SearchTrial]:
    """The project's study as the coordinator runs it, one trial at a time, until it has spent
    `budget` epochs: enqueued recipes first, then TPE; the collapse rules, then the pruner."""
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


def _trial_line(
    trial: SearchTrial, so_far: Sequence[SearchTrial], budget: int | None, reached: float
) -> str:
    spent = sum(t.epochs for t in so_far)
    of = f"/{budget}" if budget is not None else ""
    return (
        f"    trial {len(so_far) - 1:>2}: {trial.epochs} epochs, best {reached:.3f} "
        f"({trial.outcome}); {spent}{of} epochs spent, {trial.seconds:.0f} s"
    )


def run_seed(
    mode: Mode,
    seed: int,
    data_source: str,
    progress: Progress,
    *,
    done: Sequence[SystemRun],
    record: Callable[[SystemRun], None],
) -> None:
    """Every system on one seed, KerasTuner first (its epochs are the others' budget); each
    finished run goes to `record`, and a (system, seed) already `done` is not run again."""
    space = dataclasses.replace(mode.space, seed=seed)
    finished = {(run.system, run.seed): run for run in done}
    keras_tuner = finished.get((KERAS_TUNER, seed))
    if keras_tuner is None:
        progress(f"seed {seed}: {KERAS_TUNER} (max_epochs {mode.max_epochs}, factor 3)")
        hyperband = run_keras_tuner_hyperband(
            space,
            data_source,
            max_epochs=mode.max_epochs,
            seed=seed,
            rules=_study_spec(get_study_spec("demo").pruner, space).rules,
            on_trial=lambda t: progress(
                f"    {'continued' if t.continues else 'new'} trial: {t.epochs} epochs, best "
                f"{t.best:.3f}"
                + (f", pruned: {t.pruned}" if t.pruned else "")
                + f", {t.seconds:.0f} s"
            ),
        )
        charged = tuple(
            SearchTrial(
                t.epochs,
                t.seconds,
                t.value,
                "hyperband round" if t.pruned is None else f"pruned: {t.pruned}",
            )
            for t in hyperband
        )
        keras_tuner = SystemRun(KERAS_TUNER, seed, charged)
        record(keras_tuner)
    budget = keras_tuner.epochs
    for system in (system for system in SYSTEMS[1:] if system in mode.systems):
        if (system, seed) in finished:
            progress(f"seed {seed}: {system}: kept from the last run")
            continue
        progress(
            f"seed {seed}: {system}" + ("" if system == RECIPE else f" (budget {budget} epochs)")
        )
        if system == RANDOM:
            trials = run_random(space, data_source, budget=budget, seed=seed, report=progress)
        elif system == RECIPE:
            trials = run_recipe(space, data_source, report=progress)
        else:
            pruner = system.removeprefix(STUDY_PREFIX).removesuffix(NO_RECIPE_SUFFIX)
            spec = _study_spec(pruner, space)
            if system.endswith(NO_RECIPE_SUFFIX):
                spec = dataclasses.replace(spec, enqueued=())
            trials = run_project_study(spec, data_source, budget=budget, seed=seed, report=progress)
        record(SystemRun(system, seed, tuple(trials)))


def fingerprint(mode: Mode) -> str:
    """What results depend on besides the system and the seed: the space and the budget."""
    return f"{mode.space!r} max_epochs={mode.max_epochs}"


def _keys(runs: Sequence[SystemRun]) -> set[tuple[str, int]]:
    return {(run.system, run.seed) for run in runs}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.search_quality",
        description="This project's studies against KerasTuner Hyperband, random search and a "
        "hand recipe, at KerasTuner's budget of epochs.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small space and one seed (a few minutes)"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="seeds to run (default: 0 1 2; --quick: 0)"
    )
    parser.add_argument(
        "--max-epochs",
        type=int,
        help="KerasTuner Hyperband's max_epochs, which sets every system's budget (default: "
        "the space's longest configuration; --quick: 2)",
    )
    parser.add_argument(
        "--systems",
        nargs="+",
        choices=SYSTEMS[1:],
        metavar="SYSTEM",
        help="run only these besides KerasTuner's Hyperband, e.g. 'hand recipe' (default: all "
        f"of {', '.join(SYSTEMS[1:])}; the shipped study, {SHIPPED!r}, always runs)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="run every system again (default: keep the runs saved in --output for the same "
        "space, and run only what is missing)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("bench/results"),
        help="folder for the anytime PNG and the trials' JSON (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    mode = QUICK if args.quick else FULL
    if args.seeds:
        mode = dataclasses.replace(mode, seeds=tuple(args.seeds))
    if args.max_epochs is not None:
        if args.max_epochs < 1:
            print(f"error: --max-epochs must be at least 1, got {args.max_epochs}", file=sys.stderr)
            return 2
        mode = dataclasses.replace(mode, max_epochs=args.max_epochs)
    if args.systems:
        chosen = {KERAS_TUNER, SHIPPED, *args.systems}
        mode = dataclasses.replace(mode, systems=tuple(s for s in SYSTEMS if s in chosen))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.monotonic()

    def progress(line: str) -> None:
        print(f"{line}  [{time.monotonic() - started:.0f}s]", flush=True)

    name = "search_quality_quick" if args.quick else "search_quality"
    results = args.output / f"{name}.json"
    saved = [] if args.fresh else load(fingerprint(mode), results)
    runs: list[SystemRun] = []

    def record(run: SystemRun) -> None:
        runs.append(run)
        save(
            [*runs, *(r for r in saved if (r.system, r.seed) not in _keys(runs))],
            fingerprint(mode),
            results,
        )

    for seed in mode.seeds:
        kept = [run for run in saved if run.seed == seed and run.system in mode.systems]
        runs.extend(kept)
        run_seed(mode, seed, TASKS["far"].data_source, progress, done=kept, record=record)
    runs.sort(key=lambda run: (run.seed, SYSTEMS.index(run.system)))
    print(f"wrote {plot_anytime(runs, args.output / f'{name}.png')}")
    print("\n".join(table(runs)))
    print("\n".join(conclusion(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
