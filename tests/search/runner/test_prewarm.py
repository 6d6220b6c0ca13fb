"""Prewarmed workers: the next trial's process is started while this one trains, hands over to
exactly one trial, and a standby that is never used ends with the study, on Ctrl-C and when the
coordinator is killed. Scripted workers, whole `search.run` processes."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.search.harness import CoordinatorProcess

# Whole `search.run` processes, a few seconds each: in the full suite, not the fast tier.
pytestmark = pytest.mark.slow

SCRIPTED = "tests.search.scripted_run"


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting to be reaped counts as ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] not in ("Z", "X")


def _standby_pids(output: Path) -> list[int]:
    log = output / "standby.log"
    text = log.read_text() if log.exists() else ""
    return [int(pid) for pid in re.findall(r"standby pid (\d+) \(slot \d+\) ready", text)]


def _smoke(tmp_path: Path, n_trials: int, seconds_per_epoch: float) -> CoordinatorProcess:
    return CoordinatorProcess(
        ["--study", "smoke", "--n-trials", str(n_trials), "--workers", "1"],
        tmp_path,
        {"SCRIPTED_SECONDS_PER_EPOCH": str(seconds_per_epoch)},
        module=SCRIPTED,
    )


def test_every_trial_after_the_first_runs_in_a_prewarmed_process(tmp_path: Path) -> None:
    coordinator = _smoke(tmp_path, 3, 0.5)
    assert coordinator.finish() == 0, coordinator.output[-3000:]
    output = tmp_path / "runs" / "search" / "smoke"
    logs = [(output / f"trial-{n:04d}" / "worker.log").read_text() for n in range(3)]
    assert "prewarmed" not in logs[0]  # nothing to prewarm before the first trial
    handed = [re.search(r"prewarmed worker pid (\d+)", log) for log in logs[1:]]
    assert all(handed), logs
    # One process per trial: two standbys were started, each became one trial's worker, and
    # none was started after the last trial (the study could start no other).
    pids = _standby_pids(output)
    assert sorted(pids) == sorted(int(match[1]) for match in handed if match)
    assert not any(_running(pid) for pid in pids)


@pytest.mark.parametrize("how", ["ctrl-c", "kill -9"])
def test_an_unused_standby_ends_when_the_coordinator_stops(tmp_path: Path, how: str) -> None:
    coordinator = _smoke(tmp_path, 3, 3.0)
    output = tmp_path / "runs" / "search" / "smoke"
    # Trial 0 trains for 9 s; its successor's process is ready long before.
    assert wait_for(lambda: _standby_pids(output), timeout=60), coordinator.output
    (standby,) = _standby_pids(output)
    assert _running(standby)
    if how == "ctrl-c":
        coordinator.signal(signal.SIGINT)
        assert coordinator.finish() == 130
        # The coordinator waits for it before exiting.
        assert not _running(standby)
        assert "not needed; exiting" in (output / "standby.log").read_text()
    else:
        coordinator.kill()
        # The kernel closes its pipe when the coordinator dies.
        assert wait_for(lambda: not _running(standby), timeout=20)
