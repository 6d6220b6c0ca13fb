"""Where each pruner stack stops the corpus's curves, one panel per stack.

Every configuration's validation accuracy over its epochs: winners (the top quarter) in colour,
the rest in grey. Where a stack prunes a curve, a cross marks the epoch and the rest of the
curve, which the stack never saw, is faded; a red cross is a false prune.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from bench.corpus import Corpus
from bench.replay import ReplayResult, winners


def plot_prunes(corpus: Corpus, results: Sequence[ReplayResult], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; works on machines without a display
    import matplotlib.pyplot as plt

    must_keep = winners(corpus)
    columns = min(3, len(results))
    rows = math.ceil(len(results) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(5 * columns, 4 * rows), sharey=True, squeeze=False
    )
    for axis in axes.flat[len(results) :]:
        axis.set_visible(False)
    for axis, result in zip(axes.flat, results, strict=False):
        for record in corpus.records:
            epochs = [epoch.epoch for epoch in record.epochs]
            accuracies = [epoch.val_accuracy for epoch in record.epochs]
            winner = record.number in must_keep
            style = {"linewidth": 1.8, "alpha": 0.9} if winner else {"color": "0.6", "alpha": 0.6}
            ran = result.pruned_at.get(record.number)
            if ran is None:
                axis.plot(epochs, accuracies, **style)
                continue
            (line,) = axis.plot(epochs[:ran], accuracies[:ran], **style)
            axis.plot(epochs[ran - 1 :], accuracies[ran - 1 :], color=line.get_color(), alpha=0.15)
            cross = "red" if winner else "black"
            axis.plot(epochs[ran - 1], accuracies[ran - 1], "x", color=cross, markersize=8)
        lost = f", {result.false_prunes} false" if result.false_prunes else ""
        axis.set_title(
            f"{result.stack}\n{result.pruned} pruned{lost}, {result.epochs_saved:.0%} epochs saved",
            fontsize=9,
        )
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("validation accuracy")
    figure.suptitle(f"{corpus.task}: {len(corpus.records)} configurations of {corpus.data_source}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
