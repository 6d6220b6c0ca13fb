"""Studies of the tiny space run in-process by a real coordinator with scripted workers.

`TinyStudy` runs `search.runner.coordinator.run_study` on a real SQLite study and a real MLflow
store, with workers spawned as in production; only what the worker does is scripted
(`tests/search/scripted_worker.py`): the scripts below are healthy, collapsing, NaN, crashing
and slow. Shared by test_coordinator.py (how trials end) and test_coordinator_study.py (the
study around its trials); their fixtures are in this folder's conftest.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from mlflow import MlflowClient
from mlflow.entities import Run
from optuna.trial import FrozenTrial

from search.reporting.console import StudySummary
from search.runner.coordinator import run_study
from search.study.registry import EnqueuedTrial, StudySpec
from tests.search.scripted_worker import Script, ScriptedWorker
from tests.search.tiny_study import enqueued, settings, tiny_spec

HEALTHY = Script(accuracies=(0.5, 0.7, 0.8))
HEALTHY_WORKER = ScriptedWorker(default=HEALTHY)
# The seed guide's LR 1e-2 curve (120 classes) with a rising training loss: a collapse.
COLLAPSING = Script(
    accuracies=(0.4310, 0.2444, 0.1594, 0.1439),
    losses=(2.9, 3.3, 3.7, 3.8),
    num_classes=120,
    validation_images=2400,
)
# A fall from just above chance (10 classes, 2,000 images): a collapse before any good epoch.
FALLS_NEAR_CHANCE = Script(
    accuracies=(0.15, 0.11, 0.10, 0.10),
    losses=(2.2, 2.3, 2.4, 2.4),
    num_classes=10,
    validation_images=2000,
)
# At chance on 2,000 images: measurably inside the band above chance (below 28.75%).
AT_CHANCE = Script(accuracies=(0.25, 0.25, 0.25), validation_images=2000)
NAN_AT_2 = Script(accuracies=(0.5, math.nan, 0.8))
# A two-phase trial whose fine-tuning loses a third of what the head learned (not a wreck) and
# does not recover within the shock rule's patience (one epoch).
UNFREEZE_SHOCK = Script(accuracies=(0.8, 0.85, 0.86, 0.6, 0.62, 0.7), phases=(1, 1, 1, 2, 2, 2))
DIES_AT_1 = Script(die_after=1)
SLOW = Script(accuracies=(0.5, 0.6, 0.7), seconds_per_epoch=1.0)


@dataclass
class Outcome:
    """What a study left behind: its summary, printed lines, trials and MLflow runs."""

    summary: StudySummary
    lines: list[str]
    study: optuna.Study
    runs: dict[int, list[Run]]
    parent: Run

    def trial(self, number: int) -> FrozenTrial:
        return next(t for t in self.study.get_trials() if t.number == number)

    def run(self, number: int) -> Run:
        (only,) = self.runs[number]
        return only


def study_runs(tracking_uri: str, name: str) -> tuple[dict[int, list[Run]], Run]:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    runs: dict[int, list[Run]] = {}
    parents = []
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        if run.data.tags["finetune_search.role"] == "study":
            parents.append(run)
        else:
            runs.setdefault(int(run.data.tags["optuna.trial_number"]), []).append(run)
    (parent,) = parents
    return runs, parent


class TinyStudy:
    """Runs studies of the tiny space with scripted workers in one test's folder."""

    def __init__(self, folder: Path, tracking_uri: str, name: str) -> None:
        self.folder = folder
        self.tracking_uri = tracking_uri
        self.name = name
        self.storage = f"sqlite:///{folder / 'optuna.db'}"

    def spec(self, *first: EnqueuedTrial, **changes: Any) -> StudySpec:
        return replace(tiny_spec(self.name, *first), **changes)

    def run(
        self,
        scripts: dict[int, Script],
        *first: EnqueuedTrial,
        n_trials: int,
        spec: StudySpec | None = None,
        log: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> Outcome:
        lines: list[str] = []

        def record(line: str) -> None:
            lines.append(line)
            if log is not None:
                log(line)

        summary = run_study(
            spec or self.spec(*first),
            settings(self.folder, n_trials, tracking_uri=self.tracking_uri, **overrides),
            log=record,
            worker=ScriptedWorker(scripts, default=HEALTHY),
        )
        return self.outcome(summary, lines)

    def outcome(self, summary: StudySummary, lines: list[str]) -> Outcome:
        study = optuna.load_study(study_name=self.name, storage=self.storage)
        runs, parent = study_runs(self.tracking_uri, self.name)
        return Outcome(summary, lines, study, runs, parent)


PRETRAINED_HEAD_ONLY = enqueued("head_only", "pretrained", 0)
PRETRAINED_FINE_TUNE = enqueued("fine_tune", "pretrained", 1)


def finished_line(outcome: Outcome, number: int) -> str:
    """The line the coordinator printed when trial `number` ended."""
    return next(
        line
        for line in outcome.lines
        if line.startswith(f"trial {number:>3} ") and " best " in line
    )
