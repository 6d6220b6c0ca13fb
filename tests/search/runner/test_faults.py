"""Fault-injection suite, worker half: kill workers, inject OOM and NaN in real Keras workers,
and check that each fault is handled as the retry policy says and nothing was lost, duplicated
or left RUNNING.

Faults no CPU machine can cause (GPU OOM) or wait for (the OOM killer) are injected with
FINETUNE_SEARCH_FAULTS (search/runner/faults.py) through the same code paths the real faults take.
The coordinator half (kill -9, Ctrl-C, resume) is test_faults_coordinator.py. The figures
(faults injected, trials completed, trials lost) are printed at the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.search.harness import (
    CoordinatorProcess,
    check_final_invariants,
    print_fault_figures,
    smoke_command,
    snapshot,
)

pytestmark = [pytest.mark.slow, pytest.mark.faults]

# Worker faults, keyed by trial number: a kill (OOM killer), a GPU OOM, a real NaN, a host OOM.
WORKER_FAULTS = "kill@0:1,gpu_oom@1:2,nan@2:1,host_oom@3:1"


def test_injected_worker_faults_are_handled_as_the_policy_says(tmp_path: Path) -> None:
    target = 4
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    coordinator = CoordinatorProcess(
        smoke_command(target), tmp_path, {"FINETUNE_SEARCH_FAULTS": WORKER_FAULTS}
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
    assert print_fault_figures("worker faults", 4, final, target) == 0


def test_workers_killed_while_writing_the_cache_cost_one_retry_each(tmp_path: Path) -> None:
    """Trials 0 and 1 start together and both need the decoded images: whichever takes the
    cache's lock first dies after writing one chunk, the other then takes the lock, removes
    the partial entry, and dies the same way. Their re-runs build the entries and share them."""
    target = 2
    coordinator = CoordinatorProcess(
        smoke_command(target),
        tmp_path,
        {"FINETUNE_SEARCH_FAULTS": "kill_caching@0:1,kill_caching@1:1"},
    )
    assert coordinator.finish() == 0, coordinator.output[-3000:]
    final = snapshot(
        "smoke",
        f"sqlite:///{tmp_path / 'optuna.db'}",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        target,
    )
    assert final.with_reason("worker_died") == [0, 1]
    assert {0, 1} <= final.retried()
    check_final_invariants(final, target)
    cache = tmp_path / "runs" / "search" / "smoke" / "cache"
    entries = [path.name for path in cache.iterdir() if path.is_dir()]
    assert not [name for name in entries if ".tmp-" in name]  # no partial entry left
    # One entry of decoded images and one of features, shared by the re-runs (and one of
    # activations per unfreezing level the fine-tune phases used).
    kinds = [name.split("-")[0] for name in entries]
    assert (kinds.count("images"), kinds.count("features")) == (1, 1), entries
    for number in (0, 1):
        log = (cache.parent / f"trial-{number:04d}" / "worker.log").read_text()
        assert "injecting fault 'kill_caching' after chunk 1" in log
    assert print_fault_figures("cache write faults", 2, final, target) == 0
