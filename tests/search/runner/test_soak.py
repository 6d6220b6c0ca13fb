"""Soak: 3 coordinators x 2 workers, 30 trials on PostgreSQL, 10 random kills, a database cut.

Three real `search.run` processes (scripted workers: what is under test is the coordinators'
bookkeeping, not training) share one study on the shared PostgreSQL server, through a TCP proxy
of the test's own, and one live `mlflow server`. While they run, the test kills, at random
(seeded), 5 worker processes and 5 coordinators (each killed coordinator is started again with
the same command, as a user resumes), and cuts every database connection once, in the middle.
The study's last trials (one per slot) wait for a gate the test opens after the last fault, so
that every fault lands while the study runs, however fast the machine.
When the study ends: exactly 30 trials counted, trial numbers dense, nothing RUNNING or
WAITING, one closed MLflow run per trial, and every re-run with its original's parameters.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import psutil
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import wait_for
from tests.search.harness import (
    CoordinatorProcess,
    check_final_invariants,
    print_fault_figures,
    snapshot,
    trial_count,
)
from tests.search.servers import free_port, mlflow_server_command, started, wait_until_ready
from tests.search.tcp_proxy import CuttableProxy

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.faults]

TARGET = 30
#: Trials from this number on (and every re-run numbered after it) wait for the gate.
GATED_FROM = TARGET - 6
KILLS = {"worker": 5, "coordinator": 5}
CUT_SECONDS = 5.0


@pytest.fixture
def stores(
    databases: tuple[str, str], tmp_path: Path
) -> Iterator[tuple[str, str, str, CuttableProxy]]:
    """(Optuna URL through the proxy, direct Optuna URL, MLflow server URL, the proxy)."""
    direct = make_url(databases[0])
    optuna.storages.RDBStorage(direct.render_as_string(hide_password=False)).engine.dispose()
    proxy = CuttableProxy(direct.host or "127.0.0.1", direct.port or 5432)
    through = direct.set(host="127.0.0.1", port=proxy.port)
    port = free_port()
    log = tmp_path / "mlflow-server.log"
    try:
        with started(mlflow_server_command(tmp_path, port), log) as server:
            url = f"http://127.0.0.1:{port}"
            wait_until_ready(server, f"{url}/health", log)
            yield (
                through.render_as_string(hide_password=False),
                direct.render_as_string(hide_password=False),
                url,
                proxy,
            )
    finally:
        proxy.close()


class Host:
    """One coordinator "host": its command, its process, a thread draining its output."""

    def __init__(self, index: int, storage: str, tracking: str, folder: Path, gate: Path) -> None:
        self.args = [
            "--study", "smoke", "--n-trials", str(TARGET), "--workers", "2",
            "--storage", storage, "--tracking-uri", tracking, "--output", f"host{index}",
            "--heartbeat-interval", "1", "--grace-period", "10",
            "--max-consecutive-failures", "50", "--storage-retry-s", "120",
        ]  # fmt: skip
        self.folder = folder
        self.environment = {
            "SCRIPTED_SECONDS_PER_EPOCH": "0.6",
            "SCRIPTED_GATE": str(gate),
            "SCRIPTED_GATE_FROM": str(GATED_FROM),
        }
        self.logs: list[str] = []
        self.start()

    def start(self) -> None:
        self.process = CoordinatorProcess(
            self.args,
            self.folder,
            self.environment,
            module="tests.search.scripted_run",
        )
        self.drain = threading.Thread(target=self.process.read_until, args=(lambda _: False,))
        self.drain.start()

    def running(self) -> bool:
        return self.process.process.poll() is None

    def kill_coordinator(self) -> None:
        self.process.kill()
        self.drain.join(timeout=60)
        self.logs.append(self.process.output)
        self.start()  # the user runs the same command again
        # Its start checks the database (one `error:` line if it cannot reach it, as for a
        # user); the cut comes once it has joined the study.
        lines = self.process.lines
        assert wait_for(lambda: any(line.startswith("study smoke:") for line in lines), 120)

    def kill_worker(self, rng: random.Random) -> bool:
        with contextlib.suppress(psutil.NoSuchProcess):
            workers = psutil.Process(self.process.process.pid).children()
            if workers:
                rng.choice(workers).send_signal(signal.SIGKILL)
                return True
        return False

    def finish(self) -> int:
        code = self.process.process.wait(timeout=600)
        self.drain.join(timeout=60)
        self.logs.append(self.process.output)
        return code


def test_soak_kills_and_a_database_cut_lose_nothing(
    stores: tuple[str, str, str, CuttableProxy], tmp_path: Path
) -> None:
    through, direct, tracking, proxy = stores
    rng = random.Random(20261202)
    watch = optuna.storages.RDBStorage(direct)
    gate = tmp_path / "gate"
    hosts = [Host(index, through, tracking, tmp_path, gate) for index in range(3)]
    events = ["worker"] * KILLS["worker"] + ["coordinator"] * KILLS["coordinator"]
    rng.shuffle(events)
    done: list[str] = []
    try:
        # The faults start once the study is under way.
        assert wait_for(lambda: trial_count(watch, "smoke", finished=True) >= 3, 300)
        for index, event in enumerate(events):
            time.sleep(rng.uniform(1.0, 2.5))
            if index == len(events) // 2:
                proxy.cut()
                time.sleep(CUT_SECONDS)
                proxy.restore()
            # Every fault lands while the study still runs: no coordinator has ended.
            assert all(host.running() for host in hosts), f"one ended before fault {index + 1}"
            if event == "coordinator":
                rng.choice([host for host in hosts if host.running()]).kill_coordinator()
                done.append(event)
            elif wait_for(
                # A host may be between trials, or just restarted: the first with a worker.
                lambda: any(host.kill_worker(rng) for host in rng.sample(hosts, len(hosts))),
                30,
            ):
                done.append(event)
        gate.touch()  # the held trials go on, and the study ends
        codes = [host.finish() for host in hosts]
    finally:
        watch.engine.dispose()
        for number, host in enumerate(hosts):
            (tmp_path / f"host{number}.log").write_text("\n\n".join(host.logs))
    assert sorted(done) == sorted(events) and proxy.cuts == 1
    assert codes == [0, 0, 0], [host.logs[-1][-3000:] for host in hosts]
    final = snapshot("smoke", direct, tracking, TARGET)
    check_final_invariants(final, TARGET)
    assert print_fault_figures("soak", len(done) + proxy.cuts, final, TARGET) == 0
