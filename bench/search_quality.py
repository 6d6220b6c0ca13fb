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
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from bench.corpus import BENCH_SPACE, TASKS
from bench.keras_tuner_hyperband import run_keras_tuner_hyperband
from bench.trials import TrialData, train
from search.pruning import PRUNERS, EpochView, find_collapse, optuna_decision
from search.studies import DEMO_RECIPE, EnqueuedTrial, StudySpec, get_study_spec
from search.vocabulary import Reason
from spaces.finetune import FineTuneSpace

KERAS_TUNER = "keras-tuner hyperband"
RANDOM = "random search"
RECIPE = "hand recipe"
STUDY_PREFIX = "study + "
#: The pruner the demo study ships with: the study whose figure ends the benchmark.
SHIPPED = f"{STUDY_PREFIX}{get_study_spec('demo').pruner}"
#: The shipped study without its enqueued recipes: what the search itself finds.
NO_RECIPE_SUFFIX = ", no recipe"
NO_RECIPE = f"{SHIPPED}{NO_RECIPE_SUFFIX}"
SYSTEMS = (
    KERAS_TUNER,
    *(f"{STUDY_PREFIX}{name}" for name in PRUNERS),
    NO_RECIPE,
    RANDOM,
    RECIPE,
)

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


@dataclass(frozen=True)
class SearchTrial:
    """One trial as the benchmark counts it."""

    epochs: int
    seconds: float
    #: The trial's result as its system would report it; None for a pruned trial.
    value: float | None
    outcome: str


@dataclass(frozen=True)
class SystemRun:
    system: str
    seed: int
    trials: tuple[SearchTrial, ...]

    @property
    def epochs(self) -> int:
        return sum(trial.epochs for trial in self.trials)

    @property
    def seconds(self) -> float:
        return sum(trial.seconds for trial in self.trials)

    def anytime(self) -> list[tuple[int, float]]:
        """(epochs spent, best so far) after each trial."""
        points, spent, best = [], 0, 0.0
        for trial in self.trials:
            spent += trial.epochs
            if trial.value is not None:
                best = max(best, trial.value)
            points.append((spent, best))
        return points

    def best_within(self, epochs: int) -> float:
        """The best result among the trials finished within `epochs` epochs."""
        return max((best for spent, best in self.anytime() if spent <= epochs), default=0.0)

    @property
    def best(self) -> float:
        return self.best_within(self.epochs)

    def epochs_to_reach(self, value: float) -> int | None:
        return next((spent for spent, best in self.anytime() if best >= value), None)


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


