"""Replaying pruners on a corpus of finished curves: what each would have saved and lost.

A stack is the collapse rules, alone or followed by an Optuna pruner, fed one configuration at
a time in the corpus's order, epoch by epoch, exactly as the coordinator feeds a study: the
collapse rules on the epochs so far, then `trial.report` and the Optuna pruner. No training.

A **false prune** stops a trial whose whole curve would have ended in the top quarter of the
corpus (by best validation accuracy), or within `NEAR_BEST` of the corpus's best, before its
best epoch, or prunes it: a winner the search loses. A fall after a good epoch stops a trial but
completes it with its best so far (`PruneDecision.keeps_best`), so a winner stopped after its
best epoch (fine-tuning made a good head worse) keeps its value and is not a false prune; a
winner pruned after its best epoch (a stack that does not keep bests) is counted apart too.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import optuna
from optuna.trial import TrialState

from bench.corpus import Corpus, CurveRecord
from bench.trials import best_accuracy
from search.pruning.collapse import CollapseRules, PruneDecision, find_collapse
from search.pruning.decision import decide_epoch

#: A final best within this of the corpus's best counts as a winner, whatever its rank.
NEAR_BEST = 0.01


@dataclass(frozen=True)
class PrunerStack:
    """The collapse rules, optionally followed by an Optuna pruner."""

    name: str
    rules: CollapseRules = field(default_factory=CollapseRules)
    #: False: judge as before the noise test (no validation count given to the rules).
    noise_aware: bool = True
    optuna_pruner: Callable[[], optuna.pruners.BasePruner] | None = None
    #: False: every stop is a prune, as before a fall after a good epoch kept its best.
    keep_best: bool = True


@dataclass(frozen=True)
class ReplayResult:
    stack: str
    task: str
    trials: int
    epochs_total: int
    epochs_run: int
    false_prunes: int
    #: False prunes that came after the configuration's best epoch: the study saw that value,
    #: but as a pruned trial's, which never counts as a result.
    false_prunes_after_best: int
    #: Trials stopped after a good epoch and completed with their best so far.
    stopped_kept: int
    #: Best value among the trials that counted (finished, or stopped with their best kept).
    best_reached: float
    corpus_best: float
    reasons: Counter[str] = field(default_factory=Counter)
    #: Epochs each pruned configuration ran, by its number.
    pruned_at: dict[int, int] = field(default_factory=dict)

    @property
    def pruned(self) -> int:
        return sum(self.reasons.values())

    @property
    def epochs_saved(self) -> float:
        return 1.0 - self.epochs_run / self.epochs_total if self.epochs_total else 0.0


def winners(corpus: Corpus) -> set[int]:
    """Numbers of the configurations a pruner must not stop: top quarter, or near the best."""
    bests = sorted((record.best for record in corpus.records), reverse=True)
    if not bests:
        return set()
    quarter = bests[max(1, math.ceil(len(bests) / 4)) - 1]
    return {
        record.number
        for record in corpus.records
        if record.best >= quarter or record.best >= bests[0] - NEAR_BEST
    }


def _first_prune(
    record: CurveRecord, corpus: Corpus, stack: PrunerStack, study: optuna.Study | None
) -> tuple[int, PruneDecision | None]:
    """Epochs the trial runs under `stack`, and why it was stopped (None: it ran to the end)."""
    trial = study.ask() if study is not None else None
    validation_images = corpus.validation_images if stack.noise_aware else None
    for index, epoch in enumerate(record.epochs):
        collapse = find_collapse(
            record.epochs[: index + 1],
            num_classes=corpus.num_classes,
            validation_images=validation_images,
            unfreezing_phases=record.unfreezing_phases,
            rules=stack.rules,
        )
        # As the coordinator decides: the collapse rules, then (with a study) the report and
        # the Optuna pruner.
        decision = decide_epoch(trial, epoch, collapse)
        if decision is not None and not stack.keep_best:
            decision = replace(decision, keeps_best=False)
        if decision is not None:
            if study is not None and trial is not None:
                if decision.keeps_best:
                    study.tell(trial, best_accuracy(record.epochs[: index + 1]))
                else:
                    study.tell(trial, state=TrialState.PRUNED)
            return index + 1, decision
    if trial is not None and study is not None:
        study.tell(trial, record.best)
    return len(record.epochs), None


def replay_corpus(corpus: Corpus, stack: PrunerStack) -> ReplayResult:
    """Run `stack` over every configuration of `corpus`, in order."""
    study = None
    if stack.optuna_pruner is not None:
        study = optuna.create_study(direction="maximize", pruner=stack.optuna_pruner())
    must_keep = winners(corpus)
    reasons: Counter[str] = Counter()
    pruned_at: dict[int, int] = {}
    epochs_run = false_prunes = false_prunes_after_best = stopped_kept = 0
    best_reached = -math.inf
    for record in corpus.records:
        ran, decision = _first_prune(record, corpus, stack, study)
        epochs_run += ran
        if decision is None:
            best_reached = max(best_reached, record.best)
            continue
        if decision.keeps_best:
            stopped_kept += 1
            best_reached = max(best_reached, best_accuracy(record.epochs[:ran]))
            # It lost its winning epochs only if it was stopped before them.
            false_prunes += record.number in must_keep and ran < record.best_epoch
            continue
        reasons[decision.reason] += 1
        pruned_at[record.number] = ran
        if record.number in must_keep:
            false_prunes += 1
            false_prunes_after_best += ran >= record.best_epoch
    return ReplayResult(
        stack=stack.name,
        task=corpus.task,
        trials=len(corpus.records),
        epochs_total=sum(len(record.epochs) for record in corpus.records),
        epochs_run=epochs_run,
        false_prunes=false_prunes,
        false_prunes_after_best=false_prunes_after_best,
        stopped_kept=stopped_kept,
        best_reached=best_reached,
        corpus_best=max((record.best for record in corpus.records), default=math.nan),
        reasons=reasons,
        pruned_at=pruned_at,
    )
