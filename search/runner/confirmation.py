"""Confirming the winner before export: the best trials re-trained with other seeds.

On a few hundred validation images the top trials are often within noise of each other, and
the best single value is optimistic (it was picked as the maximum of many). `python -m
search.export --confirm K` re-trains the configs of the study's K best completed trials with
N other seeds each (`--confirm-seeds`, the trial's seed + 1 .. + N), picks the trial with the
best mean of those re-runs (the original value, the one it was picked for, is left out), and
writes the mean, its standard error and the re-runs' MLflow ids into the exported config.

The re-runs are a study of their own, `<study>.confirm`, in the same storage, run by the same
coordinator as any study: each is an enqueued config (trial attribute `enqueued`, `trial 7 seed
1`), run exactly, with no Optuna pruner (`none`; the collapse rules still stop a run that
falls), in worker processes, with retries and heartbeats. So an interrupted confirmation
resumes where it stopped when the same command runs again, and nothing is trained twice. Their
MLflow runs are children of the confirmed study's parent run, with the role `confirmation`
(`search.tracking.runs`).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.engines.oracle_results import best_reported
from search.pruning.decision import NO_PRUNER
from search.runner.active_trial import WorkerEntry
from search.runner.coordinator import run_study
from search.runner.worker import run_worker
from search.study.registry import EnqueuedTrial, StudySpec
from search.study.setup import RunSettings
from search.vocabulary import StudyAttr, TrialAttr
from trainers.config.schema import Confirmation, TrainConfig

#: The confirmation study's name is the confirmed study's and this.
SUFFIX = ".confirm"
#: How a re-run is labelled (trial attribute `enqueued`), and read back.
_LABEL = "trial {number} seed {seed}"
_LABEL_PATTERN = re.compile(r"^trial (\d+) seed (-?\d+)$")


class ConfirmationError(Exception):
    """Nothing to confirm (no completed trial with a recorded config); one line."""


@dataclass(frozen=True)
class Confirmed:
    """One candidate trial and what its re-runs reached."""

    number: int
    value: float
    seeds: tuple[int, ...]
    values: tuple[float, ...]
    mlflow_runs: tuple[str, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def stderr(self) -> float:
        """The standard error of the mean (0 with fewer than two re-runs)."""
        if len(self.values) < 2:
            return 0.0
        return statistics.stdev(self.values) / math.sqrt(len(self.values))

    def describe(self) -> str:
        seeds = ", ".join(str(seed) for seed in self.seeds)
        values = ", ".join(f"{value:.4f}" for value in self.values)
        return (
            f"trial {self.number}: {self.value:.4f} in the study; seeds {seeds}: {values}; "
            f"mean {self.mean:.4f} ± {self.stderr:.4f}"
        )

    def confirmation(self, candidates: int) -> Confirmation:
        return Confirmation(
            candidates=candidates,
            seeds=self.seeds,
            values=self.values,
            mean=round(self.mean, 6),
            stderr=round(self.stderr, 6),
            mlflow_runs=self.mlflow_runs,
        )


def top_trials(study: optuna.Study, count: int) -> list[FrozenTrial]:
    """The `count` best completed trials that recorded their config, best first."""
    completed = [
        trial
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if TrialAttr.CONFIG_YAML in trial.user_attrs and trial.value is not None
    ]
    if not completed:
        raise ConfirmationError(f"study {study.study_name!r} has no completed trial to confirm")
    return sorted(completed, key=lambda trial: -(trial.value or 0.0))[:count]


def confirmation_spec(spec: StudySpec, candidates: list[FrozenTrial], seeds: int) -> StudySpec:
    """The study of the re-runs: each candidate's config with each of `seeds` other seeds."""
    reruns = []
    for trial in candidates:
        config = TrainConfig.from_yaml(trial.user_attrs[TrialAttr.CONFIG_YAML])
        for offset in range(1, seeds + 1):
            seed = config.seed + offset
            label = _LABEL.format(number=trial.number, seed=seed)
            reruns.append(EnqueuedTrial(label, {}, config.model_copy(update={"seed": seed})))
    return replace(
        spec,
        name=f"{spec.name}{SUFFIX}",
        description=f"re-runs of the best trials of {spec.name} with other seeds",
        n_trials=len(reruns),
        enqueued=tuple(reruns),
        pruner=NO_PRUNER,
        confirms=spec.name,
    )


def confirm(
    spec: StudySpec,
    *,
    candidates: int,
    seeds: int,
    storage: str,
    tracking_uri: str,
    output_dir: Path,
    workers: int = 1,
    log: Callable[[str], None] = print,
    worker: WorkerEntry = run_worker,
    heartbeat_interval: int = 10,
    grace_period: int = 60,
) -> list[Confirmed]:
    """Re-train the study's `candidates` best trials with `seeds` other seeds each (or finish
    doing so), and return them, the best mean first."""
    study = optuna.load_study(study_name=spec.name, storage=storage)
    best = top_trials(study, candidates)
    data_source = str(study.user_attrs.get(StudyAttr.DATA_SOURCE, spec.default_data))
    settings = RunSettings(
        n_trials=len(best) * seeds,
        storage=storage,
        data_source=data_source,
        tracking_uri=tracking_uri,
        output_dir=output_dir,
        workers=workers,
        # A re-run whose coordinator died is failed and run again after `grace_period`.
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
    )
    run_study(confirmation_spec(spec, best, seeds), settings, log=log, worker=worker)
    reruns = optuna.load_study(study_name=f"{spec.name}{SUFFIX}", storage=storage)
    confirmed = [_confirmed(trial, reruns.get_trials(deepcopy=False)) for trial in best]
    # By mean; between equal means, the better study value.
    return sorted(confirmed, key=lambda c: (-c.mean, -c.value))


def _confirmed(trial: FrozenTrial, reruns: list[FrozenTrial]) -> Confirmed:
    """What `trial`'s re-runs reached: each counted once, by its best epoch (a run the
    collapse rules pruned by the best it reported; a failed one not at all)."""
    found: dict[int, tuple[float, str]] = {}
    for rerun in reruns:
        match = _LABEL_PATTERN.match(str(rerun.user_attrs.get(TrialAttr.ENQUEUED, "")))
        if match is None or int(match.group(1)) != trial.number:
            continue
        value = rerun.value if rerun.state == TrialState.COMPLETE else best_reported(rerun)
        if rerun.state not in (TrialState.COMPLETE, TrialState.PRUNED) or value is None:
            continue
        found[int(match.group(2))] = (value, str(rerun.user_attrs.get(TrialAttr.MLFLOW_RUN_ID)))
    seeds = tuple(sorted(found))
    return Confirmed(
        number=trial.number,
        value=float(trial.value or 0.0),
        seeds=seeds,
        values=tuple(found[seed][0] for seed in seeds),
        mlflow_runs=tuple(found[seed][1] for seed in seeds),
    )
