"""MLflow tracking of a study: one parent run per study, one child run per trial.

The experiment is the study name. A child run is created when its trial starts, so its
per-epoch metrics (step = global epoch) are visible while it trains; it ends FINISHED
(completed or pruned, with the state and reason as tags), FAILED (with the fail reason) or
KILLED (stopped by Ctrl-C), never left RUNNING. The parent run gets the study's plots
whenever the runner stops. Several coordinators of one study share the parent run: each looks
it up by tag (under the study lock), and the earliest one wins if two were ever created.

A confirmation (`search.runner.confirmation`: the best trials re-trained with other seeds) is
tracked inside the study it confirms: its runs are children of that study's parent run, with
the role `confirmation` instead of `trial`, and it leaves the parent's status, tags and plots
as they are.

The server must answer when the study starts; after that, every write goes through a
`SpooledWriter`, so an outage of the server keeps the writes in a spool instead of stopping
the study (`search.tracking.spool`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from search.tracking.spool import SpooledWriter, server_unreachable
from trainers.config.schema import TrainConfig
from trainers.tracking import NOT_METRICS, config_params, ensure_experiment, make_client

ROLE_TAG = "finetune_search.role"
#: The roles of child runs: a study's trials, or a confirmation's re-runs.
TRIAL_ROLE = "trial"
CONFIRMATION_ROLE = "confirmation"
STUDY_TAG = "optuna.study"
TRIAL_TAG = "optuna.trial_number"
STATE_TAG = "optuna.state"
PARENT_TAG = "mlflow.parentRunId"


class StudyTracker:
    """Talks to MLflow for one study; all methods are called by the coordinator only."""

    def __init__(
        self,
        tracking_uri: str,
        study_name: str,
        *,
        storage: str,
        spool: Path,
        warn: Callable[[str], None],
        confirmation: bool = False,
    ) -> None:
        # With a tracking server, MLflow prints a link for every run it closes; the runner's
        # output is one line per epoch and trial, and the README says where to look.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        # MLflow's REST client retries a lost server for minutes with backoff, holding up the
        # coordinator and every worker waiting on it; the spool retries instead.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        self.client = make_client(tracking_uri)
        self.tracking_uri = tracking_uri
        self.study_name = study_name
        self.warn = warn
        self.confirmation = confirmation
        self.role = CONFIRMATION_ROLE if confirmation else TRIAL_ROLE
        self.experiment_id = ensure_experiment(self.client, study_name)
        self.parent_run_id = self._parent_run(storage)
        self.writer = SpooledWriter(self.client, spool, tracking_uri=tracking_uri, warn=warn)

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
        if not self.confirmation:  # a confirmation leaves its study's run as it is
            self.client.update_run(chosen, status="RUNNING")
        return str(chosen)

    def start_trial(
        self, trial_number: int, params: Mapping[str, Any], config: TrainConfig | None
    ) -> str:
        run_id = self.writer.create_run(
            self.experiment_id,
            run_name=f"{self.role}-{trial_number:04d}",
            tags={
                PARENT_TAG: self.parent_run_id,
                ROLE_TAG: self.role,
                STUDY_TAG: self.study_name,
                TRIAL_TAG: str(trial_number),
                STATE_TAG: "RUNNING",
            },
        )
        sampled = {name: str(value) for name, value in params.items()}
        resolved = config_params(config) if config is not None else {}
        self.writer.log_batch(
            run_id, params={k: v[:6000] for k, v in {**sampled, **resolved}.items()}
        )
        return run_id

    def log_epoch(self, run_id: str, epoch: int, metrics: Mapping[str, float]) -> None:
        """One epoch's metrics at step = global epoch, so curves line up across phases."""
        now = _now_ms()
        self.writer.log_batch(
            run_id,
            metrics=[
                (key, float(value), now, epoch)
                for key, value in metrics.items()
                if key not in NOT_METRICS
            ],
        )

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
        now = _now_ms()
        self.writer.log_batch(
            run_id,
            tags={key: value[:5000] for key, value in {STATE_TAG: state, **tags}.items()},
            metrics=[(key, float(number), now, 0) for key, number in metrics.items()],
        )
        self.writer.log_artifacts(run_id, [path for path in files if path.is_file()])
        status = "KILLED" if killed else "FAILED" if state == "FAIL" else "FINISHED"
        self.writer.set_terminated(run_id, status=status)

    def finish_study(self, files: Sequence[Path], *, status: str, tags: Mapping[str, str]) -> None:
        if not self.confirmation:  # the study's summary is its own, not its confirmation's
            self.writer.log_batch(self.parent_run_id, tags=tags)
            self.writer.log_artifacts(self.parent_run_id, list(files))
            self.writer.set_terminated(self.parent_run_id, status=status)
        self.writer.close()

    def retry_spooled(self) -> None:
        """Replay writes kept during an outage, if it is time to try again."""
        self.writer.retry()

    def close_orphaned_runs(self, finished: Mapping[int, str]) -> None:
        """Close child runs left RUNNING for trials the storage knows are finished.

        That happens when a coordinator dies between telling Optuna and closing the run.
        """
        runs = self._search(
            f"tags.`{ROLE_TAG}` = '{self.role}' and attributes.status = 'RUNNING'",
            "runs left RUNNING by a dead coordinator stay open until a later start",
        )
        for run in runs or []:
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
        runs = self._search(
            f"tags.`{ROLE_TAG}` = '{self.role}' and tags.`{TRIAL_TAG}` = '{trial_number}'",
            f"trial {trial_number}'s run is closed by a later start",
        )
        if runs is None:
            return []
        if not runs:
            return [self.start_trial(trial_number, params, config=None)]
        return [run.info.run_id for run in runs if run.info.status == "RUNNING"]

    def _search(self, filter_string: str, consequence: str) -> list[Any] | None:
        """The study's runs matching `filter_string`; None while the server is away."""
        try:
            return list(self.client.search_runs([self.experiment_id], filter_string=filter_string))
        except Exception as error:
            if not server_unreachable(error):
                raise
            self.warn(f"warning: MLflow does not answer a search; {consequence}")
            return None


def _now_ms() -> int:
    return int(time.time() * 1000)
