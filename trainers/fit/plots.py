"""Learning-curve plot of one training run, with phase boundaries and the best epoch marked.

A peak-then-collapse or an unfreeze shock is obvious in this picture and easy to miss in a
table, which is why every production run and every search trial saves one.
"""

from __future__ import annotations

import math
from pathlib import Path

from trainers.fit.history import TrainingHistory


def plot_learning_curves(history: TrainingHistory, path: str | Path, *, title: str = "") -> Path:
    """Accuracy and loss per global epoch, train and validation, to a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")  # files only; works on machines without a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = history.series("epoch")
    figure, (accuracy_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for axis, metric in ((accuracy_axis, "accuracy"), (loss_axis, "loss")):
        for prefix, style in (("", "--"), ("val_", "-")):
            values = history.series(prefix + metric)
            if any(math.isfinite(value) for value in values):
                axis.plot(epochs, values, style, marker="o", label=(prefix or "train_") + metric)
        for phase, start in history.phase_starts().items():
            if phase > 1:
                axis.axvline(start - 0.5, color="grey", linestyle=":")
                axis.annotate(
                    f"phase {phase}",
                    (start - 0.5, 1.0),
                    xycoords=("data", "axes fraction"),
                    rotation=90,
                    va="top",
                    ha="right",
                    fontsize=8,
                    color="grey",
                )
        axis.set_xlabel("epoch (global)")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    losses = [v for p in ("", "val_") for v in history.series(p + "loss") if math.isfinite(v)]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 50:
        # A blown-up loss (the collapse this project hunts) would flatten everything else.
        loss_axis.set_yscale("log")
    best = history.best_epoch
    if best is not None:
        accuracy_axis.axvline(
            best, color="green", alpha=0.3, linewidth=6, label=f"best (epoch {best})"
        )
    accuracy_axis.legend(fontsize=8)
    loss_axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
