"""Figures of a finished study for notebooks, drawn from the tables of `search.reporting.analysis`.

Each function takes data and returns a matplotlib Figure, which a notebook displays as the
value of its cell (or a script saves with `figure.savefig`). Matplotlib is imported when a
figure is first drawn, with the caller's backend (Jupyter's inline one, or Agg without a
display); each figure is closed in pyplot before it is returned, so Jupyter shows it once.
One colour per outcome in every figure: COMPLETE green, each PRUNED reason its own warm or
neutral colour, each FAIL reason a red.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

_PRUNED_COLOURS = ("tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
_FAILED_COLOURS = ("tab:red", "darkred", "lightcoral", "firebrick")
#: A numeric parameter spanning more than this factor is drawn on a log axis (learning rates).
_LOG_SPAN = 20.0


def outcome_colours(labels: Sequence[str]) -> dict[str, str]:
    """A colour for each outcome label (`search.trial.outcomes.outcome_label`), stable by name."""
    pruned = sorted({label for label in labels if label.startswith("PRUNED")})
    failed = sorted({label for label in labels if label.startswith("FAIL")})
    colours = {label: "tab:gray" for label in labels}
    colours["COMPLETE"] = "tab:green"
    colours.update({label: _PRUNED_COLOURS[i % 6] for i, label in enumerate(pruned)})
    colours.update({label: _FAILED_COLOURS[i % 4] for i, label in enumerate(failed)})
    return colours


def plot_outcome_counts(frame: pd.DataFrame, title: str = "trial outcomes") -> Figure:
    """A bar per outcome (`trials_frame`'s `outcome` column): how many trials ended that way."""
    import matplotlib.pyplot as plt

    counts = frame["outcome"].value_counts().sort_index() if not frame.empty else pd.Series()
    figure, axis = plt.subplots(figsize=(7, 1.5 + 0.45 * max(len(counts), 1)))
    colours = outcome_colours(list(counts.index))
    axis.barh(list(counts.index), list(counts), color=[colours[label] for label in counts.index])
    for index, count in enumerate(counts):
        axis.annotate(str(count), (count, index), xytext=(3, -3), textcoords="offset points")
    axis.set_xlabel("trials")
    axis.xaxis.set_major_locator(_whole_numbers())
    axis.set_title(title)
    return _finish(figure)


def plot_validation_curves(
    curves: pd.DataFrame,
    boundaries: Mapping[int, Sequence[int]],
    title: str = "validation accuracy per epoch",
) -> Figure:
    """Every trial's curve (`validation_curves`) coloured by outcome; a tick `|` on a curve marks
    where that trial's next phase starts (`phase_boundaries`), an `x` where a pruned or failed
    trial stopped."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5))
    colours = outcome_colours(list(curves["outcome"].unique()))
    for _, curve in curves.groupby("trial", sort=True):
        epochs, values = curve["epoch"].tolist(), curve["val_accuracy"].tolist()
        outcome = str(curve["outcome"].iloc[0])
        colour = colours[outcome]
        axis.plot(epochs, values, color=colour, marker=".", linewidth=1.2, alpha=0.8)
        if outcome != "COMPLETE":
            axis.plot(epochs[-1:], values[-1:], color=colour, marker="x", markersize=8)
        by_epoch = dict(zip(epochs, values, strict=True))
        for boundary in boundaries.get(int(curve["trial"].iloc[0]), ()):
            if boundary in by_epoch and boundary + 1 in by_epoch:  # it trained the next phase
                middle = (by_epoch[boundary] + by_epoch[boundary + 1]) / 2
                axis.plot([boundary + 0.5], [middle], color=colour, marker="|", markersize=14)
    _outcome_legend(axis, colours, curves.drop_duplicates("trial")["outcome"].value_counts())
    axis.set_xlabel("epoch (global, across phases)")
    axis.xaxis.set_major_locator(_whole_numbers())
    axis.set_ylabel("val_accuracy")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    return _finish(figure)


def plot_parameters(frame: pd.DataFrame, parameters: Sequence[str]) -> Figure:
    """A slice plot: one panel per parameter, each completed trial's best val_accuracy against
    its value of that parameter (categories in order, wide numeric ranges on a log axis)."""
    import matplotlib.pyplot as plt

    completed = frame[frame["outcome"].str.startswith("COMPLETE")] if not frame.empty else frame
    panels = max(len(parameters), 1)
    figure, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.6), sharey=True, squeeze=False)
    if completed.empty or not parameters:
        axes[0][0].text(
            0.5, 0.5, "no completed trials", ha="center", transform=axes[0][0].transAxes
        )
    for axis, name in zip(axes[0], parameters, strict=False):
        if name in completed:
            present = completed[completed[name].notna()]
            _slice(axis, present[name], present["value"])
        axis.set_xlabel(name)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("best val_accuracy")
    figure.suptitle("completed trials by scientific parameter")
    return _finish(figure)


def _slice(axis: Axes, values: pd.Series, objective: pd.Series) -> None:
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if numeric and len(values) and values.min() > 0 and values.max() / values.min() > _LOG_SPAN:
        axis.set_xscale("log")
    if numeric:
        axis.scatter(values, objective, color="tab:green", alpha=0.8)
        if (values % 1 == 0).all():  # whole numbers, though stored as floats beside NaN
            axis.xaxis.set_major_locator(_whole_numbers())
    else:  # categories (and booleans) at evenly spaced positions, in sorted order
        categories = sorted({str(value) for value in values})
        positions = [categories.index(str(value)) for value in values]
        axis.scatter(positions, objective, color="tab:green", alpha=0.8)
        axis.set_xticks(range(len(categories)), categories)
        axis.set_xlim(-0.5, max(len(categories), 1) - 0.5)


def _outcome_legend(axis: Axes, colours: Mapping[str, str], counts: pd.Series) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=colours[label], marker=".", label=f"{label} ({counts[label]})")
        for label in sorted(counts.index)
    ]
    handles.append(Line2D([], [], color="black", marker="|", linestyle="", label="next phase"))
    axis.legend(handles=handles, fontsize="small", loc="best")


def _whole_numbers() -> MaxNLocator:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _finish(figure: Figure) -> Figure:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    plt.close(figure)
    return figure
