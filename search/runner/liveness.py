"""Heartbeats: how coordinators notice each other's death and re-run the orphaned trials.

A background thread records an Optuna heartbeat for each trial this coordinator runs, every
`heartbeat_interval` seconds, so that a main loop busy with MLflow or waiting for the study lock
never looks dead. The main loop sweeps the study, under the study lock, for RUNNING trials of
*other* coordinators whose heartbeat is older than `grace_period`, fails them and hands each to
`on_stale`, which queues the re-run. A coordinator killed inside `study.ask()`, after Optuna
created the trial and before its first heartbeat, leaves a trial with no heartbeat at all; those
lack the `coordinator` attribute and are failed too. Every `ask` + claim holds the same lock,
so a sweep never catches a live coordinator between the two,
and a sweeper killed between failing a trial and queueing its re-run is made good by the next
sweep (`on_stale` is called again for stale failures that have no re-run yet).

Trials this coordinator runs are never swept by it: it watches their workers directly, and a
heartbeat thread delayed on a loaded machine is not a dead coordinator.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.storage.lock import StudyLock
from search.vocabulary import TrialAttr

StaleHandler = Callable[[optuna.Study, FrozenTrial], None]


class Liveness:
    def __init__(
        self,
        storage: optuna.storages.RDBStorage,
        lock: StudyLock,
        *,
        heartbeat_interval: int,
        grace_period: int,
        on_stale: StaleHandler,
        needs_rerun: Callable[[FrozenTrial], bool],
    ) -> None:
        self.storage = storage
        self.lock = lock
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.on_stale = on_stale
        self.needs_rerun = needs_rerun
        self.last_sweep = 0.0
        self._ours: set[int] = set()
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._thread.start()

    def claim(self, trial: optuna.Trial, identity: str) -> None:
        """Mark a trial just asked for as ours (call under the study lock)."""
        self.storage.record_heartbeat(trial._trial_id)
        trial.set_user_attr(TrialAttr.COORDINATOR, identity)
        with self._guard:
            self._ours.add(trial._trial_id)

    def release(self, trial: optuna.Trial) -> None:
        with self._guard:
            self._ours.discard(trial._trial_id)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            with self._guard:
                ours = list(self._ours)
            for trial_id in ours:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as error:  # a database hiccup must not kill the thread
                    print(f"heartbeat for trial id {trial_id} failed: {error}", flush=True)

    def sweep(self, study: optuna.Study) -> None:
        """Fail and hand to `on_stale` the trials whose coordinator died; at most once per
        heartbeat interval."""
        now = time.monotonic()
        if now - self.last_sweep < self.heartbeat_interval:
            return
        self.last_sweep = now
        with self.lock.held():
            for trial_id in self._dead_trial_ids(study):
                try:
                    failed = self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
                except optuna.exceptions.UpdateFinishedTrialError:
                    failed = False  # it finished (or a peer failed it) since we looked
                if failed:
                    self.on_stale(study, self.storage.get_trial(trial_id))
            with self._guard:
                ours = set(self._ours)
            for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
                # Failed by a sweeper that died before queueing the re-run. Not one still
                # running here: its end is handled where it runs, and a later sweep re-queues
                # it if it still needs it.
                if trial._trial_id in ours or TrialAttr.FAIL_REASON in trial.user_attrs:
                    continue
                if self.needs_rerun(trial):
                    self.on_stale(study, trial)

    def _dead_trial_ids(self, study: optuna.Study) -> set[int]:
        """RUNNING trials of other coordinators that stopped heart-beating, or that were
        created by an `ask` whose coordinator died before claiming them."""
        with self._guard:
            ours = set(self._ours)
        # Optuna's own staleness query (what `optuna.storages.fail_stale_trials` uses); we need
        # the ids before anything is failed, to leave our own trials alone.
        dead = set(self.storage._get_stale_trial_ids(study._study_id))
        # Every ask + claim holds the lock we hold, so an unclaimed RUNNING trial is dead now.
        # Without a real lock, wait out the grace period (by this host's clock: Optuna stores
        # the asking host's local time, so hosts must agree on it).
        cutoff = datetime.datetime.now() - datetime.timedelta(seconds=self.grace_period)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if TrialAttr.COORDINATOR in trial.user_attrs:
                continue
            started = trial.datetime_start
            if self.lock.exclusive or (started is not None and started < cutoff):
                dead.add(trial._trial_id)
        return dead - ours
