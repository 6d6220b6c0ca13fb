"""The MLflow tracking server goes away in the middle of a study: the study goes on, loses nothing.

A live `mlflow server` (SQLite store, proxied artifacts) is SIGKILLed while the study's second
trial trains. The real coordinator, with scripted TensorFlow-free workers, keeps training and
telling Optuna; its MLflow writes go to the spool (`search.tracking.spool`). Either the server
comes back on the same port and the coordinator replays the spool itself, or it stays away,
the study ends with one warning, and `python -m search.sync` replays the spool later. Either
way every trial ends with exactly one closed run holding every epoch at its own step, with the
time it was measured, not the time it was replayed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

import search.tracking.spool
from search.runner.coordinator import run_study
from search.sync import main as sync_main
from search.tracking.spool import SPOOL_PREFIX
from search.vocabulary import TrialAttr
from tests.conftest import wait_for
from tests.search.harness import trial_count
from tests.search.scripted_worker import Script, ScriptedWorker
from tests.search.servers import free_port, mlflow_server_command, started, stop, wait_until_ready
from tests.search.tiny_study import settings, tiny_spec

pytestmark = pytest.mark.slow

TRIALS = 5
#: Validation accuracy per epoch; a tiny trial trains 2 or 3 (tests/search/tiny_study.py).
EPOCHS = (0.5, 0.6, 0.7)
#: Each scripted epoch "trains" this long, so that the outage falls inside the study.
SECONDS_PER_EPOCH = 0.6
#: 3 s in CI (the server's own restart adds seconds more); the figures for a 60 s outage
#: (docs/fault-tolerance.md): FINETUNE_SEARCH_OUTAGE_S=60.
OUTAGE_SECONDS = float(os.environ.get("FINETUNE_SEARCH_OUTAGE_S", "3"))
#: The file the outage thread creates once the server answers again.
BACK = "server-is-back"


@dataclass
class Server:
    """An `mlflow server` the test stops and starts again on the same port and store."""

    folder: Path
    port: int = field(default_factory=free_port)
    stack: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.folder / "mlflow-server.log"
        context = started(mlflow_server_command(self.folder, self.port), log)
        process = context.__enter__()
        self.stack.append((context, process))
        wait_until_ready(process, f"{self.url}/health", log)

    def kill(self) -> None:
        """As a crash or a lost host: SIGKILL, no goodbye."""
        context, process = self.stack.pop()
        stop(process, signal.SIGKILL)
        context.__exit__(None, None, None)

    def close(self) -> None:
        while self.stack:
            context, _ = self.stack.pop()
            context.__exit__(None, None, None)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    # Retry the spool every second, not every 15, so the test sees the replay soon.
    monkeypatch.setattr(search.tracking.spool, "RETRY_INTERVAL", 1.0)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.chdir(tmp_path)
    running = Server(tmp_path)
    running.start()
    try:
        yield running
    finally:
        running.close()


def _outage_during_trial_1(server: Server, storage: str, *, back: bool) -> threading.Thread:
    """Kill the server once trial 1 has started; start it again OUTAGE_SECONDS later if
    `back`."""

    def outage() -> None:
        watch = optuna.storages.RDBStorage(storage)
        try:
            assert wait_for(lambda: trial_count(watch, "outage", finished=False) >= 2, 120)
        finally:
            watch.engine.dispose()
        server.kill()
        if back:
            time.sleep(OUTAGE_SECONDS)
            server.start()
            (server.folder / BACK).touch()  # the waiting trials go on (see _run)

    thread = threading.Thread(target=outage, name="outage")
    thread.start()
    return thread


def _run(folder: Path, server: Server, *, back: bool) -> tuple[list[str], optuna.Study]:
    storage = f"sqlite:///{folder / 'optuna.db'}"
    optuna.create_study(study_name="outage", storage=storage, direction="maximize")
    spec = replace(tiny_spec("outage"), rules=replace(tiny_spec("outage").rules, noise_z=0.0))
    lines: list[str] = []
    thread = _outage_during_trial_1(server, storage, back=back)
    script = Script(accuracies=EPOCHS, seconds_per_epoch=SECONDS_PER_EPOCH)
    # When the server comes back, the last trials train after it is up (however long it takes
    # to start on a loaded machine), so that the coordinator replays the spool itself.
    after_return = replace(script, wait_for_file=str(folder / BACK)) if back else script
    scripts = {number: after_return for number in range(3, TRIALS)}
    try:
        summary = run_study(
            spec,
            settings(folder, TRIALS, tracking_uri=server.url),
            log=lines.append,
            worker=ScriptedWorker(scripts, default=script),
        )
    finally:
        thread.join(timeout=180)
    assert summary.finished == TRIALS
    return lines, optuna.load_study(study_name="outage", storage=storage)


def _check_runs(client: MlflowClient, study: optuna.Study) -> None:
    """One closed run per trial; every epoch at its step, timed within its trial."""
    experiment = client.get_experiment_by_name("outage")
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id], "tags.`finetune_search.role` = 'trial'"
    )
    by_trial = {int(run.data.tags["optuna.trial_number"]): run for run in runs}
    trials = study.get_trials()
    assert len(runs) == len(trials) == TRIALS and sorted(by_trial) == list(range(TRIALS))
    for trial in trials:
        assert trial.state == TrialState.COMPLETE
        run = by_trial[trial.number]
        assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert {m.step: m.value for m in history} == trial.intermediate_values
        assert trial.datetime_start is not None and trial.datetime_complete is not None
        started_ms = trial.datetime_start.timestamp() * 1000
        ended_ms = trial.datetime_complete.timestamp() * 1000
        # Measured while the trial ran (a second of slack for clock rounding), not replayed.
        assert all(started_ms - 1000 <= m.timestamp <= ended_ms + 1000 for m in history)
        assert run.data.metrics["objective"] == trial.value
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "history.csv", "worker.log"} <= artifacts
        assert trial.user_attrs[TrialAttr.EPOCHS_SPENT] == len(trial.intermediate_values)


def test_a_server_that_comes_back_gets_every_write_replayed(
    tmp_path: Path, server: Server
) -> None:
    lines, study = _run(tmp_path, server, back=True)
    outage = [line for line in lines if "does not answer" in line]
    assert len(outage) == 1 and outage[0].startswith("warning: MLflow at ")
    assert any("answers again: wrote" in line for line in lines)
    assert not list((tmp_path / "runs").glob(f"{SPOOL_PREFIX}*"))
    _check_runs(MlflowClient(server.url), study)


def test_a_server_that_never_comes_back_is_synced_later(tmp_path: Path, server: Server) -> None:
    lines, study = _run(tmp_path, server, back=False)
    # Every trial still finished and was told to Optuna; the writes wait in the spool.
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * TRIALS
    output = tmp_path / "runs"
    spools = list(output.glob(f"{SPOOL_PREFIX}*.jsonl"))
    assert len(spools) == 1
    kept = [line for line in lines if "did not come back" in line]
    # The whole command, the study's tracking URI with it, run as printed.
    command = f"python -m search.sync --output {output} --tracking-uri {server.url}"
    assert len(kept) == 1 and kept[0].endswith(f"replay them with {command}")
    server.start()
    assert sync_main(command.split()[3:]) == 0
    assert not spools[0].exists()
    client = MlflowClient(server.url)
    _check_runs(client, study)
    # The parent run was closed too, by the replay.
    experiment = client.get_experiment_by_name("outage")
    assert experiment is not None
    parents = client.search_runs(
        [experiment.experiment_id], "tags.`finetune_search.role` = 'study'"
    )
    assert [run.info.status for run in parents] == ["FINISHED"]
    # A second sync finds nothing to write twice.
    assert sync_main(["--output", str(output), "--tracking-uri", server.url]) == 0
