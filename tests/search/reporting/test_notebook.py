"""notebooks/analyze_study.ipynb executed against a real finished study, and what it draws.

The study is real (the coordinator, a SQLite storage, an MLflow store, spawned workers) but its
workers are scripted (`tests/search/scripted_worker.py`), so it finishes in seconds with every
outcome the notebook shows: completed, pruned with a reason, failed, and a fine-tuning phase.
The notebook runs in a kernel of this interpreter, on a copy with its `parameters` cell
pointed at that study; the committed file is never written to. The analysis functions behind
it are tested on small in-memory studies first.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import nbformat
import optuna
import pytest
from matplotlib.figure import Figure
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from search.reporting.analysis import (
    phase_boundaries,
    scientific_parameters,
    trials_frame,
    validation_curves,
)
from search.reporting.analysis_plots import (
    plot_outcome_counts,
    plot_parameters,
    plot_validation_curves,
)
from search.runner.coordinator import run_study
from search.study.registry import EnqueuedTrial, StudySpec
from search.vocabulary import Reason, StudyAttr, TrialAttr
from spaces.finetune import Suggester
from tests.conftest import PRETRAINED_WEIGHTS, REPO, small_config_dict
from tests.search.scripted_worker import Script, ScriptedWorker
from tests.search.tiny_study import settings
from trainers.config.schema import TrainConfig

NOTEBOOK = REPO / "notebooks" / "analyze_study.ipynb"

# -- the analysis behind the notebook, on in-memory studies -----------------------------------


def _config_yaml(*epochs: int) -> str:
    """A recorded config whose phases train `epochs` each: the first head only, then fine-tune."""
    phases = [
        {"epochs": n, "learning_rate": 1e-3, "unfreeze_blocks": 0 if i == 0 else 2}
        for i, n in enumerate(epochs)
    ]
    return TrainConfig.from_dict(small_config_dict(phases=phases)).to_yaml()


DISTRIBUTIONS: dict[str, Any] = {
    "unfreeze_level": IntDistribution(0, 8),
    "unfreeze_blocks": IntDistribution(0, 8),
    "freeze_bn": CategoricalDistribution((True, False)),
    "head_lr": FloatDistribution(1e-4, 3e-2, log=True),
}


def _add(
    study: optuna.Study,
    params: dict[str, Any],
    curve: dict[int, float],
    config_yaml: str | None,
    state: TrialState = TrialState.COMPLETE,
    **user_attrs: Any,
) -> None:
    if config_yaml is not None:
        user_attrs[TrialAttr.CONFIG_YAML] = config_yaml
    study.add_trial(
        create_trial(
            state=state,
            value=max(curve.values()) if state == TrialState.COMPLETE else None,
            params=params,
            distributions={name: DISTRIBUTIONS[name] for name in params},
            intermediate_values=curve,
            user_attrs=user_attrs,
        )
    )


def _study() -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    # Two head epochs, then two phases of fine-tuning: all three phases trained.
    fine_tuned = {"unfreeze_level": 2, "freeze_bn": True, "head_lr": 3e-3}
    _add(study, fine_tuned, {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.75}, _config_yaml(2, 1, 1))
    # Pruned in its first fine-tuning epoch (epoch 3 of 2 + 2): the boundary at 2 was crossed.
    shocked = {"unfreeze_level": 1, "freeze_bn": False, "head_lr": 1e-2}
    _add(
        study, shocked, {1: 0.5, 2: 0.6, 3: 0.2}, _config_yaml(2, 2), TrialState.PRUNED,
        prune_reason=Reason.UNFREEZE_SHOCK,
    )  # fmt: skip
    # A linear probe: one phase, no boundary.
    _add(study, {"unfreeze_level": 0, "head_lr": 1e-4}, {1: 0.4, 2: 0.55}, _config_yaml(2))
    # Failed before its config was recorded, after one epoch.
    _add(study, {"unfreeze_level": 3}, {1: 0.3}, None, TrialState.FAIL, fail_reason=Reason.ERROR)
    return study


def test_validation_curves_are_the_intermediate_values_by_global_epoch() -> None:
    curves = validation_curves(_study())
    assert list(curves.columns) == ["trial", "outcome", "epoch", "val_accuracy"]
    first = curves[curves["trial"] == 0]
    assert dict(zip(first["epoch"], first["val_accuracy"], strict=True)) == {
        1: 0.5, 2: 0.6, 3: 0.7, 4: 0.75,
    }  # fmt: skip
    outcomes = curves.drop_duplicates("trial").set_index("trial")["outcome"].to_dict()
    assert outcomes == {0: "COMPLETE", 1: "PRUNED: unfreeze_shock", 2: "COMPLETE", 3: "FAIL: error"}
    assert curves.groupby("trial").size().to_dict() == {0: 4, 1: 3, 2: 2, 3: 1}
    assert validation_curves(optuna.create_study()).empty


def test_phase_boundaries_are_the_cumulative_epochs_of_the_recorded_phases() -> None:
    # 2 + 1 + 1 epochs: phase 2 starts after epoch 2, phase 3 after epoch 3; a linear probe and
    # a trial without a recorded config have none.
    assert phase_boundaries(_study()) == {0: (2, 3), 1: (2,), 2: (), 3: ()}


def test_scientific_parameters_fall_back_to_the_defaults_without_recorded_roles() -> None:
    study = _study()
    # head_lr is nuisance by default; of the default scientific ones, only these were sampled.
    assert scientific_parameters(study) == ["unfreeze_level", "freeze_bn"]


def test_scientific_parameters_follow_the_studys_recorded_roles() -> None:
    study = _study()
    roles = {
        "unfreeze_level": "scientific",
        "freeze_bn": "nuisance",
        "head_lr": "scientific",
        "ft_optimizer": "scientific",  # never sampled: left out
        "image_size": "fixed",
    }
    study.set_user_attr(StudyAttr.PARAM_ROLES, roles)
    assert scientific_parameters(study) == ["unfreeze_level", "head_lr"]


def test_an_old_studys_ladder_parameter_is_scientific_under_its_current_name() -> None:
    study = optuna.create_study(direction="maximize")
    _add(study, {"unfreeze_blocks": 3, "freeze_bn": False}, {1: 0.5}, None)
    assert scientific_parameters(study) == ["unfreeze_level", "freeze_bn"]


def test_the_curves_figure_marks_the_phase_boundaries_each_trial_trained_across() -> None:
    study = _study()
    figure = plot_validation_curves(validation_curves(study), phase_boundaries(study))
    assert isinstance(figure, Figure)
    (axis,) = figure.axes
    ticks = [
        (line.get_xdata()[0], line.get_color()) for line in axis.lines if line.get_marker() == "|"
    ]
    # Trial 0's boundaries at 2 and 3, trial 1's at 2; drawn between the epochs they separate.
    assert sorted(x for x, _ in ticks) == [2.5, 2.5, 3.5]
    assert {colour for x, colour in ticks if x == 3.5} == {"tab:green"}
    legend = [text.get_text() for text in axis.get_legend().get_texts()]
    assert legend == [
        "COMPLETE (2)", "FAIL: error (1)", "PRUNED: unfreeze_shock (1)", "next phase",
    ]  # fmt: skip


def test_the_parameter_figure_has_a_panel_per_parameter() -> None:
    frame = trials_frame(_study())
    figure = plot_parameters(frame, ["unfreeze_level", "freeze_bn", "head_lr"])
    assert [axis.get_xlabel() for axis in figure.axes] == ["unfreeze_level", "freeze_bn", "head_lr"]
    # Two completed trials in each panel; a learning rate on a log axis, booleans as categories.
    assert [len(axis.collections[0].get_offsets()) for axis in figure.axes] == [2, 1, 2]
    assert figure.axes[2].get_xscale() == "log"
    assert [tick.get_text() for tick in figure.axes[1].get_xticklabels()] == ["True"]


def test_the_figures_of_a_study_without_trials_are_empty_not_errors() -> None:
    study = optuna.create_study()
    for figure in (
        plot_outcome_counts(trials_frame(study)),
        plot_validation_curves(validation_curves(study), phase_boundaries(study)),
        plot_parameters(trials_frame(study), ["unfreeze_level"]),
    ):
        assert isinstance(figure, Figure)


# -- the notebook, executed against a finished study -------------------------------------------


def notebook_space(trial: Suggester, data_source: str) -> TrainConfig:
    """Head only, or head then fine-tuning with BatchNorm frozen or not; 3 epochs a phase."""
    head_lr = trial.suggest_float("head_lr", 1e-3, 1e-2, log=True)
    phases: list[dict[str, Any]] = [{"epochs": 3, "learning_rate": head_lr}]
    if trial.suggest_int("unfreeze_level", 0, 1):
        freeze_bn = trial.suggest_categorical("freeze_bn", [True, False])
        phases.append(
            {
                "epochs": 3,
                "learning_rate": 1e-4,
                "unfreeze_blocks": 1,
                "freeze_batchnorm": freeze_bn,
            }
        )
    return TrainConfig.from_dict(
        {
            "data": {
                "source": data_source,
                "image_size": 32,
                "synthetic": {"classes": 4, "images_per_class": 12},
            },
            "model": {"backbone": "MobileNetV3Small", "weights": str(PRETRAINED_WEIGHTS)},
            "phases": phases,
            "batch_size": 16,
        }
    )


TWO_PHASES = (1, 1, 1, 2, 2, 2)
SCRIPTS = {
    # Fine-tuning that helps: completes.
    0: Script(accuracies=(0.5, 0.7, 0.8, 0.82, 0.86, 0.87), phases=TWO_PHASES),
    # Fine-tuning that loses a third of the head's accuracy and does not recover.
    1: Script(accuracies=(0.8, 0.85, 0.86, 0.6, 0.62, 0.7), phases=TWO_PHASES),
    # A head-only trial whose worker fails after one epoch (an error: not re-run).
    2: Script(fail=Reason.ERROR, fail_after=1),
    3: Script(accuracies=(0.5, 0.6, 0.65)),
}
ENQUEUED = (
    EnqueuedTrial("fine_tune", {"head_lr": 3e-3, "unfreeze_level": 1, "freeze_bn": True}),
    EnqueuedTrial("shock", {"head_lr": 3e-3, "unfreeze_level": 1, "freeze_bn": False}),
    EnqueuedTrial("fails", {"head_lr": 1e-2, "unfreeze_level": 0}),
    EnqueuedTrial("head_only", {"head_lr": 2e-3, "unfreeze_level": 0}),
)


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(study name, storage URL) of a finished 4-trial study of every outcome."""
    folder = tmp_path_factory.mktemp("notebook_study")
    spec = StudySpec(
        name="notebook",
        description="the analysis notebook's test study",
        space=notebook_space,
        default_data="synthetic:target",
        n_trials=4,
        enqueued=ENQUEUED,
        pruner_startup_trials=100,  # only the collapse rules prune
        sampler_startup_trials=100,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # MLflow puts a SQLite store's artifacts under ./mlruns
        run_study(
            spec,
            settings(folder, 4),
            log=lambda _: None,
            worker=ScriptedWorker(SCRIPTS, default=Script(accuracies=(0.5, 0.6, 0.7))),
        )
    return spec.name, f"sqlite:///{folder / 'optuna.db'}"


def _text(cell: nbformat.NotebookNode) -> str:
    """Everything a cell printed or showed as text."""
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        data = output.get("data", {})
        parts += [data.get("text/plain", ""), data.get("text/html", "")]
    return "\n".join(part for part in parts if part)


def _images(cell: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


def test_the_committed_notebook_carries_no_outputs() -> None:
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code and all(cell["outputs"] == [] for cell in code)
    assert all(cell["execution_count"] is None for cell in code)
    # Its parameters are the user's defaults, in the cell the test replaces.
    (parameters,) = [cell for cell in code if "parameters" in cell["metadata"].get("tags", [])]
    assert "".join(parameters["source"]) == 'STUDY = "demo"\nSTORAGE = "sqlite:///optuna.db"'


@pytest.mark.slow
def test_the_notebook_runs_on_a_finished_study_and_shows_every_outcome(
    finished_study: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, storage = finished_study
    study = optuna.load_study(study_name=name, storage=storage)
    states = [trial.state for trial in study.get_trials()]
    complete, failed = TrialState.COMPLETE, TrialState.FAIL
    # Trial 1's fine-tune lost a third of its head's accuracy: stopped, and completed with the
    # head's best.
    assert states[:4] == [complete, complete, failed, complete]
    assert study.get_trials()[1].user_attrs[TrialAttr.STOP_REASON] == "unfreeze_shock"
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    (parameters,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    parameters.source = f"STUDY = {name!r}\nSTORAGE = {storage!r}"
    notebook.cells.append(new_code_cell("import sys\nprint(sys.executable, end='')"))
    # The kernel imports the repository and draws with Jupyter's inline backend, whatever the
    # environment running the tests says.
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails

    cells = {cell.get("id"): cell for cell in notebook.cells}
    # The kernel is this interpreter (the virtual environment's), not some other Python.
    assert _text(notebook.cells[-1]) == sys.executable
    # (1) Outcomes with their reasons: the chart, the counts, the pruned trial's evidence.
    assert _images(cells["cell-4"]) == 1
    counts = _text(cells["cell-4b"])
    stopped_label = "COMPLETE (stopped: unfreeze_shock)"
    assert all(label in counts for label in ("COMPLETE", stopped_label, "FAIL: error"))
    stopped = _text(cells["cell-4d"])
    assert stopped_label in stopped and "best 0.860 → 0.600, 0.620" in stopped
    # (2) The strategy table, the fine-tuning and the head-only strategies each a row.
    strategies = _text(cells["cell-6"])
    assert all(word in strategies for word in ("unfrozen_units", "freeze_bn", "median", "0.87"))
    assert "n/a (frozen)" in strategies
    # (3) The validation curves and (4) the scientific parameters' slice plot, each shown once.
    assert _images(cells["cell-8"]) == 1
    assert "['unfreeze_level', 'freeze_bn']" in _text(cells["cell-10"])
    assert _images(cells["cell-11"]) == 1
    assert sum(_images(cell) for cell in notebook.cells) == 3
    assert not [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"]
    # The committed notebook was read, not written.
    assert all(not cell["outputs"] for cell in _code_cells(NOTEBOOK))


def _code_cells(path: Path) -> list[dict[str, Any]]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [cell for cell in cells if cell["cell_type"] == "code"]
