"""What the runner prints, and the summary it leaves on the study's MLflow parent run."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.outcomes import outcome_label
from search.plots import plot_study
from search.tracking import StudyTracker

Log = Callable[[str], None]


@dataclass(frozen=True)
class StudySummary:
    study_name: str
    outcomes: dict[str, int]
    finished: int
    target: int
    best_value: float | None
    best_trial: int | None


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def best_trial(study: optuna.Study) -> tuple[float | None, int | None]:
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        return None, None
    best = max(completed, key=lambda trial: trial.value or -math.inf)
    return best.value, best.number


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
    elapsed_seconds: float,
) -> str:  # fmt: skip
    best_value, best_number = best_trial(study)
    best = "none yet" if best_value is None else f"{best_value:.4f} (trial {best_number})"
    return (
        f"trial {number:>3} {state.name:<8} {result:<40} best {best}  "
        f"[{format_duration(trial_seconds)} trial, {format_duration(elapsed_seconds)} elapsed]"
    )


def finish_study(
    study: optuna.Study,
    *,
    used: int,
    target: int,
    tracker: StudyTracker,
    plots_folder: Path,
    status: str,
    log: Log,
) -> StudySummary:
    """Plots to the parent run, close it with `status`, print and return the summary."""
    outcomes = Counter(outcome_label(trial) for trial in study.get_trials(deepcopy=False))
    best_value, best_number = best_trial(study)
    try:
        plots = plot_study(study, plots_folder)
    except Exception as error:  # plots must never cost the study its results
        log(f"study plots skipped: {type(error).__name__}: {error}")
        plots = []
    tags = {"best_trial": str(best_number), "best_value": str(best_value)}
    tracker.finish_study(plots, status=status, tags=tags)
    summary = StudySummary(study.study_name, dict(outcomes), used, target, best_value, best_number)
    shown = ", ".join(f"{count} {label}" for label, count in sorted(outcomes.items()))
    log(f"study {study.study_name}: {used}/{target} finished ({shown})")
    if best_value is not None:
        log(f"best: trial {best_number} with val_accuracy {best_value:.4f}")
    return summary
