"""The anytime curves of `bench.search_quality`: best result so far against epochs spent.

One panel per seed, one step line per system; the dashed vertical line is stock KerasTuner
Hyperband's budget (its epochs), which every other system was given, the dotted vertical line
a quarter of it (where the last line compares the shipped study's best with KerasTuner's), and
the dotted horizontal line is KerasTuner's final best, which the last line of the benchmark
asks the project to reach.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.search_results import KERAS_TUNER, SystemRun, anytime_epochs


def plot_anytime(runs: Sequence[SystemRun], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; works on machines without a display
    import matplotlib.pyplot as plt

    seeds = sorted({run.seed for run in runs})
    systems = list(dict.fromkeys(run.system for run in runs))
    colours = {system: f"C{index}" for index, system in enumerate(systems)}
    figure, axes = plt.subplots(
        1, len(seeds), figsize=(6 * len(seeds), 4.5), sharey=True, squeeze=False
    )
    for axis, seed in zip(axes.flat, seeds, strict=True):
        for run in (run for run in runs if run.seed == seed):
            points = run.anytime()
            epochs = [0, *(spent for spent, _ in points)]
            bests = [0.0, *(best for _, best in points)]
            width = 2.4 if run.system == KERAS_TUNER else 1.6
            axis.step(
                epochs, bests, where="post", label=run.system, color=colours[run.system],
                linewidth=width,
            )  # fmt: skip
            if run.system == KERAS_TUNER:
                axis.axvline(run.epochs, color=colours[run.system], linestyle="--", alpha=0.6)
                early = anytime_epochs(run.epochs)
                axis.axvline(early, color=colours[run.system], linestyle=":", alpha=0.6)
                axis.axhline(run.best, color=colours[run.system], linestyle=":", alpha=0.6)
        axis.set_title(f"seed {seed}")
        axis.set_xlabel("epochs spent")
        axis.grid(alpha=0.3)
    axes.flat[0].set_ylabel("best validation accuracy so far")
    axes.flat[0].legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
