"""What the runner prints, and the summary it leaves on the study's MLflow parent run."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.reporting.study_plots import plot_study
from search.study.budget import Budget, Limit
from search.tracking.runs import StudyTracker
from search.trial.outcomes import outcome_label
from search.vocabulary import TrialAttr
from trainers.fit.window import EpochWindow

Log = Callable[[str], None]


@dataclass(frozen=True)
class StudySummary:
    study_name: str
    outcomes: dict[str, int]
    finished: int
    target: int | None
    best_value: float | None
    best_trial: int | None


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def budget_text(spent: Budget) -> str:
    """Compute spent, against the budget where there is one: `34/100 epochs, 5m12s/2h trial
    time`."""
    limits = spent.limits
    epochs = f"{spent.epochs_spent}/{limits.epochs}" if limits.epochs else str(spent.epochs_spent)
    seconds = format_duration(spent.seconds_spent)
    hours = f"{seconds}/{limits.hours:g}h" if limits.hours else seconds
    return f"{epochs} epochs, {hours} trial time"


def trials_text(spent: Budget) -> str:
    """Trials that used the budget, against the target where there is one: `5/8`."""
    return f"{spent.used}/{spent.target}" if spent.target is not None else str(spent.used)


#: Why a study started no more trials, by the limit it reached.
STOPPED_BY = {
    Limit.TRIALS: "trial target reached",
    Limit.EPOCHS: "epoch budget reached",
    Limit.HOURS: "trial-hour budget reached",
    Limit.TIMEOUT: "--timeout reached",
    Limit.SEARCH: "the engine's search is complete",
}


def best_trial(study: optuna.Study) -> tuple[float | None, int | None]:
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        return None, None
    best = max(completed, key=lambda trial: trial.value or -math.inf)
    return best.value, best.number


def study_line(name: str, spent: Budget, storage: str, tracking: str, workers: int) -> str:
    """The line a coordinator starts with: what the study has done, and where it is kept."""
    return (
        f"study {name}: {trials_text(spent)} trials finished"
        f"{', continuing' if spent.used else ''} ({budget_text(spent)}); "
        f"storage {storage}; MLflow {tracking} (experiment {name!r}); {workers} worker(s)"
    )


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def started_line(
    number: int,
    slot: int,
    params: Mapping[str, Any],
    user_attrs: Mapping[str, Any],
    window: EpochWindow,
) -> str:
    """The line a trial's start prints: its slot, whether it re-runs or continues another
    trial, its window of epochs, and its parameters."""
    retry_of = user_attrs.get(TrialAttr.RETRY_OF)
    again = "" if retry_of is None else f", re-running trial {retry_of} with the same params"
    epochs = ""
    if window.after_epoch:
        continued = user_attrs.get(TrialAttr.CONTINUES_TRIAL)
        epochs = f", continuing trial {continued} after epoch {window.after_epoch}"
    if window.until_epoch is not None:
        epochs += f", up to epoch {window.until_epoch}"
    shown = ", ".join(f"{name}={_short(value)}" for name, value in params.items())
    return f"trial {number:>3} started (slot {slot}){again}{epochs}: {shown}"


def epoch_line(number: int, epoch: int, total: int, metrics: Mapping[str, float]) -> str:
    phase = int(metrics.get("phase", 1))
    accuracy = metrics.get("val_accuracy", math.nan)
    loss = metrics.get("loss", math.nan)
    return (
        f"  trial {number:>3} epoch {epoch:>3}/{total} [phase {phase}] "
        f"val_acc {accuracy:.4f} loss {loss:.4f}"
    )


def finished_line(
    number: int, state: TrialState, result: str, study: optuna.Study, trial_seconds: float,
    elapsed_seconds: float, spent: Budget,
) -> str:  # fmt: skip
    best_value, best_number = best_trial(study)
    best = "none yet" if best_value is None else f"{best_value:.4f} (trial {best_number})"
    return (
        f"trial {number:>3} {state.name:<8} {result:<40} best {best}  "
        f"[{format_duration(trial_seconds)} trial, {format_duration(elapsed_seconds)} elapsed; "
        f"study {budget_text(spent)}]"
    )


def finish_study(
    study: optuna.Study,
    *,
    spent: Budget,
    stopped_by: Limit | None,
    tracker: StudyTracker,
    plots_folder: Path,
    status: str,
    log: Log,
) -> StudySummary:
    """Plots to the parent run, close it with `status`, print and return the summary;
    `stopped_by` is the limit that ended the study, if one did."""
    outcomes = Counter(outcome_label(trial) for trial in study.get_trials(deepcopy=False))
    best_value, best_number = best_trial(study)
    try:
        plots = plot_study(study, plots_folder)
    except Exception as error:  # plots must never cost the study its results
        log(f"study plots skipped: {type(error).__name__}: {error}")
        plots = []
    tags = {
        "best_trial": str(best_number),
        "best_value": str(best_value),
        TrialAttr.EPOCHS_SPENT: str(spent.epochs_spent),
        TrialAttr.SECONDS_SPENT: f"{spent.seconds_spent:.0f}",
    }
    tracker.finish_study(plots, status=status, tags=tags)
    summary = StudySummary(
        study.study_name, dict(outcomes), spent.used, spent.target, best_value, best_number
    )
    shown = ", ".join(f"{count} {label}" for label, count in sorted(outcomes.items()))
    why = f"; {STOPPED_BY[stopped_by]}" if stopped_by is not None else ""
    log(
        f"study {study.study_name}: {trials_text(spent)} finished ({shown}); spent "
        f"{budget_text(spent)}{why}"
    )
    if best_value is not None:
        log(f"best: trial {best_number} with val_accuracy {best_value:.4f}")
    return summary
