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

from search.vocabulary import TrialAttr
from tests.search.harness import (
    CoordinatorProcess,
    check_final_invariants,
    print_fault_figures,
    smoke_command,
    snapshot,
)

pytestmark = [pytest.mark.slow, pytest.mark.faults]

#: Worker faults, keyed by trial number. The study's start-up queues its portfolio's first
#: recipes as trials 0 to 2; queued trials run first, in order. Trials 0 and 1 start together
#: and both need the decoded images: whichever takes the cache's lock first is SIGKILLed (as by
#: the OOM killer) after writing one chunk, the other then takes the lock, removes the partial
#: entry, and dies the same way; their re-runs are queued as trials 3 and 4. Without prewarmed
#: workers (`--no-prewarm`), the next process starts only once a trial died, so trial 1 is
#: waiting for the lock long before trial 2 could ask for it. Trial 2 then gets a host OOM and
#: is re-run as trial 5, which is SIGKILLed after its first epoch, mid-training, and re-run as
#: trial 6; re-run 3 gets a real NaN loss, re-run 4 a GPU OOM at epoch 2. The target leaves
#: room for no new trial, so the numbers hold whichever trial ends first.
WORKER_FAULTS = "kill_caching@0:1,kill_caching@1:1,host_oom@2:1,nan@3:1,gpu_oom@4:2,kill@5:1"
#: Trials that count: 3 (pruned), 4 (pruned) and 6.
TARGET = 3


def test_injected_worker_faults_are_handled_as_the_policy_says(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    coordinator = CoordinatorProcess(
        [*smoke_command(TARGET), "--no-prewarm"],
        tmp_path,
        {"FINETUNE_SEARCH_FAULTS": WORKER_FAULTS},
    )
    assert coordinator.finish() == 0, coordinator.output[-3000:]
    final = snapshot("smoke", storage, tracking, TARGET)
    # The schedule's premise: the start-up queued three portfolio recipes ahead of the re-runs
    # (a rebuilt portfolio.yaml of another size would move every fault to another trial).
    labels = [final.user_attrs[number].get(TrialAttr.ENQUEUED) for number in range(3)]
    assert all(str(label).startswith("portfolio:") for label in labels), labels
    assert not any(TrialAttr.RETRY_OF in final.user_attrs[number] for number in range(3))
    assert {final.user_attrs[number].get(TrialAttr.RETRY_OF) for number in (3, 4)} == {0, 1}
    # Killed workers (here while writing the cache) and a host OOM are re-run; a GPU OOM is
    # infeasible (pruned, no re-run); a real NaN loss is pruned.
    assert final.with_reason("worker_died") == [0, 1, 5]
    assert {0, 1, 5} <= final.retried()
    assert final.with_reason("host_oom") == [2] and 2 in final.retried()
    assert final.with_reason("gpu_oom") == [4]
    assert final.states[4] == TrialState.PRUNED and 4 not in final.retried()  # infeasible
    assert final.with_reason("nan") == [3]  # a real NaN loss, pruned
    assert final.states[3] == TrialState.PRUNED
    assert final.states[6] == TrialState.COMPLETE
    check_final_invariants(final, TARGET)

    cache = tmp_path / "runs" / "search" / "smoke" / "cache"
    entries = [path.name for path in cache.iterdir() if path.is_dir()]
    assert not [name for name in entries if ".tmp-" in name]  # no partial entry left
    # One entry of decoded images and one of features, shared by the re-runs and the later
    # trials (and one of activations per unfreezing level the fine-tune phases used).
    kinds = [name.split("-")[0] for name in entries]
    assert (kinds.count("images"), kinds.count("features")) == (1, 1), entries
    for number in (0, 1):
        log = (cache.parent / f"trial-{number:04d}" / "worker.log").read_text()
        assert "injecting fault 'kill_caching' after chunk 1" in log
    assert print_fault_figures("worker faults", 6, final, TARGET) == 0
