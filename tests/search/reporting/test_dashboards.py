"""A finished study as its two dashboards show it: optuna-dashboard and a live MLflow server.

One study of three trials (COMPLETE, PRUNED by the `collapse` rule, FAILED) runs through the
real coordinator (`search.runner.coordinator.run_study`) into a SQLite Optuna storage and a live
`mlflow server` (SQLite backend store, proxied artifacts), as in docs/running.md ("Comparing trials
in MLflow" and "Dashboards"). The workers play scripted epochs (tests/search/scripted_worker.py):
the coordinator writes every MLflow run, metric, tag and artifact itself, so what is checked is
what real trials leave, without training. Both servers are then read over HTTP only, as their
web pages read them: the `optuna-dashboard` command's JSON API and MLflow's REST API (no
MlflowClient), and what they report is compared with the Optuna study.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from search.runner.coordinator import run_study
from search.vocabulary import Reason, TrialAttr
from spaces.finetune import Suggester
from tests.search.scripted_worker import Script, ScriptedWorker
from tests.search.servers import free_port, mlflow_server_command, started, wait_until_ready
from tests.search.tiny_study import enqueued, settings, tiny_space, tiny_spec
from trainers.config.schema import TrainConfig

# Two servers start (several seconds each on 2 shared cores) and a study runs: not a unit test.
pytestmark = pytest.mark.slow

STUDY = "dashboards"
#: What every trial that trained an epoch leaves as its run's artifacts (search/trial/closing.py).
TRIAL_ARTIFACTS = {"config.yaml", "history.csv", "learning_curves.png", "worker.log"}
#: Trial number -> the script its worker plays. Trial 0 completes (best 0.9 at epoch 5);
#: trial 1 falls from just above chance, pruned by `collapse` at its 3rd epoch (a fall after a
#: good epoch would complete with its best);
#: trial 2 fails with an error after 2 epochs (not retried: no infrastructure failure);
#: trial 3, a linear probe, completes too (0.8), so that parameter importances have two
#: completed trials to compare.
SCRIPTS = {
    0: Script(accuracies=(0.5, 0.7, 0.8, 0.85, 0.9, 0.88), phases=(1, 1, 1, 2, 2, 2)),
    1: Script(
        accuracies=(0.15, 0.11, 0.10, 0.10),
        losses=(2.2, 2.3, 2.4, 2.4),
        num_classes=10,
        validation_images=2000,
    ),
    2: Script(fail=Reason.ERROR, fail_after=2),
    3: Script(accuracies=(0.6, 0.75, 0.8)),
}
EXPECTED_STATES = {
    0: TrialState.COMPLETE,
    1: TrialState.PRUNED,
    2: TrialState.FAIL,
    3: TrialState.COMPLETE,
}


def three_epochs_a_phase(trial: Suggester, data_source: str) -> TrainConfig:
    """The tiny space with 3 epochs in every phase, so the collapse has epochs to show."""
    raw = tiny_space(trial, data_source).to_dict()
    return TrainConfig.from_dict({**raw, "phases": [{**p, "epochs": 3} for p in raw["phases"]]})


# -- HTTP ------------------------------------------------------------------------------------


def _get(url: str, **query: str) -> bytes:
    if query:
        url = f"{url}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return bytes(response.read())


def _get_json(url: str, **query: str) -> Any:
    return json.loads(_get(url, **query))


def _post_json(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


# -- the study -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Servers:
    """Where the two dashboards answer."""

    mlflow: str
    optuna_dashboard: str


@dataclass(frozen=True)
class Finished:
    """A study that ran to its end, and where both dashboards find it."""

    storage: str
    servers: Servers
    trials: dict[int, FrozenTrial]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dashboards")


@pytest.fixture(scope="module")
def servers(folder: Path) -> Iterator[Servers]:
    """docs/running.md's shared `mlflow server` (SQLite backend store, proxied artifacts) and its
    `optuna-dashboard sqlite:///optuna.db`, each on a free port, started side by side (the
    MLflow server takes seconds to create its store). The dashboard is up before the study
    exists, as it would be to follow a study live."""
    mlflow_port, dashboard_port = free_port(), free_port()
    mlflow_command = mlflow_server_command(folder, mlflow_port)
    dashboard_command = [
        str(Path(sys.executable).with_name("optuna-dashboard")),
        f"sqlite:///{folder / 'optuna.db'}", "--host", "127.0.0.1", "--port", str(dashboard_port),
    ]  # fmt: skip
    urls = Servers(f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{dashboard_port}")
    with contextlib.ExitStack() as stack:
        mlflow_log, dashboard_log = folder / "mlflow-server.log", folder / "optuna-dashboard.log"
        mlflow = stack.enter_context(started(mlflow_command, mlflow_log))
        # optuna-dashboard opens an existing storage only (it creates no tables): the storage
        # is there once a study has started, as search.run creates it.
        optuna.storages.RDBStorage(f"sqlite:///{folder / 'optuna.db'}").remove_session()
        dashboard = stack.enter_context(started(dashboard_command, dashboard_log))
        wait_until_ready(mlflow, f"{urls.mlflow}/health", mlflow_log)
        wait_until_ready(dashboard, f"{urls.optuna_dashboard}/api/meta", dashboard_log)
        yield urls


@pytest.fixture(scope="module")
def finished(folder: Path, servers: Servers) -> Finished:
    storage = f"sqlite:///{folder / 'optuna.db'}"
    first = (
        enqueued("fine_tune", "pretrained", 1),
        enqueued("collapse", "pretrained", 1, head_lr=5e-3),
        enqueued("fails", "pretrained", 0, head_lr=2e-3),
        enqueued("probe", "pretrained", 0, head_lr=8e-3),
    )
    spec = replace(tiny_spec(STUDY, *first), space=three_epochs_a_phase)
    summary = run_study(
        spec,
        settings(folder, len(SCRIPTS), tracking_uri=servers.mlflow),
        log=lambda line: None,
        worker=ScriptedWorker(SCRIPTS),
    )
    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = {trial.number: trial for trial in study.get_trials()}
    # The study ended as scripted, so both dashboards have every kind of trial to show.
    assert {n: t.state for n, t in trials.items()} == EXPECTED_STATES
    assert trials[1].user_attrs[TrialAttr.PRUNE_REASON] == Reason.COLLAPSE
    assert trials[2].user_attrs[TrialAttr.FAIL_REASON] == Reason.ERROR
    assert (summary.finished, summary.best_trial, summary.best_value) == (4, 0, 0.9)
    return Finished(storage, servers, trials)


# -- optuna-dashboard ------------------------------------------------------------------------


def test_optuna_dashboard_shows_the_finished_study(finished: Finished) -> None:
    optuna_dashboard = finished.servers.optuna_dashboard
    (summary,) = _get_json(f"{optuna_dashboard}/api/studies")["study_summaries"]
    assert summary["study_name"] == STUDY and summary["directions"] == ["maximize"]
    detail = _get_json(f"{optuna_dashboard}/api/studies/{summary['study_id']}")
    assert detail["name"] == STUDY
    trials = {trial["number"]: trial for trial in detail["trials"]}
    assert sorted(trials) == sorted(finished.trials) == [0, 1, 2, 3]
    for number, trial in finished.trials.items():
        shown = trials[number]
        assert shown["state"] == trial.state.name.capitalize()  # "Complete", "Pruned", "Fail"
        # Its learning curve: one point per epoch reported to Optuna.
        steps = [(point["step"], point["value"]) for point in shown["intermediate_values"]]
        assert steps == sorted(trial.intermediate_values.items())
        params = {param["name"]: param["param_external_value"] for param in shown["params"]}
        assert params == {name: str(value) for name, value in trial.params.items()}
        # Its value: Optuna keeps a pruned trial's last intermediate value, a failed one none.
        assert shown.get("values") == trial.values
        attrs = {attr["key"]: attr["value"] for attr in shown["user_attrs"]}
        assert attrs[TrialAttr.EPOCHS_SPENT] == str(trial.user_attrs[TrialAttr.EPOCHS_SPENT])
    assert trials[0]["values"] == [0.9] and trials[1]["values"] == [0.1]
    assert "values" not in trials[2]
    assert [len(trials[n]["intermediate_values"]) for n in range(4)] == [6, 3, 2, 3]
    # Why a trial stopped is in its user attributes, as in MLflow's tags.
    pruned = {attr["key"]: attr["value"] for attr in trials[1]["user_attrs"]}
    assert pruned[TrialAttr.PRUNE_REASON] == "collapse"
    assert pruned[TrialAttr.PRUNE_EVIDENCE] == finished.trials[1].user_attrs["prune_evidence"]
    failed = {attr["key"]: attr["value"] for attr in trials[2]["user_attrs"]}
    assert failed[TrialAttr.FAIL_REASON] == "error"
    assert [best["number"] for best in detail["best_trials"]] == [0]
    assert detail["has_intermediate_values"] is True
    # Parameter importances over the two completed trials: every sampled parameter, summing to 1.
    url = f"{optuna_dashboard}/api/studies/{summary['study_id']}/param_importances"
    (importances,) = _get_json(url)["param_importances"]
    shares = {item["name"]: item["importance"] for item in importances}
    assert set(shares) == set(finished.trials[0].params) == {"weights", "head_lr", "unfreeze_level"}
    assert all(share >= 0 for share in shares.values()) and sum(shares.values()) == pytest.approx(1)
    # The page itself (the bundled web app) is served too.
    assert b"<html" in _get(f"{optuna_dashboard}/dashboard").lower()


# -- MLflow ----------------------------------------------------------------------------------


def _api(server: str, endpoint: str) -> str:
    return f"{server}/api/2.0/mlflow/{endpoint}"


def _tags(run: dict[str, Any]) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}


def _search(server: str, experiment_id: str, filter_string: str = "") -> list[dict[str, Any]]:
    body = {"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 1000}
    return list(_post_json(_api(server, "runs/search"), body).get("runs", []))


def test_mlflow_server_shows_the_study_as_the_readme_says(finished: Finished) -> None:
    server = finished.servers.mlflow
    experiment = _get_json(_api(server, "experiments/get-by-name"), experiment_name=STUDY)
    experiment_id = experiment["experiment"]["experiment_id"]
    runs = _search(server, experiment_id)
    (parent,) = [run for run in runs if _tags(run)["finetune_search.role"] == "study"]
    assert parent["info"]["run_name"] == f"{STUDY} (study)"
    assert parent["info"]["status"] == "FINISHED"
    parent_id = parent["info"]["run_id"]
    assert _tags(parent)["best_trial"] == "0" and _tags(parent)["best_value"] == "0.9"
    # The study's plots: optimization history, parameter importances, trial outcomes.
    parent_files = _get_json(_api(server, "artifacts/list"), run_id=parent_id)["files"]
    assert {f["path"] for f in parent_files} == {
        "optimization_history.png",
        "param_importances.png",
        "trial_outcomes.png",
    }

    # One child run per trial, named after it, closed with the trial's state.
    children = {
        int(_tags(run)["optuna.trial_number"]): run
        for run in runs
        if _tags(run)["finetune_search.role"] == "trial"
    }
    assert len(runs) == 1 + len(children) and sorted(children) == sorted(finished.trials)
    for number, trial in finished.trials.items():
        run = children[number]
        tags = _tags(run)
        assert run["info"]["run_name"] == f"trial-{number:04d}"
        assert tags["mlflow.parentRunId"] == parent_id
        assert tags["optuna.state"] == trial.state.name
        assert run["info"]["status"] == ("FAILED" if trial.state == TrialState.FAIL else "FINISHED")
        # Params: the sampled ones, the resolved config and the units really unfrozen.
        params = {param["key"]: param["value"] for param in run["data"]["params"]}
        assert {name: params[name] for name in trial.params} == {
            name: str(value) for name, value in trial.params.items()
        }
        assert params["unfrozen_units"] == str(trial.params["unfreeze_level"])
        assert params["phase1.learning_rate"] == str(trial.params["head_lr"])
        # Per-epoch metrics at step = global epoch: Optuna's intermediate values.
        history = _get_json(
            _api(server, "metrics/get-history"), run_id=run["info"]["run_id"],
            metric_key="val_accuracy",
        )["metrics"]  # fmt: skip
        assert [(m["step"], m["value"]) for m in history] == sorted(
            trial.intermediate_values.items()
        )
        phases = _get_json(
            _api(server, "metrics/get-history"), run_id=run["info"]["run_id"], metric_key="phase"
        )["metrics"]
        assert [m["step"] for m in phases] == list(range(1, len(history) + 1))
        # What the trial cost, however it ended.
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert metrics["epochs_spent"] == trial.user_attrs[TrialAttr.EPOCHS_SPENT] == len(history)
        assert metrics["seconds_spent"] == trial.user_attrs[TrialAttr.SECONDS_SPENT]
        # Its artifacts, as the README lists them; history.csv holds the epochs it trained.
        files = _get_json(_api(server, "artifacts/list"), run_id=run["info"]["run_id"])["files"]
        assert {f["path"] for f in files} == TRIAL_ARTIFACTS
        assert all(f["file_size"] > 0 for f in files)
        rows = list(csv.DictReader(io.StringIO(_artifact(server, run, "history.csv"))))
        assert [float(row["val_accuracy"]) for row in rows] == [m["value"] for m in history]
        config = _artifact(server, run, "config.yaml")
        assert config == trial.user_attrs[TrialAttr.CONFIG_YAML]

    best_metrics = {m["key"]: m["value"] for m in children[0]["data"]["metrics"]}
    assert best_metrics["objective"] == 0.9 and best_metrics["best_epoch"] == 5
    assert "prune_reason" not in _tags(children[0])
    failed = _tags(children[2])
    assert failed["fail_reason"] == "error" and failed["retried"] == "False"
    # The README's filters find the pruned trial, and its evidence is on the run.
    pruned_by_state = _search(server, experiment_id, "tags.optuna.state = 'PRUNED'")
    pruned_by_reason = _search(server, experiment_id, "tags.prune_reason = 'collapse'")
    assert [r["info"]["run_id"] for r in pruned_by_state] == [children[1]["info"]["run_id"]]
    assert [r["info"]["run_id"] for r in pruned_by_reason] == [children[1]["info"]["run_id"]]
    pruned = _tags(children[1])
    assert pruned["prune_evidence"] == finished.trials[1].user_attrs[TrialAttr.PRUNE_EVIDENCE]
    assert pruned["prune_evidence"].startswith("peak 0.150 at epoch 1 → ")
    worker_log = _artifact(server, children[1], "worker.log")
    assert "stopped by the coordinator after epoch 3: collapse" in worker_log


def _artifact(server: str, run: dict[str, Any], path: str) -> str:
    """An artifact's text as MLflow's web page downloads it."""
    return _get(f"{server}/get-artifact", path=path, run_uuid=run["info"]["run_id"]).decode()
