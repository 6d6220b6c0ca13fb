"""Search quality at an equal budget of epochs: `python -m bench.search_quality [--quick]`.

Side by side in one run, for each seed, on a generated task, `far` unless `--task` says
another of `bench.corpus.TASKS` (`synthetic:far`: the demo's backbone, pretrained on one
generated task, fine-tuned on a task whose classes are where an object sits and how big it
is, which pretraining taught it to ignore: heads stay at 15 to 25%, and the fine-tuning
strategy decides, `bench.corpus`):

- `keras-tuner hyperband`: stock KerasTuner `Hyperband`, the Tuner a user would run
  (`bench.keras_tuner_stock`), one iteration of every bracket, no collapse rules, a continued
  trial starting from its earlier round's weights. The headline peer: the strongest
  KerasTuner a user gets without this project. Its epochs set the budget.
- `study + median`, `study + asha`, `study + hyperband`: this project's study as `search.run`
  runs it, as users get it (the demo study's TPE sampler, its own recipes, then the shipped
  portfolio of recipes, `search.study.portfolio`; the collapse rules, then the Optuna pruner),
  starting trials until it has spent the budget; the study with the pruner it ships with but
  without the portfolio (`..., no portfolio`: the study as it was before it), and without any
  enqueued trial (`..., no recipe`: what the search finds on its own).
- `keras-tuner engine hyperband`: the project's KerasTuner engine with its Hyperband oracle
  (`bench.keras_tuner_hyperband`: the engine's collapse rules and epoch windows), at its own
  one-iteration schedule; an extra row, not budget-limited.
- `random search`: Optuna's `RandomSampler`, every trial trained to the end, same budget.
- `hand recipe`: the demo study's known-good recipe alone, trained once.

Every trial trains with the project's trainer in this process (`bench.trials`), so an epoch
costs every system the same. A system's result at a budget is what it would export: its best
counted trial among those finished within that many epochs (a pruned trial's value never
counts, whichever engine pruned it).

It prints one line per trial, a table (best at 25% of the budget, best at the budget, final
best, epochs and wall seconds spent, trials; per seed, then mean and spread per system), writes
the anytime curves (best so far against epochs spent) as a PNG and the trials as JSON, and ends
with `epochs to reach KerasTuner Hyperband's best: X% (median of S seeds, TASK); best at 25% of
its budget: Y vs Z`: for the shipped study, the median over seeds of its epochs to reach stock
KerasTuner's final best as a share of KerasTuner's epochs (or `not reached`), and its median
best against KerasTuner's after a quarter of KerasTuner's epochs. Each finished (system, seed)
is saved at once, and a later run for the same space, task and portfolio keeps it and runs only
what is missing (`--fresh`: everything again). `--quick` trains a smaller space for one seed in
minutes (CI runs it as a smoke test).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna

from bench.anytime_plot import plot_anytime
from bench.corpus import BENCH_SPACE, TASKS
from bench.search_results import (
    KERAS_TUNER,
    KERAS_TUNER_ENGINE,
    NO_PORTFOLIO_SUFFIX,
    NO_RECIPE_SUFFIX,
    RANDOM,
    RECIPE,
    SHIPPED,
    STUDY_PREFIX,
    SYSTEMS,
    SystemRun,
    conclusion,
    load,
    save,
    table,
)
from bench.search_systems import (
    Progress,
    run_hyperband,
    run_project_study,
    run_random,
    run_recipe,
    study_spec,
)
from search.study.portfolio import SHIPPED_PORTFOLIO
from spaces.finetune import FineTuneSpace

#: The task unless `--task` says another.
DEFAULT_TASK = "far"

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
    #: The systems run; stock KerasTuner's Hyperband always (its epochs are the others'
    #: budget).
    systems: tuple[str, ...] = SYSTEMS
    #: The task of `bench.corpus.TASKS` (its images per class already in `space`).
    task: str = DEFAULT_TASK


#: The full run's space: the pruning corpus's (`bench.corpus`), with the phase lengths of the
#: demo's recipe (2 head and 3 fine-tune epochs), so that three seeds of every system fit in
#: about an hour on 2 CPU cores.
FULL_SPACE = dataclasses.replace(BENCH_SPACE, head_epochs=(2,), ft_epochs=(3,))
FULL = Mode(FULL_SPACE, seeds=(0, 1, 2), max_epochs=5)
QUICK = Mode(QUICK_SPACE, seeds=(0,), max_epochs=2)


def run_seed(
    mode: Mode,
    seed: int,
    progress: Progress,
    *,
    done: Sequence[SystemRun],
    record: Callable[[SystemRun], None],
) -> None:
    """Every system on one seed, stock KerasTuner first (its epochs are the others' budget);
    each finished run goes to `record`, and a (system, seed) already `done` is not run again."""
    space = dataclasses.replace(mode.space, seed=seed)
    data_source = TASKS[mode.task].data_source
    finished = {(run.system, run.seed): run for run in done}
    keras_tuner = finished.get((KERAS_TUNER, seed))
    if keras_tuner is None:
        progress(f"seed {seed}: {KERAS_TUNER} (max_epochs {mode.max_epochs}, factor 3)")
        trials = run_hyperband(
            space,
            data_source,
            engine=False,
            max_epochs=mode.max_epochs,
            seed=seed,
            report=progress,
        )
        keras_tuner = SystemRun(KERAS_TUNER, seed, tuple(trials))
        record(keras_tuner)
    budget = keras_tuner.epochs
    for system in (system for system in SYSTEMS[1:] if system in mode.systems):
        if (system, seed) in finished:
            progress(f"seed {seed}: {system}: kept from the last run")
            continue
        if system == KERAS_TUNER_ENGINE:
            progress(f"seed {seed}: {system} (max_epochs {mode.max_epochs}, factor 3)")
            trials = run_hyperband(
                space,
                data_source,
                engine=True,
                max_epochs=mode.max_epochs,
                seed=seed,
                report=progress,
            )
            record(SystemRun(system, seed, tuple(trials)))
            continue
        progress(
            f"seed {seed}: {system}" + ("" if system == RECIPE else f" (budget {budget} epochs)")
        )
        if system == RANDOM:
            trials = run_random(space, data_source, budget=budget, seed=seed, report=progress)
        elif system == RECIPE:
            trials = run_recipe(space, data_source, report=progress)
        else:
            pruner = (
                system.removeprefix(STUDY_PREFIX)
                .removesuffix(NO_RECIPE_SUFFIX)
                .removesuffix(NO_PORTFOLIO_SUFFIX)
            )
            spec = study_spec(
                pruner,
                space,
                recipes=not system.endswith(NO_RECIPE_SUFFIX),
                portfolio=not system.endswith((NO_RECIPE_SUFFIX, NO_PORTFOLIO_SUFFIX)),
            )
            trials = run_project_study(spec, data_source, budget=budget, seed=seed, report=progress)
        record(SystemRun(system, seed, tuple(trials)))


def fingerprint(mode: Mode) -> str:
    """What results depend on besides the system and the seed: the space, the task, the budget
    and the shipped portfolio (a new one is a new study)."""
    portfolio = hashlib.sha256(SHIPPED_PORTFOLIO.read_bytes()).hexdigest()[:12]
    return f"{mode.space!r} task={mode.task} max_epochs={mode.max_epochs} portfolio={portfolio}"


def results_name(mode: Mode, quick: bool) -> str:
    """The results' file name without its suffix: one per task, and apart for `--quick`."""
    name = "search_quality_quick" if quick else "search_quality"
    return name if mode.task == DEFAULT_TASK else f"{name}_{mode.task}"


def _keys(runs: Sequence[SystemRun]) -> set[tuple[str, int]]:
    return {(run.system, run.seed) for run in runs}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.search_quality",
        description="This project's studies against stock KerasTuner Hyperband, the "
        "KerasTuner engine's Hyperband, random search and a hand recipe, at stock KerasTuner's "
        "budget of epochs.",
    )
    parser.add_argument(
        "--task",
        choices=sorted(TASKS),
        default=DEFAULT_TASK,
        help="the generated task of bench.corpus (default: %(default)s)",
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
        help="run only these besides stock KerasTuner's Hyperband, e.g. 'hand recipe' (default: "
        f"all of {', '.join(SYSTEMS[1:])}; the shipped study, {SHIPPED!r}, always runs)",
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
    task = TASKS[args.task]
    mode = dataclasses.replace(mode, task=args.task, space=task.space_for(mode.space))
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

    name = results_name(mode, args.quick)
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
        run_seed(mode, seed, progress, done=kept, record=record)
    runs.sort(key=lambda run: (run.seed, SYSTEMS.index(run.system)))
    print(f"wrote {plot_anytime(runs, args.output / f'{name}.png')}")
    print("\n".join(table(runs)))
    print("\n".join(conclusion(runs, mode.task)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
