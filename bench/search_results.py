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
