"""What `bench.search_quality` measures: the systems' names, their trials, and the tables.

A system's result at a budget is what it would export: its best counted trial among those
finished within that many epochs (a pruned trial's value never counts).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from search.pruning.decision import PRUNERS
from search.study.registry import get_study_spec

#: Stock KerasTuner `Hyperband` (`bench.keras_tuner_stock`): the headline peer, whose epochs
#: are every other system's budget.
KERAS_TUNER = "keras-tuner hyperband"
#: The project's KerasTuner engine with its Hyperband oracle (`bench.keras_tuner_hyperband`):
#: an extra row, at its own one-iteration schedule.
KERAS_TUNER_ENGINE = "keras-tuner engine hyperband"
RANDOM = "random search"
RECIPE = "hand recipe"
STUDY_PREFIX = "study + "
#: The pruner the demo study ships with: the study whose figure ends the benchmark, run as
#: users get it, the shipped portfolio of recipes first.
SHIPPED = f"{STUDY_PREFIX}{get_study_spec('demo').pruner}"
#: The shipped study without the portfolio: the study as it was before it, its own recipes
#: first.
NO_PORTFOLIO_SUFFIX = ", no portfolio"
NO_PORTFOLIO = f"{SHIPPED}{NO_PORTFOLIO_SUFFIX}"
#: The shipped study without any enqueued trial, its recipes or the portfolio: what the search
#: itself finds.
NO_RECIPE_SUFFIX = ", no recipe"
NO_RECIPE = f"{SHIPPED}{NO_RECIPE_SUFFIX}"
#: Stock KerasTuner first: its epochs set the budget of every system after it.
SYSTEMS = (
    KERAS_TUNER,
    *(f"{STUDY_PREFIX}{name}" for name in PRUNERS),
    NO_PORTFOLIO,
    NO_RECIPE,
    KERAS_TUNER_ENGINE,
    RANDOM,
    RECIPE,
)
#: The share of stock KerasTuner's epochs at which the anytime column reads each system's best.
ANYTIME_SHARE = 0.25


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


def _mean_spread(values: Sequence[float], digits: int = 3) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def anytime_epochs(budget: int) -> int:
    """The epochs of the anytime column: `ANYTIME_SHARE` of `budget`, rounded down."""
    return math.floor(budget * ANYTIME_SHARE)


def _budgets(runs: Sequence[SystemRun]) -> dict[int, int]:
    """Stock KerasTuner's epochs per seed: every other system's budget."""
    return {run.seed: run.epochs for run in runs if run.system == KERAS_TUNER}


def table(runs: Sequence[SystemRun]) -> list[str]:
    """Per system and seed, then mean ± standard deviation over seeds, per system: the best at
    `ANYTIME_SHARE` of the budget and at the budget, the final best, epochs and seconds."""
    budgets = _budgets(runs)
    early = f"best at {ANYTIME_SHARE:.0%}"
    lines = [
        f"{'system':<28} {'seed':>4} {early:>11} {'best at budget':>14} {'final best':>10} "
        f"{'epochs':>6} {'seconds':>7} {'trials':>6}"
    ]
    for run in runs:
        budget = budgets[run.seed]
        lines.append(
            f"{run.system:<28} {run.seed:>4} {run.best_within(anytime_epochs(budget)):>11.3f} "
            f"{run.best_within(budget):>14.3f} {run.best:>10.3f} "
            f"{run.epochs:>6} {run.seconds:>7.0f} {len(run.trials):>6}"
        )
    lines.append(
        f"{'system':<28} {'seeds':>5} {early:>14} {'best at budget':>16} {'final best':>16} "
        f"{'epochs':>14} {'seconds':>14}"
    )
    for system in dict.fromkeys(run.system for run in runs):
        mine = [run for run in runs if run.system == system]
        lines.append(
            f"{system:<28} {len(mine):>5} "
            f"{_mean_spread([r.best_within(anytime_epochs(budgets[r.seed])) for r in mine]):>14} "
            f"{_mean_spread([r.best_within(budgets[r.seed]) for r in mine]):>16} "
            f"{_mean_spread([r.best for r in mine]):>16} "
            f"{_mean_spread([float(r.epochs) for r in mine], digits=0):>14} "
            f"{_mean_spread([r.seconds for r in mine], digits=0):>14}"
        )
    return lines


def reach_ratios(runs: Sequence[SystemRun], system: str) -> list[float]:
    """Per seed: epochs `system` took to reach stock KerasTuner's final best, as a share of
    KerasTuner's epochs (infinite when it never did)."""
    keras_tuner = {run.seed: run for run in runs if run.system == KERAS_TUNER}
    ratios = []
    for mine in (run for run in runs if run.system == system and run.seed in keras_tuner):
        theirs = keras_tuner[mine.seed]
        epochs = mine.epochs_to_reach(theirs.best)
        ratios.append(math.inf if epochs is None else epochs / theirs.epochs)
    return ratios


def early_bests(runs: Sequence[SystemRun], system: str) -> list[float]:
    """Per seed: `system`'s best at `ANYTIME_SHARE` of stock KerasTuner's epochs."""
    budgets = _budgets(runs)
    return [
        run.best_within(anytime_epochs(budgets[run.seed])) for run in runs if run.system == system
    ]


def last_line(runs: Sequence[SystemRun], task: str, headline: str = SHIPPED) -> str:
    """The benchmark's figure: epochs `headline` took to reach stock KerasTuner's final best
    (median over seeds, as a share of KerasTuner's epochs), and both systems' median best at
    `ANYTIME_SHARE` of KerasTuner's epochs."""
    ratios = reach_ratios(runs, headline)
    median = statistics.median(ratios)
    reached = "not reached" if math.isinf(median) else f"{median:.0%}"
    mine = statistics.median(early_bests(runs, headline))
    theirs = statistics.median(early_bests(runs, KERAS_TUNER))
    return (
        f"epochs to reach KerasTuner Hyperband's best: {reached} (median of {len(ratios)} "
        f"seeds, {task}); best at {ANYTIME_SHARE:.0%} of its budget: {mine:.3f} vs {theirs:.3f}"
    )


def conclusion(runs: Sequence[SystemRun], task: str, headline: str = SHIPPED) -> list[str]:
    """A line per project study and the engine's Hyperband, then `last_line` for `headline`
    (the demo study as it ships)."""
    lines = []
    for system in dict.fromkeys(run.system for run in runs):
        if system.startswith(STUDY_PREFIX) or system == KERAS_TUNER_ENGINE:
            ratios = reach_ratios(runs, system)
            shown = ", ".join("not reached" if math.isinf(r) else f"{r:.0%}" for r in ratios)
            lines.append(f"{system}: epochs to reach KerasTuner Hyperband's best: {shown}")
    if any(run.system == headline for run in runs):
        lines.append(last_line(runs, task, headline))
    return lines


def save(runs: Sequence[SystemRun], fingerprint: str, path: Path) -> Path:
    payload = {
        "mode": fingerprint,
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


def load(fingerprint: str, path: Path) -> list[SystemRun]:
    """The runs saved at `path` under the same `fingerprint` (space and budget); none if it is
    another's."""
    if not path.exists():
        return []
    payload = json.loads(path.read_text())
    if payload.get("mode") != fingerprint:
        return []
    return [
        SystemRun(
            item["system"],
            int(item["seed"]),
            tuple(SearchTrial(**trial) for trial in item["trials"]),
        )
        for item in payload["runs"]
    ]
