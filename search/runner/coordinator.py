"""The coordinator: asks its engine for trials, runs each in a spawned worker, tells the results.

For each trial: the engine's `ask` (within the shared budget): `study.ask()` and the space's
TrainConfig, or a KerasTuner oracle's trial recorded as an Optuna trial (`search.engines`). A
worker process trains it and reports every epoch; the coordinator logs the epoch to MLflow and
answers continue or stop by the per-epoch decision (`search.runner.messages`,
`search.pruning.decision`: the collapse rules, then the study's Optuna pruner). When the worker
ends, the trial is closed (`search.trial.closing`): told COMPLETE (best validation accuracy over all
epochs), PRUNED or FAIL with its reason, re-run as the retry policy (or the engine) says, and
its MLflow run closed with the same state. This process never imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import time
from dataclasses import replace

import optuna
from optuna.trial import TrialState

from search.engines.base import WAIT, Proposal, Wait
from search.engines.factory import make_engine
from search.reporting.console import (
    Log,
    StudySummary,
    finish_study,
    started_line,
    study_line,
)
from search.runner.active_trial import (
    ActiveTrial,
    WorkerEntry,
    final_verdict,
    spawn_worker,
    wait_for_workers,
)
from search.runner.liveness import Liveness
from search.runner.messages import TrialMessages
from search.runner.prewarm import Standbys
from search.runner.protocol import WorkerRequest
from search.runner.signals import StopSignals
from search.runner.worker import run_worker
from search.storage.lock import StudyLock
from search.storage.retry import StorageLostError, StorageRetry
from search.storage.urls import redact
from search.study.budget import Limit, budget
from search.study.registry import StudySpec
from search.study.setup import RunSettings, open_study
from search.tracking.runs import StudyTracker
from search.tracking.spool import spool_path
from search.trial.closing import TrialCloser, Verdict
from search.trial.files import BEST_WEIGHTS, trial_folder
from search.trial.retry import StudyStoppedError
from search.vocabulary import Reason, TrialAttr
from trainers.errors import TrainerInputError


def _print(message: str) -> None:
    print(message, flush=True)


class Coordinator:
    """Runs one study until its target number of trials has used the budget."""

    def __init__(
        self,
        spec: StudySpec,
        settings: RunSettings,
        *,
        log: Log = _print,
        worker: WorkerEntry = run_worker,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.log = log
        self.worker = worker
        self.storage_label = redact(settings.storage)
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.storage_retry = StorageRetry(settings.storage, settings.storage_retry_s, warn=log)
        self.lock = StudyLock(settings.storage, spec.name, retry=self.storage_retry)
        self.engine = make_engine(spec, settings, identity=self.identity, log=log)
        try:
            # Several coordinators may start together on a fresh database: Optuna's table
            # creation, the study, its enqueued trials and the MLflow parent run are made by
            # one at a time.
            with self.lock.held():
                self.study, self.storage = open_study(
                    spec,
                    settings,
                    identity=self.identity,
                    engine=self.engine,
                    retry=self.storage_retry,
                )
                # After the checks above, so that a refused command leaves no run RUNNING.
                self.tracker = StudyTracker(
                    settings.tracking_uri,
                    spec.confirms or spec.name,
                    confirmation=spec.confirms is not None,
                    storage=self.storage_label,
                    spool=spool_path(settings.output_dir),
                    warn=log,
                )
        except BaseException:
            self.engine.close()
            raise
        self.started_at = time.monotonic()
        self.limits = settings.limits
        self.closer = TrialCloser(
            self.study,
            self.tracker,
            settings.retry,
            limits=self.limits,
            log=log,
            started_at=self.started_at,
            study_requeues=self.engine.study_requeues,
            told=self.engine.told,
        )
        self.liveness = Liveness(
            self.storage,
            self.lock,
            heartbeat_interval=settings.heartbeat_interval,
            grace_period=settings.grace_period,
            on_stale=self.closer.close_stale,
            needs_rerun=self.closer.needs_rerun,
        )
        self.context = multiprocessing.get_context("spawn")
        self.standbys = Standbys(
            self.context, worker, os.getpid(), settings.output_dir, enabled=settings.prewarm
        )
        self.active: dict[int, ActiveTrial] = {}
        self.messages = TrialMessages(self.tracker, spec.rules, log)
        # While the database is away, the storage retry lets the workers be answered.
        self.storage_retry.while_waiting = lambda: self.messages.serve_during_outage(
            list(self.active.values())
        )
        self.stop_signals = StopSignals()

    # -- budget and trial start ---------------------------------------------------------------

    def _timed_out(self) -> bool:
        timeout = self.settings.timeout
        return timeout is not None and time.monotonic() - self.started_at >= timeout

    def _ask_within_budget(self) -> Proposal | Wait | None:
        """A new trial and its config (or why the space could not make one) if the study's
        budget still has room, counting every coordinator; WAIT if the engine has none until
        a running trial ends."""
        if self._timed_out():
            return None
        with self.lock.held():
            if budget(self.study, self.limits).exhausted() is not None:
                return None
            proposal = self.engine.ask(self.study)
            if proposal is None or proposal == WAIT:
                return proposal
            assert isinstance(proposal, Proposal)
            self.liveness.claim(proposal.trial, self.identity)
            if not isinstance(proposal.config, TrainerInputError):
                # Still under the lock: a peer that counts the budget next sees the epochs
                # this trial may train.
                planned = proposal.window.epochs_of(proposal.config)
                proposal.trial.set_user_attr(TrialAttr.EPOCHS_PLANNED, planned)
        return proposal

    def _start_trial(self, slot: int) -> bool | Wait:
        """Start a trial in `slot`; False when the budget (or the timeout, or the engine)
        allows no more, WAIT when the engine has none until a running trial ends."""
        proposal = self._ask_within_budget()
        if proposal is None or proposal == WAIT:
            return False if proposal is None else WAIT
        assert isinstance(proposal, Proposal)
        trial, config, window = proposal.trial, proposal.config, proposal.window
        if isinstance(config, TrainerInputError):
            # The space produced an invalid config: a bug in the space, not bad luck.
            self.liveness.release(trial)
            self.closer.close_invalid(trial, config)
            return True
        if proposal.inherited is not None:
            # A Hyperband continuation of a trial that trained its whole config: its result.
            self.liveness.release(trial)
            trial.set_user_attr(TrialAttr.CONFIG_YAML, config.to_yaml())
            self.closer.close_inherited(trial, proposal.inherited, proposal.inherited_best)
            return True
        folder = trial_folder(self.settings.output_dir, trial.number)
        folder.mkdir(parents=True, exist_ok=True)
        config_yaml = config.to_yaml()
        trial.set_user_attr(TrialAttr.CONFIG_YAML, config_yaml)
        run_id = self.tracker.start_trial(trial.number, trial.params, config)
        trial.set_user_attr(TrialAttr.MLFLOW_RUN_ID, run_id)
        environments = self.settings.worker_environments
        environment = environments[slot] if slot < len(environments) else {}
        request = WorkerRequest(
            trial_number=trial.number,
            config_yaml=config_yaml,
            log_path=str(folder / "worker.log"),
            environment=environment,
            cache_dir=None if self.settings.cache_dir is None else str(self.settings.cache_dir),
            cache_budget_bytes=self.settings.cache_budget_bytes,
            window=window,
            save_weights=str(folder / BEST_WEIGHTS) if proposal.save_weights else None,
        )
        warm = self.standbys.hand_over(request)
        process, connection = warm or spawn_worker(self.context, request, os.getpid(), self.worker)
        if budget(self.study, self.limits).exhausted() is None:
            # Another trial may follow: its process starts up while this one trains.
            self.standbys.prepare(slot, environment)
        self.active[trial.number] = ActiveTrial(
            trial, config, process, connection, run_id, folder, slot
        )
        self.log(started_line(trial.number, slot, trial.params, trial.user_attrs, window))
        return True

    def _is_running(self, trial: optuna.Trial) -> bool:
        """Whether the stored trial is still RUNNING (no peer failed it as stale)."""
        return self.storage.get_trial(trial._trial_id).state == TrialState.RUNNING

    # -- the end of a trial ---------------------------------------------------------------------

    def _finalize(self, active: ActiveTrial) -> None:
        self.messages.catch_up(active)
        if active.process.is_alive():
            active.process.kill()
        active.process.join(timeout=30)
        active.connection.close()
        trial = active.trial
        del self.active[trial.number]
        ending = active.ending(final_verdict(active, self.spec.objective))
        taken_over, retried = False, False
        try:
            # The trial keeps its heartbeat until it is told, so that no peer takes it for dead
            # while its files are written.
            config_yaml = active.worker_config_yaml or active.config.to_yaml()
            title = f"{self.spec.name} trial {trial.number}"
            ending = self.closer.with_files(
                ending, active.folder, config_yaml, active.history, title
            )
            ending = replace(ending, seconds=time.monotonic() - active.started)
            # Under the lock, which every stale sweep holds: a trial still RUNNING here cannot
            # be failed by a peer before it is told, nor its run closed twice at once.
            with self.lock.held():
                taken_over = active.taken_over or not self._is_running(trial)
                if taken_over:
                    # A peer failed it as stale and queued its re-run: this copy is dropped,
                    # never told twice; its run is shared with the peer's sweep, so it is
                    # closed under the lock too.
                    dropped = Verdict(TrialState.FAIL, Reason.TAKEN_OVER, "taken over by a peer")
                    self.closer.close(None, replace(ending, verdict=dropped))
                else:
                    retried = self.closer.record(trial, ending)
        finally:
            self.liveness.release(trial)
        if not taken_over:
            self.closer.publish(ending, retried=retried)

    # -- the loop -------------------------------------------------------------------------------

    def _free_slots(self) -> list[int]:
        busy = {active.slot for active in self.active.values()}
        return [slot for slot in range(self.settings.workers) if slot not in busy]

    def _pump(self, timeout: float) -> None:
        """Handle whatever the workers sent, and finalize the ones that ended."""
        if self.active:
            wait_for_workers(self.active.values(), self.stop_signals.wakeup_fd, timeout)
            self.stop_signals.clear_wakeups()
        for active in list(self.active.values()):
            alive = active.process.is_alive()
            # After an exit, drain what the worker sent before it, then close the trial.
            self._drain(active)
            if not alive:
                if self.stop_signals.requested and active.outcome is None:
                    # Killed with us by a signal to the process group: not the trial's fault.
                    active.forced_reason = Reason.INTERRUPTED
                self._finalize(active)

    def _drain(self, active: ActiveTrial) -> None:
        while active.held:  # read while the storage was away
            self.messages.handle(active, active.held.pop(0))
        for message in active.received():
            self.messages.handle(active, message)

    def _others_running(self) -> bool:
        """Whether to wait for other coordinators' trials: they run, and when they end the
        budget may have room again."""
        status = budget(self.study, self.limits)
        return status.running > 0 and status.spent() is None and not self._timed_out()

    def run(self) -> StudySummary:
        spent = budget(self.study, self.limits)
        tracking = redact(self.settings.tracking_uri)
        self.log(
            study_line(self.spec.name, spent, self.storage_label, tracking, self.settings.workers)
        )
        finished = {
            t.number: t.state.name for t in self.study.get_trials() if t.state.is_finished()
        }
        try:
            # Under the lock, as every write several coordinators may make to the same run:
            # MLflow's SQL store rejects two concurrent first writes of one tag.
            with self.lock.held():
                self.tracker.close_orphaned_runs(finished)
            self._run_trials()
            return self._finish(status="FINISHED")
        finally:
            self.standbys.close()
            self.liveness.close()
            self.lock.close()
            self.engine.close()

    def _run_trials(self) -> None:
        """Start, watch and finish trials until the budget is used; on Ctrl-C or a failure
        streak, stop the running trials so that the stores stay consistent."""
        # The signals stay caught until the running trials are stopped too: a Ctrl-C (or
        # SIGTERM) during that clean-up only sets the flag again.
        with self.stop_signals:
            try:
                self._loop()
            except KeyboardInterrupt:
                self._stop_workers()
                self._finish(status="KILLED")
                raise
            except StudyStoppedError:
                self._stop_workers()
                self._finish(status="FAILED")
                raise
            except StorageLostError:
                # Nothing can be written: end the workers; the trials stay RUNNING in the
                # storage until the resume fails them as stale and re-runs them.
                for active in self.active.values():
                    active.process.kill()
                raise
            except Exception:
                # A bug or a lost database/tracking server: keep the stores consistent if we
                # can, so that the resume command re-runs what was running.
                self.log("coordinator error: stopping the running trials")
                with contextlib.suppress(Exception):
                    self._stop_workers()
                    self._finish(status="FAILED")
                raise

    def _loop(self) -> None:
        while True:
            if self.stop_signals.requested:
                self.log("stopping: marking running trials (Ctrl-C again to force)")
                raise KeyboardInterrupt
            self.liveness.sweep(self.study)
            self.tracker.retry_spooled()
            self.closer.check_failure_streak()
            for slot in self._free_slots():
                if self._start_trial(slot) is not True:
                    break
            if not self.active:
                if self._others_running():
                    # Other coordinators' trials (or a dead one's, until they go stale).
                    time.sleep(min(2.0, self.settings.heartbeat_interval))
                    continue
                return
            self._pump(timeout=1.0)

    def _stop_workers(self) -> None:
        """End every running trial: results already sent are kept; the rest are FAIL
        (`interrupted`, queued again) with their MLflow runs KILLED."""
        for active in list(self.active.values()):
            self._drain(active)
            active.forced_reason = Reason.INTERRUPTED
            self._finalize(active)

    def _finish(self, *, status: str) -> StudySummary:
        with self.lock.held():  # the parent run is shared by every coordinator of the study
            spent = budget(self.study, self.limits)
            stopped_by: Limit | None = None
            if status == "FINISHED":
                stopped_by = Limit.TIMEOUT if self._timed_out() else spent.spent()
                if stopped_by is None and self.engine.ended_search():
                    stopped_by = Limit.SEARCH
            return finish_study(
                self.study,
                spent=spent,
                stopped_by=stopped_by,
                tracker=self.tracker,
                plots_folder=self.settings.output_dir / "study",
                status=status,
                log=self.log,
            )


def run_study(
    spec: StudySpec,
    settings: RunSettings,
    *,
    log: Log = _print,
    worker: WorkerEntry = run_worker,
) -> StudySummary:
    """Run (or resume) a study; `worker` is what each trial's spawned process runs."""
    return Coordinator(spec, settings, log=log, worker=worker).run()
