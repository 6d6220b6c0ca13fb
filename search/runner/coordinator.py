"""The coordinator: asks its engine for trials, runs each in a spawned worker, tells the results.

For each trial: the engine's `ask` (within the shared budget): `study.ask()` and the space's
TrainConfig, or a KerasTuner oracle's trial recorded as an Optuna trial (`search.engines.base`). A
worker process trains it and reports every epoch; the coordinator logs the epoch to MLflow,
applies the collapse rules to the epochs it holds, reports the value to the trial, asks the
engine's pruner (the study's Optuna pruner) and answers continue or stop. When the worker ends,
the trial is closed (`search.trial.closing`): told COMPLETE (best validation accuracy over all
epochs), PRUNED or FAIL with its reason, re-run as the retry policy (or the engine) says, and
its MLflow run closed with the same state. This process never imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import multiprocessing
import os
import socket
import time
from dataclasses import replace
from multiprocessing.connection import wait
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.engines.base import WAIT, Engine, OptunaEngine, Proposal, Wait
from search.engines.keras_tuner import BEST_WEIGHTS, KerasTunerEngine
from search.pruning.collapse import PruneDecision, find_collapse
from search.reporting.console import (
    Log,
    StudySummary,
    budget_text,
    epoch_line,
    finish_study,
    trials_text,
)
from search.runner.active_trial import ActiveTrial, WorkerEntry, judge, spawn_worker
from search.runner.liveness import Liveness, retry_params
from search.runner.prewarm import Standbys
from search.runner.protocol import (
    Continue,
    Epoch,
    Failed,
    Finished,
    Started,
    Stop,
    WorkerMessage,
    WorkerRequest,
)
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
from search.trial.closing import Ending, TrialCloser, Verdict, trial_files
from search.trial.retry import StudyStoppedError
from search.vocabulary import Reason, TrialAttr
from trainers.errors import TrainerInputError


def _print(message: str) -> None:
    print(message, flush=True)


def _seconds_between(start: datetime.datetime | None, end: datetime.datetime | None) -> float:
    return (end - start).total_seconds() if start is not None and end is not None else 0.0


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def make_engine(spec: StudySpec, settings: RunSettings, *, identity: str, log: Log) -> Engine:
    """The engine `settings` chooses (`--engine`, `--oracle`)."""
    if settings.engine.name == "optuna":
        return OptunaEngine(spec, settings.data_source)
    return KerasTunerEngine(
        spec,
        settings.engine,
        data_source=settings.data_source,
        output_dir=settings.output_dir,
        n_trials=settings.n_trials,
        retry=settings.retry,
        identity=identity,
        log=log,
    )


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
                # After the checks above, so that a refused command leaves no parent run
                # RUNNING.
                self.tracker = StudyTracker(
                    settings.tracking_uri,
                    spec.name,
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
            on_stale=self._close_stale_trial,
            needs_rerun=self.closer.needs_rerun,
        )
        self.context = multiprocessing.get_context("spawn")
        self.standbys = Standbys(
            self.context, worker, os.getpid(), settings.output_dir, enabled=settings.prewarm
        )
        self.active: dict[int, ActiveTrial] = {}
        # While the database is away, the storage retry lets the workers be answered.
        self.storage_retry.while_waiting = self._serve_during_outage
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
                planned = proposal.plan.planned(proposal.config)
                proposal.trial.set_user_attr(TrialAttr.EPOCHS_PLANNED, planned)
        return proposal

    def _start_trial(self, slot: int) -> bool | Wait:
        """Start a trial in `slot`; False when the budget (or the timeout, or the engine)
        allows no more, WAIT when the engine has none until a running trial ends."""
        proposal = self._ask_within_budget()
        if proposal is None or proposal == WAIT:
            return False if proposal is None else WAIT
        assert isinstance(proposal, Proposal)
        trial, config, plan = proposal.trial, proposal.config, proposal.plan
        if isinstance(config, TrainerInputError):
            # The space produced an invalid config: a bug in the space, not bad luck.
            self.liveness.release(trial)
            detail = f"invalid config from the space: {config}"
            verdict = Verdict(TrialState.FAIL, Reason.INPUT, detail)
            self.closer.close(trial, Ending(trial.number, trial.params, trial.user_attrs, verdict))
            return True
        if proposal.inherited is not None:
            # A Hyperband continuation of a trial that trained its whole config: its result.
            self.liveness.release(trial)
            trial.set_user_attr(TrialAttr.CONFIG_YAML, config.to_yaml())
            ending = Ending(
                trial.number,
                trial.params,
                trial.user_attrs,
                proposal.inherited,
                best_epoch=0,
                best_value=proposal.inherited_best,
            )
            self.closer.close(trial, ending)
            return True
        folder = self.settings.output_dir / f"trial-{trial.number:04d}"
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
            after_epoch=plan.after_epoch,
            until_epoch=plan.until_epoch,
            initial_weights=plan.initial_weights,
            save_weights=str(folder / BEST_WEIGHTS) if plan.save_weights else None,
        )
        warm = self.standbys.hand_over(request)
        process, connection = warm or spawn_worker(self.context, request, os.getpid(), self.worker)
        if budget(self.study, self.limits).exhausted() is None:
            # Another trial may follow: its process starts up while this one trains.
            self.standbys.prepare(slot, environment)
        self.active[trial.number] = ActiveTrial(
            trial, config, process, connection, run_id, folder, slot
        )
        retry_of = trial.user_attrs.get(TrialAttr.RETRY_OF)
        again = "" if retry_of is None else f", re-running trial {retry_of} with the same params"
        window = ""
        if plan.after_epoch:
            continued = trial.user_attrs.get(TrialAttr.CONTINUES_TRIAL)
            window = f", continuing trial {continued} after epoch {plan.after_epoch}"
        if plan.until_epoch is not None:
            window += f", up to epoch {plan.until_epoch}"
        params = ", ".join(f"{name}={_short(value)}" for name, value in trial.params.items())
        self.log(f"trial {trial.number:>3} started (slot {slot}){again}{window}: {params}")
        return True

    # -- messages from workers ----------------------------------------------------------------

    def _serve_during_outage(self) -> None:
        """While the storage is away (called by its retry): answer each worker's epochs from
        what needs no storage (the collapse rules), so that it keeps training; the epochs are
        reported to Optuna, and the pruner asked, once the storage is back (`_catch_up`).
        Other messages, and whatever follows them, wait until then."""
        for active in list(self.active.values()):
            if active.awaiting_answer:
                # The epoch being judged when the storage went: the pruner's word comes with a
                # later answer.
                self._answer(active)
            for message in active.received():
                if not isinstance(message, Epoch) or active.held:
                    active.held.append(message)
                    continue
                decision = self._record_epoch(active, message)
                active.unreported.append(message)
                if active.prune is None and decision is not None:
                    active.prune = decision
                self._answer(active)

    def _answer(self, active: ActiveTrial) -> None:
        active.awaiting_answer = False
        reply = Continue() if active.prune is None else Stop(str(active.prune))
        try:
            active.connection.send(reply)
        except OSError:  # the worker died while waiting for us; its exit is handled next
            active.pipe_closed = True

    def _handle(self, active: ActiveTrial, message: WorkerMessage) -> None:
        trial = active.trial
        if isinstance(message, Started):
            active.num_classes = message.num_classes
            active.validation_images = message.validation_count
            active.worker_config_yaml = message.config_yaml
            trial.set_user_attr(TrialAttr.CONFIG_YAML, message.config_yaml)
            trial.set_user_attr(TrialAttr.TRAIN_IMAGES, message.train_count)
            trial.set_user_attr(TrialAttr.VALIDATION_IMAGES, message.validation_count)
        elif isinstance(message, Epoch):
            active.awaiting_answer = True
            decision = self._on_epoch(active, message)
            if active.prune is None and decision is not None:
                active.prune = decision
            if active.awaiting_answer:  # not answered already while the storage was away
                self._answer(active)
        elif isinstance(message, Finished | Failed):
            active.outcome = message

    def _on_epoch(self, active: ActiveTrial, message: Epoch) -> PruneDecision | None:
        """Log and report one epoch; why to stop the trial, or None."""
        self._catch_up(active)
        collapse = self._record_epoch(active, message)
        if collapse is not None and active.prune is None:
            active.prune = collapse  # the answer, even if the storage goes away below
        if collapse is not None and collapse.reason == Reason.NAN:
            return collapse  # a non-finite value never reaches the storage
        return (
            self._report(active, message)
            or collapse
            or self.engine.prune(self.study, self.storage.get_trial(active.trial._trial_id))
        )

    def _record_epoch(self, active: ActiveTrial, message: Epoch) -> PruneDecision | None:
        """Keep, log and print one epoch; what the collapse rules say of the curve so far."""
        metrics = message.metrics
        active.records.append({"epoch": message.epoch, **metrics})
        self.tracker.log_epoch(active.run_id, message.epoch, metrics)
        total = active.config.total_epochs
        self.log(epoch_line(active.trial.number, message.epoch, total, metrics))
        return find_collapse(
            active.epoch_views,
            num_classes=active.num_classes,
            validation_images=active.validation_images,
            unfreezing_phases=active.config.unfreezing_phases,
            rules=self.spec.rules,
        )

    def _report(self, active: ActiveTrial, message: Epoch) -> PruneDecision | None:
        """Tell Optuna the epoch's value; TAKEN_OVER if a peer failed the trial meanwhile."""
        try:
            active.trial.report(float(message.metrics["val_accuracy"]), step=message.epoch)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another coordinator failed this trial as stale (we looked dead for too long) and
            # queued its re-run; this copy stops and is not told.
            active.taken_over = True
            return PruneDecision(Reason.TAKEN_OVER)
        return None

    def _catch_up(self, active: ActiveTrial) -> None:
        """Report, in order, the epochs answered while the storage was away; then let the
        Optuna pruner judge the latest (its decision reaches the worker with its next answer)."""
        if not active.unreported:
            return
        unreported, active.unreported = active.unreported, []
        for message in unreported:
            if not math.isfinite(float(message.metrics["val_accuracy"])):
                continue  # as in _on_epoch: never stored
            taken_over = self._report(active, message)
            if taken_over is not None:
                active.prune = taken_over
                return
        if active.prune is None:
            active.prune = self.engine.prune(
                self.study, self.storage.get_trial(active.trial._trial_id)
            )

    def _is_running(self, trial: optuna.Trial) -> bool:
        """Whether the stored trial is still RUNNING (no peer failed it as stale)."""
        return self.storage.get_trial(trial._trial_id).state == TrialState.RUNNING

    # -- the end of a trial ---------------------------------------------------------------------

    def _finalize(self, active: ActiveTrial) -> None:
        self._catch_up(active)
        if active.process.is_alive():
            active.process.kill()
        active.process.join(timeout=30)
        active.connection.close()
        trial = active.trial
        del self.active[trial.number]
        history = active.history
        ending = Ending(
            trial.number,
            trial.params,
            trial.user_attrs,
            judge(active, self.spec.objective),
            run_id=active.run_id,
            best_epoch=history.best_epoch,
            best_value=history.best_val_accuracy,
            epochs_run=len(history),
        )
        taken_over, retried = False, False
        try:
            # The trial keeps its heartbeat until it is told, so that no peer takes it for dead
            # while its files are written.
            files, unwritten = trial_files(
                active.folder,
                active.worker_config_yaml or active.config.to_yaml(),
                history,
                title=f"{self.spec.name} trial {trial.number}",
            )
            if unwritten:
                self.log(
                    f"warning: trial {trial.number}: artifacts not written to {active.folder}: "
                    f"{', '.join(unwritten)}; its result and metrics are kept"
                )
            ending = replace(ending, files=files, seconds=time.monotonic() - active.started)
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

    def _close_stale_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """A trial failed because its coordinator stopped heart-beating (killed, machine lost);
        called under the study lock."""
        verdict = Verdict(TrialState.FAIL, Reason.STALE_HEARTBEAT, "its coordinator stopped")
        seconds = _seconds_between(trial.datetime_start, trial.datetime_complete)
        ending = Ending(
            trial.number, retry_params(trial), trial.user_attrs, verdict, seconds=seconds
        )
        self.closer.close(None, ending)

    # -- the loop -------------------------------------------------------------------------------

    def _free_slots(self) -> list[int]:
        busy = {active.slot for active in self.active.values()}
        return [slot for slot in range(self.settings.workers) if slot not in busy]

    def _pump(self, timeout: float) -> None:
        """Handle whatever the workers sent, and finalize the ones that ended."""
        waitables: list[Any] = []
        for active in self.active.values():
            waitables.append(active.process.sentinel)
            if not active.pipe_closed:
                waitables.append(active.connection)
        if waitables:
            if self.stop_signals.wakeup_fd is not None:
                waitables.append(self.stop_signals.wakeup_fd)
            wait(waitables, timeout=timeout)
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
            self._handle(active, active.held.pop(0))
        for message in active.received():
            self._handle(active, message)

    def _check_failures(self) -> None:
        streak = self.closer.consecutive_failures
        if streak >= self.settings.retry.max_consecutive_failures:
            raise StudyStoppedError(
                f"stopping: {streak} consecutive trials failed (last: "
                f"{self.closer.last_failure}). Fix the cause, then run the same command to resume."
            )

    def _others_running(self) -> bool:
        """Whether to wait for other coordinators' trials: they run, and when they end the
        budget may have room again."""
        status = budget(self.study, self.limits)
        return status.running > 0 and status.spent() is None and not self._timed_out()

    def run(self) -> StudySummary:
        spent = budget(self.study, self.limits)
        self.log(
            f"study {self.spec.name}: {trials_text(spent)} trials finished"
            f"{', continuing' if spent.used else ''} ({budget_text(spent)}); "
            f"storage {self.storage_label}; MLflow "
            f"{redact(self.settings.tracking_uri)} (experiment {self.spec.name!r}); "
            f"{self.settings.workers} worker(s)"
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
            self._check_failures()
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
