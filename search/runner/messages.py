"""A worker's messages as the coordinator answers them.

`Started` fills in what the collapse rules need (classes, validation images); each `Epoch` is
kept, logged to MLflow and printed, judged by the per-epoch decision
(`search.pruning.decision`) and answered `Continue` or `Stop`; `Finished` or `Failed` is the
trial's outcome. While the study's storage is away, epochs are answered from the collapse rules
alone, so that workers keep training; they are reported to Optuna, and the pruner asked, once
it is back (`catch_up`).
"""

from __future__ import annotations

from collections.abc import Iterable

import optuna

from search.pruning.collapse import CollapseRules, EpochView, PruneDecision, find_collapse
from search.pruning.decision import decide_epoch, pruner_decision, report_epoch
from search.reporting.console import Log, epoch_line
from search.runner.active_trial import ActiveTrial
from search.runner.protocol import Continue, Epoch, Failed, Finished, Started, Stop, WorkerMessage
from search.tracking.runs import StudyTracker
from search.vocabulary import Reason, TrialAttr


class TrialMessages:
    """Handles what the workers send (see the module docstring)."""

    def __init__(self, tracker: StudyTracker, rules: CollapseRules, log: Log) -> None:
        self.tracker = tracker
        self.rules = rules
        self.log = log

    def handle(self, active: ActiveTrial, message: WorkerMessage) -> None:
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
                self.answer(active)
        elif isinstance(message, Finished | Failed):
            active.outcome = message

    def answer(self, active: ActiveTrial) -> None:
        active.awaiting_answer = False
        reply = Continue() if active.prune is None else Stop(str(active.prune))
        try:
            active.connection.send(reply)
        except OSError:  # the worker died while waiting for us; its exit is handled next
            active.pipe_closed = True

    def serve_during_outage(self, actives: Iterable[ActiveTrial]) -> None:
        """While the storage is away (called by its retry): answer the workers' epochs from
        what needs no storage (the collapse rules), so that they keep training. Other messages,
        and whatever follows them, wait until it is back."""
        for active in actives:
            if active.awaiting_answer:
                # The epoch being judged when the storage went: the pruner's word comes with a
                # later answer.
                self.answer(active)
            for message in active.received():
                if not isinstance(message, Epoch) or active.held:
                    active.held.append(message)
                    continue
                collapse = self._record_epoch(active, message)
                active.unreported.append(message)
                if active.prune is None and collapse is not None:
                    active.prune = collapse
                self.answer(active)

    def _on_epoch(self, active: ActiveTrial, message: Epoch) -> PruneDecision | None:
        """Log and judge one epoch; why to stop the trial, or None."""
        self.catch_up(active)
        collapse = self._record_epoch(active, message)
        if collapse is not None and active.prune is None:
            active.prune = collapse  # the answer, even if the storage goes away below
        try:
            return decide_epoch(active.trial, active.epoch_views[-1], collapse)
        except optuna.exceptions.UpdateFinishedTrialError:
            return self._taken_over(active)

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
            rules=self.rules,
        )

    @staticmethod
    def _taken_over(active: ActiveTrial) -> PruneDecision:
        # Another coordinator failed this trial as stale (we looked dead for too long) and
        # queued its re-run; this copy stops and is not told.
        active.taken_over = True
        return PruneDecision(Reason.TAKEN_OVER)

    def catch_up(self, active: ActiveTrial) -> None:
        """Report, in order, the epochs answered while the storage was away; then let the
        Optuna pruner judge the latest (its decision reaches the worker with its next answer)."""
        if not active.unreported:
            return
        unreported, active.unreported = active.unreported, []
        reported: EpochView | None = None
        try:
            for message in unreported:
                view = EpochView.from_metrics(message.epoch, message.metrics)
                if report_epoch(active.trial, view):
                    reported = view
            if active.prune is None and reported is not None:
                active.prune = pruner_decision(active.trial, reported)
        except optuna.exceptions.UpdateFinishedTrialError:
            active.prune = self._taken_over(active)
