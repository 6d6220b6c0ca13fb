"""The coordinator: asks Optuna for trials, runs each in a spawned worker, tells the results.

For each trial: `study.ask()` (within the shared budget), the space turns it into a
TrainConfig, a worker process trains it and reports every epoch; the coordinator logs the epoch
to MLflow, reports it to the trial, asks the collapse pruner and answers continue or stop. When
the worker ends, the trial is told COMPLETE (best validation accuracy over all epochs), PRUNED
or FAIL with its reason, failures are re-run as the retry policy says, and the trial's MLflow
run is closed with the same state. This process never imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import multiprocessing
import os
import signal
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.active_trial import ActiveTrial, Verdict, judge, spawn_worker
from search.budget import RETRY_OF, StudyLock, budget, is_retried
from search.liveness import Liveness, retry_params
from search.outcomes import (
    BEST_EPOCH,
    CONFIG_YAML,
    FAIL_DETAIL,
    FAIL_REASON,
    MLFLOW_RUN_ID,
    PRUNE_REASON,
    STALE,
)
from search.protocol import (
    Continue,
    Epoch,
    Failed,
    Finished,
    Started,
    Stop,
    WorkerMessage,
    WorkerRequest,
)
from search.pruning import EPOCHS_ATTR, NUM_CLASSES_ATTR, UNFREEZING_PHASES_ATTR
from search.reporting import StudySummary, epoch_line, finish_study, finished_line
from search.retry import RetryPolicy, StudyStoppedError, enqueue_retry
from search.storage import make_storage, redact
from search.studies import StudySpec
from search.tracking import StudyTracker
from trainers.errors import TrainerInputError
from trainers.history import TrainingHistory, non_finite_keys
from trainers.plots import plot_learning_curves

Log = Callable[[str], None]
DATA_SOURCE = "data_source"
#: Why a trial's copy is dropped: a peer failed it as stale while it still ran here.
TAKEN_OVER = "taken_over"


class StudyMismatchError(ValueError):
    """The command does not match the study it would continue; reported as one line."""


@dataclass(frozen=True)
class RunSettings:
    """How to run a study; every field has a CLI flag in `search.run`."""

    n_trials: int
    storage: str
    data_source: str
    tracking_uri: str
    output_dir: Path
    timeout: float | None = None
    #: Concurrent worker processes; each gets its own entry of `worker_environments`.
    workers: int = 1
    #: Per-slot environment, e.g. CUDA_VISIBLE_DEVICES pinning slot i to GPU i.
    worker_environments: tuple[dict[str, str], ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Seconds between heartbeats of running trials; a trial whose coordinator has been silent
    #: for `grace_period` seconds is failed and re-run (Optuna's RDB heartbeat).
    heartbeat_interval: int = 10
    grace_period: int = 60


def _print(message: str) -> None:
    print(message, flush=True)


def _seconds_between(start: datetime.datetime | None, end: datetime.datetime | None) -> float:
    return (end - start).total_seconds() if start is not None and end is not None else 0.0


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class Coordinator:
    """Runs one study until its target number of trials has used the budget."""

    def __init__(self, spec: StudySpec, settings: RunSettings, *, log: Log = _print) -> None:
        self.spec = spec
        self.settings = settings
        self.log = log
        self.storage_label = redact(settings.storage)
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.stop_requested = False
        self.lock = StudyLock(settings.storage, spec.name)
        # Several coordinators may start together on a fresh database: Optuna's table creation,
        # the study, its enqueued trials and the MLflow parent run are made by one at a time.
        with self.lock.held():
            storage = make_storage(
                settings.storage,
                heartbeat_interval=settings.heartbeat_interval,
                grace_period=settings.grace_period,
            )
            existing = spec.name in optuna.get_all_study_names(storage)
            # A new study draws from the spec's seed, so a fresh demo is reproducible; every
            # later or concurrent coordinator gets its own seed, or they would all replay the
            # same draws.
            seed = spec.seed if not existing else hash((spec.seed, self.identity)) % 2**31
            self.study = optuna.create_study(
                study_name=spec.name,
                storage=storage,
                sampler=spec.make_sampler(seed),
                pruner=spec.make_pruner(),
                direction="maximize",
                load_if_exists=True,
            )
            self._prepare_study(existing)
            # After the checks above, so that a refused command leaves no parent run RUNNING.
            self.tracker = StudyTracker(
                settings.tracking_uri, spec.name, storage=self.storage_label
            )
        self.liveness = Liveness(
            storage,
            self.lock,
            heartbeat_interval=settings.heartbeat_interval,
            grace_period=settings.grace_period,
            on_stale=self._on_stale_trial,
            needs_rerun=self._stale_needs_rerun,
        )
        self.pruner = spec.make_pruner()
        self.context = multiprocessing.get_context("spawn")
        self.active: dict[int, ActiveTrial] = {}
        self.started_at = time.monotonic()
        self.consecutive_failures = 0
        self.last_failure = ""
        # A pipe that Ctrl-C writes to, so that waiting for workers ends at once (main thread).
        self.wakeup_reader: int | None = None
        self.wakeup_writer: int | None = None
        self.previous_wakeup_fd = -1

    # -- budget and trial start ---------------------------------------------------------------

    def _prepare_study(self, existing: bool) -> None:
        """Record the data source and enqueue the known configs once (under the lock)."""
        recorded = self.study.user_attrs.get(DATA_SOURCE)
        if existing and recorded is not None and recorded != self.settings.data_source:
            raise StudyMismatchError(
                f"study {self.spec.name!r} was started with data {recorded!r}, not "
                f"{self.settings.data_source!r}; pass --data {recorded} to continue it, or use "
                "another --storage for a new study"
            )
        self.study.set_user_attr(DATA_SOURCE, self.settings.data_source)
        for known in self.spec.enqueued:
            # skip_if_exists: a coordinator that died half-way through this loop is completed
            # by the next one, and nothing is queued twice.
            self.study.enqueue_trial(
                dict(known.params), user_attrs={"enqueued": known.label}, skip_if_exists=True
            )

    def _timed_out(self) -> bool:
        timeout = self.settings.timeout
        return timeout is not None and time.monotonic() - self.started_at >= timeout

    def _ask_within_budget(self) -> optuna.Trial | None:
        """A new trial if the study's target still has room, counting every coordinator."""
        if self._timed_out():
            return None
        with self.lock.held():
            if budget(self.study, self.settings.n_trials).remaining <= 0:
                return None
            with warnings.catch_warnings():
                # Optuna expects heartbeats with Study.optimize; we send them ourselves.
                warnings.simplefilter("ignore", UserWarning)
                trial = self.study.ask()
            self.liveness.claim(trial, self.identity)
        return trial

    def _start_trial(self, slot: int) -> bool:
        """Start a trial in `slot`; False when the budget (or the timeout) allows no more."""
        trial = self._ask_within_budget()
        if trial is None:
            return False
        try:
            config = self.spec.space(trial, self.settings.data_source)
        except TrainerInputError as error:
            # The space produced an invalid config: a bug in the space, not bad luck.
            self._fail_before_start(trial, f"invalid config from the space: {error}")
            return True
        folder = self.settings.output_dir / f"trial-{trial.number:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        trial.set_user_attr(CONFIG_YAML, config.to_yaml())
        unfreezing = [n for n, phase in enumerate(config.phases, 1) if phase.unfreeze_blocks > 0]
        trial.set_user_attr(UNFREEZING_PHASES_ATTR, unfreezing)
        run_id = self.tracker.start_trial(trial.number, trial.params, config)
        trial.set_user_attr(MLFLOW_RUN_ID, run_id)
        environments = self.settings.worker_environments
        request = WorkerRequest(
            trial_number=trial.number,
            config_yaml=config.to_yaml(),
            log_path=str(folder / "worker.log"),
            environment=environments[slot] if slot < len(environments) else {},
        )
        process, connection = spawn_worker(self.context, request, os.getpid())
        self.active[trial.number] = ActiveTrial(
            trial, config, process, connection, run_id, folder, slot
        )
        retry_of = trial.user_attrs.get(RETRY_OF)
        again = "" if retry_of is None else f", re-running trial {retry_of} with the same params"
        params = ", ".join(f"{name}={_short(value)}" for name, value in trial.params.items())
        self.log(f"trial {trial.number:>3} started (slot {slot}){again}: {params}")
        return True

    def _fail_before_start(self, trial: optuna.Trial, detail: str) -> None:
        trial.set_user_attr(FAIL_REASON, "input")
        trial.set_user_attr(FAIL_DETAIL, detail[:2000])
        self.liveness.release(trial)
        self.study.tell(trial, state=TrialState.FAIL)
        # Every trial has its run, even one that never reached a worker.
        run_id = self.tracker.start_trial(trial.number, trial.params, config=None)
        self.tracker.finish_trial(
            run_id,
            state="FAIL",
            tags={"fail_reason": "input", "fail_detail": detail},
            metrics={},
            files=[],
        )
        self._count_outcome(TrialState.FAIL, f"trial {trial.number}: {detail}")
        elapsed = time.monotonic() - self.started_at
        result = f"input: {detail}"[:120]
        self.log(finished_line(trial.number, TrialState.FAIL, result, self.study, 0.0, elapsed))

    # -- messages from workers ----------------------------------------------------------------

    def _handle(self, active: ActiveTrial, message: WorkerMessage) -> None:
        trial = active.trial
        if isinstance(message, Started):
            active.worker_config_yaml = message.config_yaml
            trial.set_user_attr(NUM_CLASSES_ATTR, message.num_classes)
            trial.set_user_attr(CONFIG_YAML, message.config_yaml)
            trial.set_user_attr("train_images", message.train_count)
            trial.set_user_attr("validation_images", message.validation_count)
        elif isinstance(message, Epoch):
            reason = self._on_epoch(active, message)
            if reason is not None:
                active.prune_reason = reason
            try:
                active.connection.send(Continue() if reason is None else Stop(reason))
            except OSError:  # the worker died while waiting for us; its exit is handled next
                active.pipe_closed = True
        elif isinstance(message, Finished | Failed):
            active.outcome = message

    def _on_epoch(self, active: ActiveTrial, message: Epoch) -> str | None:
        """Log and report one epoch; the reason to stop the trial, or None."""
        metrics = message.metrics
        active.records.append({"epoch": message.epoch, **metrics})
        self.tracker.log_epoch(active.run_id, message.epoch, metrics)
        total = active.config.total_epochs
        self.log(epoch_line(active.trial.number, message.epoch, total, metrics))
        frozen = self._frozen(active.trial)
        if frozen is None:
            # Another coordinator failed this trial as stale (we looked dead for too long) and
            # queued its re-run; this copy stops and is not told.
            active.taken_over = True
            return TAKEN_OVER
        # A non-finite (or missing) value never reaches the storage, not even as an
        # intermediate value.
        checked = {key: metrics.get(key, math.nan) for key in ("loss", "val_loss", "val_accuracy")}
        if non_finite_keys(checked):
            return "nan"
        compact = [
            {key: record[key] for key in ("epoch", "phase", "loss", "val_loss", "val_accuracy")}
            for record in active.records
        ]
        try:
            active.trial.report(float(metrics["val_accuracy"]), step=message.epoch)
            active.trial.set_user_attr(EPOCHS_ATTR, compact)
        except optuna.exceptions.UpdateFinishedTrialError:
            active.taken_over = True  # failed as stale by a peer since the check above
            return TAKEN_OVER
        decision = self.pruner.decide(self.study, self._frozen(active.trial) or frozen)
        return None if decision is None else decision.reason

    def _frozen(self, trial: optuna.Trial) -> FrozenTrial | None:
        """The trial as stored, if it is still RUNNING."""
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return next((frozen for frozen in running if frozen.number == trial.number), None)

    # -- the end of a trial ---------------------------------------------------------------------

    def _finalize(self, active: ActiveTrial) -> None:
        if active.process.is_alive():
            active.process.kill()
        active.process.join(timeout=30)
        active.connection.close()
        trial = active.trial
        del self.active[trial.number]
        history = active.history
        verdict = judge(active, self.spec.objective)
        try:
            # The trial keeps its heartbeat until it is told, so that no peer takes it for dead
            # while its files are written.
            files = self._trial_files(active, history)
            # Under the lock, which every stale sweep holds: a trial still RUNNING here cannot
            # be failed by a peer before it is told, nor its run closed twice at once.
            with self.lock.held():
                taken_over = active.taken_over or self._frozen(trial) is None
                if taken_over:
                    # A peer failed it as stale (we looked dead for a while) and queued its
                    # re-run: this copy is dropped, never told twice.
                    self.tracker.finish_trial(
                        active.run_id,
                        state="FAIL",
                        tags={"fail_reason": TAKEN_OVER},
                        metrics={},
                        files=files,
                    )
                else:
                    tags, metrics, result = self._tell(active, verdict)
        finally:
            self.liveness.release(trial)
        if taken_over:
            self.log(f"trial {trial.number:>3} dropped: another coordinator took it over")
            return
        self.tracker.finish_trial(
            active.run_id,
            state=verdict.state.name,
            tags=tags,
            metrics=metrics,
            files=files,
            killed=verdict.reason == "interrupted",
        )
        description = f"trial {trial.number}: {verdict.reason}: {verdict.detail}"
        self._count_outcome(verdict.state, description)
        elapsed = time.monotonic() - self.started_at
        trial_seconds = time.monotonic() - active.started
        self.log(
            finished_line(trial.number, verdict.state, result, self.study, trial_seconds, elapsed)
        )

    def _tell(
        self, active: ActiveTrial, verdict: Verdict
    ) -> tuple[dict[str, str], dict[str, float], str]:
        """Store the verdict on the trial; the MLflow tags and metrics, and the printed result."""
        trial = active.trial
        history = active.history
        if verdict.state == TrialState.COMPLETE:
            assert verdict.value is not None
            trial.set_user_attr(BEST_EPOCH, history.best_epoch)
            self.study.tell(trial, verdict.value)
            metrics = {"objective": verdict.value, "best_epoch": float(history.best_epoch or 0)}
            return {}, metrics, f"{verdict.value:.4f} (epoch {history.best_epoch})"
        if verdict.state == TrialState.PRUNED:
            trial.set_user_attr(PRUNE_REASON, verdict.reason)
            self.study.tell(trial, state=TrialState.PRUNED)
            tags = {"prune_reason": verdict.reason}
            return tags, {}, f"{verdict.reason} at epoch {len(history)}"
        trial.set_user_attr(FAIL_REASON, verdict.reason)
        trial.set_user_attr(FAIL_DETAIL, verdict.detail[:2000])
        retried = self._retry_if_allowed(
            trial.number, trial.params, trial.user_attrs, verdict.reason
        )
        self.study.tell(trial, state=TrialState.FAIL)
        tags = {"fail_reason": verdict.reason, "fail_detail": verdict.detail}
        tags["retried"] = str(retried)
        return tags, {}, f"{verdict.reason}: {verdict.detail}"[:120]

    def _retry_if_allowed(
        self, number: int, params: dict[str, Any], user_attrs: dict[str, Any], reason: str
    ) -> bool:
        # Queued before the trial is told FAIL, so no coordinator sees a gap in the budget.
        if not self.settings.retry.should_retry(reason, user_attrs):
            return False
        if is_retried(self.study, number):
            return True  # a coordinator that died between queueing and telling did it already
        enqueue_retry(
            self.study, number=number, params=params, user_attrs=user_attrs, reason=reason
        )
        return True

    def _count_outcome(self, state: TrialState, description: str) -> None:
        if state == TrialState.FAIL:
            self.consecutive_failures += 1
            self.last_failure = description[:300]
        else:
            self.consecutive_failures = 0

    def _trial_files(self, active: ActiveTrial, history: TrainingHistory) -> list[Path]:
        folder = active.folder
        config_file = folder / "config.yaml"
        config_file.write_text(active.worker_config_yaml or active.config.to_yaml())
        files = [config_file, folder / "worker.log"]
        if len(history):
            files.append(history.to_csv(folder / "history.csv"))
            title = f"{self.spec.name} trial {active.trial.number}"
            files.append(plot_learning_curves(history, folder / "learning_curves.png", title=title))
        return files

    def _on_stale_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """A trial failed because its coordinator stopped heart-beating (killed, machine lost);
        called under the study lock."""
        retried = self._retry_if_allowed(trial.number, retry_params(trial), trial.user_attrs, STALE)
        # Its coordinator may have died before creating the trial's run: every trial gets one.
        self.tracker.close_dead_trial_run(trial.number, trial.params, STALE)
        again = "re-running it" if retried else "not retried"
        self.log(
            finished_line(
                trial.number,
                TrialState.FAIL,
                f"{STALE}: its coordinator stopped; {again}",
                self.study,
                _seconds_between(trial.datetime_start, trial.datetime_complete),
                time.monotonic() - self.started_at,
            )
        )

    def _stale_needs_rerun(self, trial: FrozenTrial) -> bool:
        return self.settings.retry.should_retry(STALE, trial.user_attrs) and not is_retried(
            self.study, trial.number
        )

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
            if self.wakeup_reader is not None:
                waitables.append(self.wakeup_reader)
            wait(waitables, timeout=timeout)
            self._clear_wakeups()
        for active in list(self.active.values()):
            alive = active.process.is_alive()
            # After an exit, drain what the worker sent before it, then close the trial.
            self._drain(active)
            if not alive:
                if self.stop_requested and active.outcome is None:
                    # Killed with us by a signal to the process group: not the trial's fault.
                    active.forced_reason = "interrupted"
                self._finalize(active)

    def _drain(self, active: ActiveTrial) -> None:
        while not active.pipe_closed and active.connection.poll():
            try:
                message = active.connection.recv()
            except (EOFError, OSError):
                active.pipe_closed = True
                break
            self._handle(active, message)

    def _check_failures(self) -> None:
        limit = self.settings.retry.max_consecutive_failures
        if self.consecutive_failures >= limit:
            raise StudyStoppedError(
                f"stopping: {self.consecutive_failures} consecutive trials failed (last: "
                f"{self.last_failure}). Fix the cause, then run the same command to resume."
            )

    def _others_running(self) -> bool:
        status = budget(self.study, self.settings.n_trials)
        return status.running > 0 and status.used < status.target and not self._timed_out()

    def run(self) -> StudySummary:
        used = budget(self.study, self.settings.n_trials).used
        self.log(
            f"study {self.spec.name}: {used}/{self.settings.n_trials} trials finished"
            f"{', continuing' if used else ''}; storage {self.storage_label}; MLflow "
            f"{self.settings.tracking_uri} (experiment {self.spec.name!r}); "
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
            self.liveness.close()
            self.lock.close()

    def _run_trials(self) -> None:
        """Start, watch and finish trials until the budget is used; on Ctrl-C or a failure
        streak, stop the running trials so that the stores stay consistent."""
        previous_handlers = self._catch_stop_signals()
        try:
            while True:
                if self.stop_requested:
                    self.log("stopping: marking running trials (Ctrl-C again to force)")
                    raise KeyboardInterrupt
                self.liveness.sweep(self.study)
                self._check_failures()
                for slot in self._free_slots():
                    if not self._start_trial(slot):
                        break
                if not self.active:
                    if self._others_running():
                        # Other coordinators' trials (or a dead one's, until they go stale).
                        time.sleep(min(2.0, self.settings.heartbeat_interval))
                        continue
                    break
                self._pump(timeout=1.0)
        except KeyboardInterrupt:
            self._stop_workers("interrupted")
            self._finish(status="KILLED")
            raise
        except StudyStoppedError:
            self._stop_workers("interrupted")
            self._finish(status="FAILED")
            raise
        except Exception:
            # A bug or a lost database/tracking server: keep the stores consistent if we can,
            # so that the resume command re-runs what was running.
            self.log("coordinator error: stopping the running trials")
            with contextlib.suppress(Exception):
                self._stop_workers("interrupted")
                self._finish(status="FAILED")
            raise
        finally:
            self._restore_signals(previous_handlers)

    def _catch_stop_signals(self) -> dict[int, Any]:
        """Ctrl-C and SIGTERM stop the study at the next safe point, not inside a DB write."""

        def request_stop(signum: int, frame: Any) -> None:
            if self.stop_requested:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            # Only a flag: printing here could land inside a print of the main thread, which
            # Python refuses (reentrant call); the main loop says it is stopping.
            self.stop_requested = True

        previous: dict[int, Any] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[signum] = signal.signal(signum, request_stop)
            except ValueError:  # not the main thread: leave signals alone
                return previous
        # Python retries a wait that a signal interrupts, so without a wakeup fd a Ctrl-C would
        # wait for the next worker message; meanwhile a trial could finish that the user meant
        # to stop.
        reader, writer = os.pipe()
        os.set_blocking(reader, False)
        os.set_blocking(writer, False)
        self.previous_wakeup_fd = signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
        self.wakeup_reader, self.wakeup_writer = reader, writer
        return previous

    def _clear_wakeups(self) -> None:
        if self.wakeup_reader is None:
            return
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wakeup_reader, 512):
                pass

    def _restore_signals(self, previous_handlers: dict[int, Any]) -> None:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        if self.wakeup_reader is not None and self.wakeup_writer is not None:
            signal.set_wakeup_fd(self.previous_wakeup_fd)
            os.close(self.wakeup_reader)
            os.close(self.wakeup_writer)
            self.wakeup_reader = self.wakeup_writer = None

    def _stop_workers(self, reason: str) -> None:
        """End every running trial: results already sent are kept; the rest are FAIL
        (`reason`, queued again) with their MLflow runs KILLED."""
        for active in list(self.active.values()):
            self._drain(active)
            active.forced_reason = reason
            self._finalize(active)

    def _finish(self, *, status: str) -> StudySummary:
        with self.lock.held():  # the parent run is shared by every coordinator of the study
            return finish_study(
                self.study,
                used=budget(self.study, self.settings.n_trials).used,
                target=self.settings.n_trials,
                tracker=self.tracker,
                plots_folder=self.settings.output_dir / "study",
                status=status,
                log=self.log,
            )


def run_study(spec: StudySpec, settings: RunSettings, *, log: Log = _print) -> StudySummary:
    return Coordinator(spec, settings, log=log).run()
