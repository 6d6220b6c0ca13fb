"""MLflow tracking of a study: one parent run per study, one child run per trial.

The experiment is the study name. A child run is created when its trial starts, so its
per-epoch metrics (step = global epoch) are visible while it trains; it ends FINISHED
(completed or pruned, with the state and reason as tags), FAILED (with the fail reason) or
KILLED (stopped by Ctrl-C), never left RUNNING. The parent run gets the study's plots
whenever the runner stops. Several coordinators of one study share the parent run: each looks
it up by tag (under the study lock), and the earliest one wins if two were ever created.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainers.config import TrainConfig
from trainers.tracking import (
    config_params,
    ensure_experiment,
    log_epoch,
    log_files,
    log_params,
    make_client,
)

ROLE_TAG = "finetune_search.role"
STUDY_TAG = "optuna.study"
TRIAL_TAG = "optuna.trial_number"
STATE_TAG = "optuna.state"
PARENT_TAG = "mlflow.parentRunId"


class StudyTracker:
    """Talks to MLflow for one study; all methods are called by the coordinator only."""

    def __init__(self, tracking_uri: str, study_name: str, *, storage: str) -> None:
        # With a tracking server, MLflow prints a link for every run it closes; the runner's
        # output is one line per epoch and trial, and the README says where to look.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.client = make_client(tracking_uri)
        self.tracking_uri = tracking_uri
        self.study_name = study_name
        self.experiment_id = ensure_experiment(self.client, study_name)
        self.parent_run_id = self._parent_run(storage)

    def _study_runs(self) -> list[Any]:
        return list(
            self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{ROLE_TAG}` = 'study'",
                order_by=["attributes.start_time ASC"],
            )
        )

    def _parent_run(self, storage: str) -> str:
        existing = self._study_runs()
        if not existing:
            created = self.client.create_run(
                self.experiment_id,
                run_name=f"{self.study_name} (study)",
                tags={ROLE_TAG: "study", STUDY_TAG: self.study_name, "optuna.storage": storage},
            ).info.run_id
            existing = self._study_runs()
            chosen = existing[0].info.run_id
            if created != chosen:
                # Another coordinator created the parent first; keep one parent run only.
                self.client.delete_run(created)
        chosen = existing[0].info.run_id
        self.client.update_run(chosen, status="RUNNING")
        return str(chosen)

    def start_trial(
        self, trial_number: int, params: Mapping[str, Any], config: TrainConfig | None
    ) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{trial_number:04d}",
            tags={
                PARENT_TAG: self.parent_run_id,
                ROLE_TAG: "trial",
                STUDY_TAG: self.study_name,
                TRIAL_TAG: str(trial_number),
                STATE_TAG: "RUNNING",
            },
        )
        run_id = str(run.info.run_id)
        sampled = {name: str(value) for name, value in params.items()}
        resolved = config_params(config) if config is not None else {}
        log_params(self.client, run_id, {**sampled, **resolved})
        return run_id

    def log_epoch(self, run_id: str, epoch: int, metrics: Mapping[str, float]) -> None:
        log_epoch(self.client, run_id, epoch, metrics)

    def finish_trial(
        self,
        run_id: str,
        *,
        state: str,
        tags: Mapping[str, str],
        metrics: Mapping[str, float],
        files: Sequence[Path],
        killed: bool = False,
    ) -> None:
        for key, value in {STATE_TAG: state, **tags}.items():
            self.client.set_tag(run_id, key, value[:5000])
        now = int(time.time() * 1000)
        for key, number in metrics.items():
            self.client.log_metric(run_id, key, number, timestamp=now)
        log_files(self.client, run_id, [path for path in files if path.is_file()])
        status = "KILLED" if killed else "FAILED" if state == "FAIL" else "FINISHED"
        self.client.set_terminated(run_id, status=status)

    def finish_study(self, files: Sequence[Path], *, status: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.parent_run_id, key, value)
        log_files(self.client, self.parent_run_id, list(files))
        self.client.set_terminated(self.parent_run_id, status=status)

    def close_orphaned_runs(self, finished: Mapping[int, str]) -> None:
        """Close child runs left RUNNING for trials the storage knows are finished.

        That happens when a coordinator dies between telling Optuna and closing the run.
        """
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = 'trial' and attributes.status = 'RUNNING'",
        )
        for run in runs:
            number = int(run.data.tags.get(TRIAL_TAG, -1))
            if number in finished:
                state = finished[number]
                self.client.set_tag(run.info.run_id, STATE_TAG, state)
                self.client.set_terminated(
                    run.info.run_id, status="FAILED" if state == "FAIL" else "FINISHED"
                )

    def runs_to_close(self, trial_number: int, params: Mapping[str, Any]) -> list[str]:
        """The trial's runs still RUNNING, or a new run if it has none at all (its coordinator
        died before creating it, or it never reached a worker), so that every trial ends with
        exactly one closed run."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = 'trial' and tags.`{TRIAL_TAG}` = '{trial_number}'",
        )
        if not runs:
            return [self.start_trial(trial_number, params, config=None)]
        return [run.info.run_id for run in runs if run.info.status == "RUNNING"]
