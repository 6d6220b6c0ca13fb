"""Fault-injection suite, coordinator half: kill -9 and Ctrl-C the coordinator at random epochs,
resume, and check after every fault that nothing was lost, duplicated or left RUNNING.

The coordinators are the real `search.run` command; their workers play scripted epochs
(tests/search/scripted_run.py), since only the coordinator is under test, so the kills can land
at many points in a few seconds. The worker half (real Keras workers, injected OOM and NaN) is
test_faults.py. The figures are printed at the end.
"""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
from optuna.trial import TrialState

from search.vocabulary import TrialAttr
from tests.search.harness import (
    CoordinatorProcess,
    check_final_invariants,
    check_nothing_lost,
    has_epochs_left,
    is_epoch_line,
    print_fault_figures,
    smoke_command,
    snapshot,
)

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def test_random_coordinator_kills_and_ctrl_c_lose_no_trial(tmp_path: Path) -> None:
    target = 6
    rng = random.Random(20261122)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    faults = 0

    def coordinator(seconds_per_epoch: float) -> CoordinatorProcess:
        # A signal must land while a trial still trains, however late this test reads the
        # coordinator's lines on a loaded machine: slow epochs give it that margin.
        return CoordinatorProcess(
            smoke_command(target),
            tmp_path,
            {"SCRIPTED_SECONDS_PER_EPOCH": str(seconds_per_epoch)},
            module="tests.search.scripted_run",
        )

    # 1. kill -9 the coordinator at a random epoch of a trial that has epochs left.
    first = coordinator(seconds_per_epoch=2.0)
    for _ in range(rng.randint(3, 8)):
        assert first.read_until(is_epoch_line), first.output[-3000:]
    assert first.read_until(has_epochs_left), first.output[-3000:]
    first.kill()
    faults += 1
    after_kill = snapshot("smoke", storage, tracking, target)
    # The trials it was running are still RUNNING: only their heartbeats can tell.
    orphaned = [n for n, s in after_kill.states.items() if s == TrialState.RUNNING]
    assert orphaned

    # 2. Resume; once the dead coordinator's trials went stale (and were queued again), Ctrl-C
    # during a trial's epochs: trials are marked, stores stay consistent.
    second = coordinator(seconds_per_epoch=10.0)
    for _ in orphaned:
        assert second.read_until(lambda line: " stale_heartbeat: " in line), second.output
    # Stop a trial that still has epochs to train (10 s each): one that sent its last epoch
    # just before the Ctrl-C keeps its result, which is right but leaves nothing to check.
    assert second.read_until(has_epochs_left), second.output[-2000:]
    second.signal(signal.SIGINT)
    assert second.finish() == 130
    faults += 1
    assert "Resume with:" in second.output and "python -m search.run --study smoke" in second.output
    after_interrupt = snapshot("smoke", storage, tracking, target)
    check_nothing_lost(after_kill, after_interrupt)
    # The dead coordinator's trials went stale, were failed and queued again.
    assert all(n in after_interrupt.retried() for n in orphaned)
    interrupted = after_interrupt.with_reason("interrupted")
    assert interrupted and set(interrupted) <= after_interrupt.retried()
    assert all(after_interrupt.run_status[n] == ["KILLED"] for n in interrupted)
    assert not [n for n, s in after_interrupt.states.items() if s == TrialState.RUNNING]

    # 3. Resume to the end.
    third = coordinator(seconds_per_epoch=0.3)
    assert third.finish() == 0, third.output[-3000:]
    final = snapshot("smoke", storage, tracking, target)
    check_nothing_lost(after_interrupt, final)
    check_final_invariants(final, target)
    # Every interrupted trial was re-run exactly once with the same parameters.
    for number in [*orphaned, *interrupted]:
        reruns = [n for n, a in final.user_attrs.items() if a.get(TrialAttr.RETRY_OF) == number]
        assert len(reruns) == 1 and final.params[reruns[0]] == final.params[number]
    assert print_fault_figures("coordinator faults", faults, final, target) == 0
