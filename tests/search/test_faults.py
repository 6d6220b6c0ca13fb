"""Fault-injection suite, worker half: kill workers, inject OOM and NaN in real Keras workers,
and check that each fault is handled as the retry policy says and nothing was lost, duplicated
or left RUNNING.

Faults no CPU machine can cause (GPU OOM) or wait for (the OOM killer) are injected with
FINETUNE_SEARCH_FAULTS (search/faults.py) through the same code paths the real faults take.
The coordinator half (kill -9, Ctrl-C, resume) is test_faults_coordinator.py. The figures
(faults injected, trials completed, trials lost) are printed at the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.conftest import REPO
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
    (tmp_path / "weights").symlink_to(REPO / "weights")
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