def run_study(
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

        def judge(epochs: tuple[EpochView, ...], data: TrialData) -> str | None:
            collapse = find_collapse(
                epochs,
                num_classes=data.num_classes,
                validation_images=data.validation_images,
                unfreezing_phases=config.unfreezing_phases,  # noqa: B023 (called in this loop)
                rules=spec.rules,
            )
            if collapse is not None and collapse.reason == Reason.NAN:
                return collapse.reason
            trial.report(epochs[-1].val_accuracy, step=epochs[-1].epoch)  # noqa: B023
            # The stored trial, as the coordinator reads it: the pruner judges what was
            # reported, and Optuna offers no public getter for a running trial's record.
            decision = collapse or optuna_decision(
                study,
                study._storage.get_trial(trial._trial_id),  # noqa: B023
            )
            return None if decision is None else decision.reason

        trained = train(config, judge)
        if trained.stopped_by is None:
            study.tell(trial, trained.best)
            searched = SearchTrial(len(trained.epochs), trained.seconds, trained.best, "complete")
        else:
            study.tell(trial, state=TrialState.PRUNED)
            outcome = f"pruned: {trained.stopped_by}"
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
        trained = train(space.sample(trial, data_source))
        study.tell(trial, trained.best)
        trials.append(SearchTrial(len(trained.epochs), trained.seconds, trained.best, "complete"))
        report(_trial_line(trials[-1], trials, budget, trained.best))
    return trials


def run_recipe(space: FineTuneSpace, data_source: str, *, report: Progress) -> list[SearchTrial]:
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(dict(in_space(DEMO_RECIPE, space).params))
    trained = train(space.sample(study.ask(), data_source))
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
            trials = run_study(spec, data_source, budget=budget, seed=seed, report=progress)
        record(SystemRun(system, seed, tuple(trials)))


def _mean_spread(values: Sequence[float], digits: int = 3) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def table(runs: Sequence[SystemRun]) -> list[str]:
    """Per system and seed, then mean ± standard deviation over seeds, per system."""
    budgets = {run.seed: run.epochs for run in runs if run.system == KERAS_TUNER}
    lines = [
        f"{'system':<26} {'seed':>4} {'best at budget':>14} {'final best':>10} "
        f"{'epochs':>6} {'seconds':>7} {'trials':>6}"
    ]
    for run in runs:
        at_budget = run.best_within(budgets[run.seed])
        lines.append(
            f"{run.system:<26} {run.seed:>4} {at_budget:>14.3f} {run.best:>10.3f} "
            f"{run.epochs:>6} {run.seconds:>7.0f} {len(run.trials):>6}"
        )
    lines.append(
        f"{'system':<26} {'seeds':>5} {'best at budget':>16} {'final best':>16} "
        f"{'epochs':>14} {'seconds':>14}"
    )
    for system in dict.fromkeys(run.system for run in runs):
        mine = [run for run in runs if run.system == system]
        lines.append(
            f"{system:<26} {len(mine):>5} "
            f"{_mean_spread([r.best_within(budgets[r.seed]) for r in mine]):>16} "
            f"{_mean_spread([r.best for r in mine]):>16} "
            f"{_mean_spread([float(r.epochs) for r in mine], digits=0):>14} "
            f"{_mean_spread([r.seconds for r in mine], digits=0):>14}"
        )
    return lines


def reach_ratios(runs: Sequence[SystemRun], system: str) -> list[float]:
    """Per seed: epochs `system` took to reach KerasTuner's final best, as a share of
    KerasTuner's epochs (infinite when it never did)."""
    ratios = []
    for keras_tuner in (run for run in runs if run.system == KERAS_TUNER):
        mine = next(run for run in runs if run.system == system and run.seed == keras_tuner.seed)
        epochs = mine.epochs_to_reach(keras_tuner.best)
        ratios.append(math.inf if epochs is None else epochs / keras_tuner.epochs)
    return ratios


def conclusion(runs: Sequence[SystemRun], headline: str = SHIPPED) -> list[str]:
    """A line per project study, then the last line: the median over seeds for `headline`
    (the demo study as it ships)."""
    lines = []
    for system in dict.fromkeys(run.system for run in runs):
        if system.startswith(STUDY_PREFIX):
            ratios = reach_ratios(runs, system)
            shown = ", ".join("not reached" if math.isinf(r) else f"{r:.0%}" for r in ratios)
            lines.append(f"{system}: epochs to reach KerasTuner Hyperband's best: {shown}")
    if not any(run.system == headline for run in runs):
        return lines
    ratios = reach_ratios(runs, headline)
    median = statistics.median(ratios)
    reached = "not reached" if math.isinf(median) else f"{median:.0%} of KerasTuner's"
    lines.append(
        f"epochs to reach KerasTuner Hyperband's best: {reached} ({headline}, median of "
        f"{len(ratios)} seeds)"
    )
    return lines


def fingerprint(mode: Mode) -> str:
    """What results depend on besides the system and the seed: the space and the budget."""
    return f"{mode.space!r} max_epochs={mode.max_epochs}"


def save(runs: Sequence[SystemRun], mode: Mode, path: Path) -> Path:
    payload = {
        "mode": fingerprint(mode),
        "runs": [
            {
                "system": run.system,
                "seed": run.seed,
                "trials": [dataclasses.asdict(trial) for trial in run.trials],
            }
            for run in runs
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(payload, indent=1) + "\n")
    partial.replace(path)  # a run killed while saving leaves the last complete file
    return path


def load(mode: Mode, path: Path) -> list[SystemRun]:
    """The runs saved at `path` for the same space and budget; none if it is another's."""
    if not path.exists():
        return []
    payload = json.loads(path.read_text())
    if payload.get("mode") != fingerprint(mode):
        return []
    return [
        SystemRun(
            item["system"],
            int(item["seed"]),
            tuple(SearchTrial(**trial) for trial in item["trials"]),
        )
        for item in payload["runs"]
    ]


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
    saved = [] if args.fresh else load(mode, results)
    runs: list[SystemRun] = []

    def record(run: SystemRun) -> None:
        runs.append(run)
        save([*runs, *(r for r in saved if (r.system, r.seed) not in _keys(runs))], mode, results)

    for seed in mode.seeds:
        kept = [run for run in saved if run.seed == seed and run.system in mode.systems]
        runs.extend(kept)
        run_seed(mode, seed, TASKS["far"], progress, done=kept, record=record)
    runs.sort(key=lambda run: (run.seed, SYSTEMS.index(run.system)))
    from bench.anytime_plot import plot_anytime

    print(f"wrote {plot_anytime(runs, args.output / f'{name}.png')}")
    print("\n".join(table(runs)))
    print("\n".join(conclusion(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
