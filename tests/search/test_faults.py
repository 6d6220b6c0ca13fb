"""Fault-injection suite: kill workers and coordinators at random epochs, inject OOM and NaN,
and check after every fault that nothing was lost, duplicated or left RUNNING.

Faults no CPU machine can cause (GPU OOM) or wait for (the OOM killer) are injected with
FINETUNE_SEARCH_FAULTS (search/faults.py); coordinators are killed for real with SIGKILL and
SIGINT. The figures (faults injected, trials completed, trials lost) are printed at the end.
"""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
from optuna.trial import TrialState

from search.coordinator import run_study
from search.retry import StudyStoppedError
from search.vocabulary import TrialAttr
from tests.conftest import REPO
from tests.search.harness import (
    CoordinatorProcess,
    check_final_invariants,
    check_nothing_lost,
    has_epochs_left,
    is_epoch_line,
    is_finished_line,
    snapshot,
)
from tests.search.tiny_study import enqueued, settings, tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.faults]

TARGET = 6
# Worker faults, keyed by trial number: a kill (OOM killer), a GPU OOM, a real NaN, a host OOM.
WORKER_FAULTS = "kill@0:1,gpu_oom@1:2,nan@2:1,host_oom@3:1"


def test_random_kills_and_injected_faults_lose_no_trial(tmp_path: Path) -> None:
    rng = random.Random(20261122)
    (tmp_path / "weights").symlink_to(REPO / "weights")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [
        "--study", "smoke", "--n-trials", str(TARGET), "--workers", "2",
        "--heartbeat-interval", "1", "--grace-period", "4",
    ]  # fmt: skip
    environment = {"FINETUNE_SEARCH_FAULTS": WORKER_FAULTS}
    faults = 4

    # 1. kill -9 the coordinator at a random epoch, once the worker faults have fired.
    first = CoordinatorProcess(command, tmp_path, environment)
    # Trials 0-3 carry the worker faults; two workers may finish them in any order.
    finished: set[int] = set()
    while not {0, 1, 2, 3} <= finished:
        line = first.read_until(is_finished_line)
        assert line, first.output[-3000:]
        finished.add(int(line.split()[1]))
    for _ in range(rng.randint(1, 4)):
        assert first.read_until(is_epoch_line)
    first.kill()
    faults += 1
    after_kill = snapshot("smoke", storage, tracking, TARGET)
    # The trials it was running are still RUNNING: only their heartbeats can tell.
    orphaned = [n for n, s in after_kill.states.items() if s == TrialState.RUNNING]
    assert orphaned
    # The worker faults were handled as the policy says.
    assert len(after_kill.with_reason("gpu_oom")) == 1
    assert after_kill.with_reason("gpu_oom")[0] not in after_kill.retried()  # infeasible: no retry
    assert set(after_kill.with_reason("worker_died")) <= after_kill.retried()
    assert set(after_kill.with_reason("host_oom")) <= after_kill.retried()
    assert len(after_kill.with_reason("nan")) == 1  # a real NaN loss, pruned
    assert after_kill.states[after_kill.with_reason("nan")[0]] == TrialState.PRUNED

    # 2. Resume; Ctrl-C at a random epoch: trials are marked, stores stay consistent.
    second = CoordinatorProcess(command, tmp_path, environment)
    for _ in range(rng.randint(2, 5)):
        assert second.read_until(is_epoch_line), second.output[-2000:]
    # Stop a trial that still has epochs to train: one that sent its last epoch just before
    # the Ctrl-C keeps its result, which is right but leaves nothing to check.
    assert second.read_until(has_epochs_left), second.output[-2000:]
    second.signal(signal.SIGINT)
    assert second.finish() == 130
    faults += 1
    assert "Resume with:" in second.output and "python -m search.run --study smoke" in second.output
    after_interrupt = snapshot("smoke", storage, tracking, TARGET)
    check_nothing_lost(after_kill, after_interrupt)
    # The dead coordinator's trials went stale, were failed and queued again (unless one had
    # used up its --retries already).
    assert all(
        n in after_interrupt.retried() or after_interrupt.user_attrs[n].get("retry_count") == 2
        for n in orphaned
    )
    interrupted = after_interrupt.with_reason("interrupted")
    assert interrupted and set(interrupted) <= after_interrupt.retried()
    assert all(after_interrupt.run_status[n] == ["KILLED"] for n in interrupted)
    assert not [n for n, s in after_interrupt.states.items() if s == TrialState.RUNNING]

    # 3. Resume to the end.
    third = CoordinatorProcess(command, tmp_path, environment)
    assert third.finish() == 0, third.output[-3000:]
    final = snapshot("smoke", storage, tracking, TARGET)
    check_nothing_lost(after_interrupt, final)
    check_final_invariants(final, TARGET)
    # Every interrupted trial was re-run exactly once with the same parameters.
    for number in [*[n for n in orphaned if n in final.retried()], *interrupted]:
        reruns = [n for n, a in final.user_attrs.items() if a.get(TrialAttr.RETRY_OF) == number]
        assert len(reruns) == 1 and final.params[reruns[0]] == final.params[number]

    completed = len(final.completed())
    lost = TARGET - final.used + sum(s == TrialState.RUNNING for s in final.states.values())
    print(
        f"\nfault injection: {faults} faults injected, {completed} trials completed, "
        f"{sum(s == TrialState.PRUNED for s in final.states.values())} pruned, "
        f"{sum(s == TrialState.FAIL for s in final.states.values())} failed "
        f"({len(final.retried())} of them re-run), {lost} trials lost"
    )
    assert lost == 0


def test_consecutive_failures_stop_the_study_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    bad = [enqueued(f"bad-{i}", "missing", 0, head_lr=2e-3 + i * 1e-3) for i in range(4)]
    spec = tiny_spec("doomed", *bad)
    from search.retry import RetryPolicy

    lines: list[str] = []
    with pytest.raises(StudyStoppedError, match="stopping: 2 consecutive trials failed") as stopped:
        run_study(
            spec,
            settings(tmp_path, n_trials=4, retry=RetryPolicy(max_consecutive_failures=2)),
            log=lines.append,
        )
    assert "no such weights file" in str(stopped.value)
    assert "run the same command to resume" in str(stopped.value)
    final = snapshot(
        "doomed", f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}", 4
    )
    # Two trials spent, two left in the budget: it stopped instead of burning them.
    assert final.used == 2
    assert [s for s in final.states.values() if s != TrialState.WAITING] == [TrialState.FAIL] * 2
