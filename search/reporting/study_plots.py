"""Study-level plots for the MLflow parent run: optimization history, importances, outcomes."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.trial.outcomes import outcome_label


def _matplotlib() -> object:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_study(study: optuna.Study, folder: Path) -> list[Path]:
    """Write the study's plots to `folder`; skips the ones the study has too few trials for."""
    plt = _matplotlib()
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    with warnings.catch_warnings():
        # Experimental-API notices and PED-ANOVA's small-sample notes are not the user's news.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        if completed:
            axes = optuna.visualization.matplotlib.plot_optimization_history(
                study, target_name="best val_accuracy"
            )
            written.append(_save(axes.figure, folder / "optimization_history.png", plt))
        if len(completed) >= 2:
            try:
                axes = optuna.visualization.matplotlib.plot_param_importances(study)
            except (RuntimeError, ValueError) as error:
                # Too little variation among the completed trials to attribute anything.
                print(f"parameter importance skipped: {error}")
            else:
                written.append(_save(axes.figure, folder / "param_importances.png", plt))
    written.append(plot_outcomes(study, folder / "trial_outcomes.png"))
    return written


def plot_outcomes(study: optuna.Study, path: Path) -> Path:
    """How many trials completed, failed, or were pruned, and for which reason."""
    plt = _matplotlib()
    counts = Counter(outcome_label(trial) for trial in study.get_trials(deepcopy=False))
    counts.pop("RUNNING", None)
    counts.pop("WAITING", None)
    labels = sorted(counts)
    height = 1.5 + 0.45 * len(labels)  # room for the title and axis label with one bar
    figure, axis = plt.subplots(figsize=(7, height))  # type: ignore[attr-defined]
    axis.barh(labels, [counts[label] for label in labels], color="tab:blue")
    axis.set_xlabel("trials")
    axis.set_title(f"{study.study_name}: trial outcomes")
    for index, label in enumerate(labels):
        axis.annotate(
            str(counts[label]), (counts[label], index), xytext=(3, -3), textcoords="offset points"
        )
    figure.tight_layout()
    return _save(figure, path, plt)


def _save(figure: object, path: Path, plt: object) -> Path:
    figure.savefig(path, dpi=100, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(figure)  # type: ignore[attr-defined]
    return path
