"""Fast checks of the fault-tolerance pieces: budget, retry policy, slots, lock, fault plans."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.budget import RETRY_OF, StudyLock, budget
from search.faults import Fault, parse_faults
from search.retry import RetryPolicy, enqueue_retry
from search.slots import SlotError, parse_gpus, worker_environments


def test_retry_policy_retries_infrastructure_failures_only() -> None:
    policy = RetryPolicy(retries=2)
    for reason in ("worker_died", "host_oom", "stale_heartbeat"):
        assert policy.should_retry(reason, {})
        assert policy.should_retry(reason, {"retry_count": 1})
        # At most K re-runs of the same parameters.
        assert not policy.should_retry(reason, {"retry_count": 2})
    # Ctrl-C is the user's choice, not the trial's fault: always re-run, never counted.
    assert policy.should_retry("interrupted", {"retry_count": 2})
    # GPU OOM at these parameters is infeasible, input errors and bugs are deterministic.
    for reason in ("gpu_oom", "input", "error"):
        assert not policy.should_retry(reason, {})
    with pytest.raises(ValueError, match="max_consecutive_failures"):
        RetryPolicy(max_consecutive_failures=0)


def test_budget_counts_a_retried_failure_once() -> None:
    study = optuna.create_study(direction="maximize")
    done = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(done, 0.5)
    crashed = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    enqueue_retry(
        study, number=crashed.number, params=crashed.params, user_attrs={}, reason="worker_died"
    )
    study.tell(crashed, state=TrialState.FAIL)
    # The crash is replaced by its queued retry: it does not use the budget.
    assert budget(study, 3) == budget(study, 3).__class__(used=1, running=0, target=3)
    retry = study.ask()
    assert retry.user_attrs[RETRY_OF] == crashed.number and retry.user_attrs["retry_count"] == 1
    assert budget(study, 3).running == 1 and budget(study, 3).remaining == 1
    # An interrupted re-run is queued again without spending one of its retries.
    enqueue_retry(
        study,
        number=retry.number,
        params=retry.params,
        user_attrs=retry.user_attrs,
        reason="interrupted",
    )
    assert study.ask().user_attrs["retry_count"] == 1


def test_gpus_pin_one_worker_each_and_cpu_workers_share_the_cores() -> None:
    assert worker_environments(None, ["0", "1"]) == (
        {"CUDA_VISIBLE_DEVICES": "0"},
        {"CUDA_VISIBLE_DEVICES": "1"},
    )
    assert worker_environments(1, ["2", "3"]) == ({"CUDA_VISIBLE_DEVICES": "2"},)
    with pytest.raises(SlotError, match="one worker per GPU"):
        worker_environments(3, ["0", "1"])
    cpu = worker_environments(2, [], cpu_count=4)
    assert len(cpu) == 2
    assert all(
        env["CUDA_VISIBLE_DEVICES"] == "" and env["TF_NUM_INTRAOP_THREADS"] == "2" for env in cpu
    )
    assert parse_gpus("0, 1") == ["0", "1"]
    for bad in ("", "a,b", "0,0"):
        with pytest.raises(SlotError):
            parse_gpus(bad)


def _hold(url: str, seconds: float, started: multiprocessing.synchronize.Event) -> None:
    with StudyLock(url, "s").held():
        started.set()
        time.sleep(seconds)


def test_study_lock_excludes_other_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    holder = context.Process(target=_hold, args=(url, 1.5, started))
    holder.start()
    assert started.wait(30)
    began = time.monotonic()
    with StudyLock(url, "s").held():
        waited = time.monotonic() - began
    holder.join()
    # We got the lock only once the other process let go of it.
    assert waited > 0.5


def test_fault_plans_parse_and_reject_typos() -> None:
    assert parse_faults("kill@2:1, gpu_oom@4:2") == [Fault("kill", 2, 1), Fault("gpu_oom", 4, 2)]
    with pytest.raises(ValueError, match="unknown fault 'segfault'"):
        parse_faults("segfault@1:1")
    with pytest.raises(ValueError, match="kind@trial:epoch"):
        parse_faults("kill@1")
