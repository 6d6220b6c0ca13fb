"""Fault-injection suite: kill workers and coordinators at random epochs, inject OOM and NaN,
and check after every fault that nothing was lost, duplicated or left RUNNING.

Two tests share the work. Worker faults run in real Keras workers: faults no CPU machine can
cause (GPU OOM) or wait for (the OOM killer) are injected with FINETUNE_SEARCH_FAULTS
(search/faults.py) through the same code paths the real faults take. Coordinator faults
(SIGKILL, SIGINT, resume) are about the coordinator alone, so its workers play scripted epochs
(tests/search/scripted_run.py) and the kills can land at many more points in the same time.
The figures (faults injected, trials completed, trials lost) are printed at the end of each.
"""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
from optuna.trial import TrialState

from search.vocabulary import TrialAttr
from tests.conftest import REPO
from tests.search.harness import (
    CoordinatorProcess,
    Snapshot,
    check_final_invariants,
    check_nothing_lost,
    has_epochs_left,
    is_epoch_line,
    snapshot,
)

pytestmark = [pytest.mark.slow, pytest.mark.faults]

# Worker faults, keyed by trial number: a kill (OOM killer), a GPU OOM, a real NaN, a host OOM.
WORKER_FAULTS = "kill@0:1,gpu_oom@1:2,nan@2:1,host_oom@3:1"


def _command(target: int) -> list[str]:
    return [
        "--study", "smoke", "--n-trials", str(target), "--workers", "2",
        "--heartbeat-interval", "1", "--grace-period", "4",
    ]  # fmt: skip


def _print_figures(title: str, faults: int, final: Snapshot, target: int) -> int:
    completed = len(final.completed())
    lost = target - final.used + sum(s == TrialState.RUNNING for s in final.states.values())
    print(
        f"\n{title}: {faults} faults injected, {completed} trials completed, "
        f"{sum(s == TrialState.PRUNED for s in final.states.values())} pruned, "
        f"{sum(s == TrialState.FAIL for s in final.states.values())} failed "
        f"({len(final.retried())} of them re-run), {lost} trials lost"
    )
    return lost


def test_injected_worker_faults_are_handled_as_the_policy_says(tmp_path: Path) -> None:
    target = 4
    (tmp_path / "weights").symlink_to(REPO / "weights")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    coordinator = CoordinatorProcess(
        _command(target), tmp_path, {"FINETUNE_SEARCH_FAULTS": WORKER_FAULTS}
    )
    assert coordinator.finish() == 0, coordinator.output[-3000:]
    final = snapshot("smoke", storage, tracking, target)
    assert len(final.with_reason("gpu_oom")) == 1
    assert final.with_reason("gpu_oom")[0] not in final.retried()  # infeasible: no retry
    assert final.with_reason("worker_died") and final.with_reason("host_oom")
    assert set(final.with_reason("worker_died")) <= final.retried()
    assert set(final.with_reason("host_oom")) <= final.retried()
    assert len(final.with_reason("nan")) == 1  # a real NaN loss, pruned
    assert final.states[final.with_reason("nan")[0]] == TrialState.PRUNED
    check_final_invariants(final, target)
    assert _print_figures("worker faults", 4, final, target) == 0


def test_random_coordinator_kills_and_ctrl_c_lose_no_trial(tmp_path: Path) -> None:
    target = 6
    rng = random.Random(20261122)
    (tmp_path / "weights").symlink_to(REPO / "weights")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    faults = 0

    def coordinator() -> CoordinatorProcess:
        return CoordinatorProcess(_command(target), tmp_path, module="tests.search.scripted_run")

    # 1. kill -9 the coordinator at a random epoch.
    first = coordinator()
    for _ in range(rng.randint(3, 8)):
        assert first.read_until(is_epoch_line), first.output[-3000:]
    first.kill()
    faults += 1
    after_kill = snapshot("smoke", storage, tracking, target)
    # The trials it was running are still RUNNING: only their heartbeats can tell.
    orphaned = [n for n, s in after_kill.states.items() if s == TrialState.RUNNING]
    assert orphaned

    # 2. Resume; once the dead coordinator's trials went stale (and were queued again), Ctrl-C
    # at a random epoch: trials are marked, stores stay consistent.
    second = coordinator()
    for _ in orphaned:
        assert second.read_until(lambda line: " stale_heartbeat: " in line), second.output
    for _ in range(rng.randint(2, 5)):
        assert second.read_until(is_epoch_line), second.output[-2000:]
    # Stop a trial that still has epochs to train: one that sent its last epoch just before
    # the Ctrl-C keeps its result, which is right but leaves nothing to check.
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
    third = coordinator()
    assert third.finish() == 0, third.output[-3000:]
    final = snapshot("smoke", storage, tracking, target)
    check_nothing_lost(after_interrupt, final)
    check_final_invariants(final, target)
    # Every interrupted trial was re-run exactly once with the same parameters.
    for number in [*orphaned, *interrupted]:
        reruns = [n for n, a in final.user_attrs.items() if a.get(TrialAttr.RETRY_OF) == number]
        assert len(reruns) == 1 and final.params[reruns[0]] == final.params[number]
    assert _print_figures("coordinator faults", faults, final, target) == 0
