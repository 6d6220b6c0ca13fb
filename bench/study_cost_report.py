"""Comparing the two sides of `bench.study_cost`: the accuracy check, the table, the JSON.

Per config, both sides' best validation accuracies must agree within the noise of their
difference (`check_accuracy`); `table` prints where each side's time went, config by config,
with the study's own start and close and the sums; `to_json` is what the results file holds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.study_timeline import Breakdown, ConfigRun, StudyTimeline
from search.pruning.noise import Noise
from trainers.config.schema import TrainConfig

#: Standard errors of the difference two best validation accuracies may differ by.
ACCURACY_Z = 2.0


def describe(config: TrainConfig) -> str:
    """A config in one line: its epochs per phase, units unfrozen, fine-tune optimizer and batch."""
    epochs = "+".join(str(phase.epochs) for phase in config.phases)
    ft = config.phases[-1]
    bn = "bn frozen" if ft.freeze_batchnorm else "bn trains"
    return (
        f"{epochs} epochs, {config.unfrozen_units} units, {ft.optimizer} "
        f"{ft.learning_rate:.1e}, {bn}, batch {config.batch_size}"
    )


@dataclass(frozen=True)
class AccuracyCheck:
    script: float | None
    study: float | None
    tolerance: float

    @property
    def passed(self) -> bool:
        if self.script is None or self.study is None:
            return False
        return abs(self.script - self.study) <= self.tolerance


def check_accuracy(script: float | None, study: float | None, validation: int) -> AccuracyCheck:
    """Whether two best validation accuracies of one config agree within their noise."""
    if script is None or study is None:
        return AccuracyCheck(script, study, math.nan)
    return AccuracyCheck(script, study, Noise(validation, ACCURACY_Z).of_difference(script, study))


@dataclass
class Result:
    mode: str
    configs: list[TrainConfig]
    scripts: list[ConfigRun]
    study: list[ConfigRun]
    timeline: StudyTimeline
    validation_images: int
    checks: list[AccuracyCheck] = field(default_factory=list)

    @property
    def scripts_wall(self) -> float:
        return sum(run.breakdown.total for run in self.scripts)

    @property
    def ratio(self) -> float:
        return self.timeline.wall / self.scripts_wall


_COLUMNS = ("startup", "data", "build", "epochs", "other", "total")


def _cells(breakdown: Breakdown) -> str:
    return " ".join(f"{getattr(breakdown, name):>7.1f}" for name in _COLUMNS)


def accuracy_cell(value: float | None) -> str:
    return f"{value:>7.3f}" if value is not None else f"{'-':>7}"


def table(result: Result) -> list[str]:
    """Per config, both sides' breakdowns; the study's own start and close; the sums."""
    header = f"{'cfg':>3} {'side':<7} " + " ".join(f"{name:>7}" for name in _COLUMNS)
    lines = [f"{header} {'val_acc':>7}  notes"]
    for index, (config, script, trial) in enumerate(
        zip(result.configs, result.scripts, result.study, strict=True)
    ):
        lines.append(
            f"{index:>3} {'scripts':<7} {_cells(script.breakdown)} "
            f"{accuracy_cell(script.best_val_accuracy)}  {describe(config)}"
        )
        lines.append(
            f"{'':>3} {'study':<7} {_cells(trial.breakdown)} "
            f"{accuracy_cell(trial.best_val_accuracy)}  {trial.notes}"
        )
    timeline = result.timeline
    lines.append(
        f"study start (coordinator: imports, storage, MLflow, data check) {timeline.start:.1f}s, "
        f"study close (plots, MLflow) {timeline.close:.1f}s"
    )
    for side, runs, wall in (
        ("scripts", result.scripts, result.scripts_wall),
        ("study", result.study, timeline.wall),
    ):
        # The study's `other` also holds its start and close.
        summed = Breakdown(
            startup=sum(run.breakdown.startup for run in runs),
            data=sum(run.breakdown.data for run in runs),
            build=sum(run.breakdown.build for run in runs),
            epochs=sum(run.breakdown.epochs for run in runs),
            total=wall,
        )
        lines.append(f"{'all':>3} {side:<7} {_cells(summed)}")
    return lines


def accuracy_lines(result: Result) -> list[str]:
    lines = []
    for index, check in enumerate(result.checks):
        verdict = "ok" if check.passed else "MISMATCH"
        difference = (
            abs(check.script - check.study)
            if check.script is not None and check.study is not None
            else math.nan
        )
        lines.append(
            f"accuracy {index}: scripts {accuracy_cell(check.script).strip()} study "
            f"{accuracy_cell(check.study).strip()}, difference {difference:.3f} within "
            f"±{check.tolerance:.3f} ({ACCURACY_Z:g} standard errors on "
            f"{result.validation_images} images): {verdict}"
        )
    return lines


def to_json(result: Result, extra: Mapping[str, Any]) -> dict[str, Any]:
    def run(item: ConfigRun) -> dict[str, Any]:
        return {
            **dataclasses.asdict(item.breakdown),
            "other": item.breakdown.other,
            "epoch_seconds": list(item.epoch_seconds),
            "best_val_accuracy": item.best_val_accuracy,
            "notes": item.notes,
        }

    return {
        **extra,
        "mode": result.mode,
        "validation_images": result.validation_images,
        "configs": [config.to_dict() for config in result.configs],
        "scripts": [run(item) for item in result.scripts],
        "study": [run(item) for item in result.study],
        "study_start": result.timeline.start,
        "study_close": result.timeline.close,
        "standby_startups": result.timeline.standby_startups(),
        "scripts_wall": result.scripts_wall,
        "study_wall": result.timeline.wall,
        "accuracy": [
            {**dataclasses.asdict(check), "passed": check.passed} for check in result.checks
        ],
        "ratio": result.ratio,
    }
