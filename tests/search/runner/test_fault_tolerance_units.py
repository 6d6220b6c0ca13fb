"""Fast checks of the fault-tolerance pieces: budget, retry policy, slots, lock, fault plans."""

from __future__ import annotations

import multiprocessing
import multiprocessing.sharedctypes
import multiprocessing.synchronize
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.engines.base import ask_quietly
from search.runner.faults import Fault, parse_faults
from search.runner.liveness import Liveness
from search.runner.slots import SlotError, detect_gpus, parse_gpus, worker_environments
from search.storage.lock import StudyLock
from search.storage.urls import make_storage
from search.study.budget import Limits, budget, is_retried
from search.tracking.runs import StudyTracker
from search.trial.closing import Ending, TrialCloser, Verdict
from search.trial.retry import RetryPolicy, enqueue_retry, retry_params
from search.vocabulary import Reason, TrialAttr


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
    spent = budget(study, Limits(3))
    assert (spent.used, spent.running, spent.remaining) == (1, 0, 2)
    retry = study.ask()
    assert (
        retry.user_attrs[TrialAttr.RETRY_OF] == crashed.number
        and retry.user_attrs["retry_count"] == 1
    )
    assert budget(study, Limits(3)).running == 1 and budget(study, Limits(3)).remaining == 1
    # An interrupted re-run is queued again without spending one of its retries.
    enqueue_retry(
        study,
        number=retry.number,
        params=retry.params,
        user_attrs=retry.user_attrs,
        reason="interrupted",
    )
    assert study.ask().user_attrs["retry_count"] == 1


def test_a_re_run_cut_off_while_its_space_asked_is_re_run_with_every_parameter() -> None:
    # The soak's case: a re-run's coordinator is killed after `ask` but before the space has
    # asked for all the parameters it was queued with; its own re-run must still get them all.
    study = optuna.create_study(direction="maximize")
    floats = optuna.distributions.FloatDistribution(0, 1)
    original = study.ask({"x": floats, "y": floats})
    enqueue_retry(
        study, number=original.number, params=original.params, user_attrs={}, reason="stale"
    )
    study.tell(original, state=TrialState.FAIL)
    cut_off = study.ask()
    cut_off.suggest_float("x", 0, 1)  # the kill comes before "y" is asked for
    study.tell(cut_off, state=TrialState.FAIL)
    frozen = study.trials[cut_off.number]
    assert frozen.params.keys() == {"x"}
    assert retry_params(frozen) == original.params


def test_gpus_pin_one_worker_each_and_cpu_workers_share_the_cores() -> None:
    assert [env["CUDA_VISIBLE_DEVICES"] for env in worker_environments(None, ["0", "1"])] == [
        "0",
        "1",
    ]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in worker_environments(1, ["2", "3"])] == ["2"]
    with pytest.raises(SlotError, match="one worker per GPU"):
        worker_environments(3, ["0", "1"])
    cpu = worker_environments(2, [], cpu_count=4)
    assert len(cpu) == 2
    assert all(
        env["CUDA_VISIBLE_DEVICES"] == "" and env["TF_NUM_INTRAOP_THREADS"] == "2" for env in cpu
    )
    # --gpus and nvidia-smi number GPUs in PCI bus order; CUDA must be told to do the same.
    assert worker_environments(1, ["1"], nvidia_smi_numbering=True)[0]["CUDA_DEVICE_ORDER"] == (
        "PCI_BUS_ID"
    )
    assert "CUDA_DEVICE_ORDER" not in worker_environments(1, ["1"], nvidia_smi_numbering=False)[0]
    assert parse_gpus("0, 1") == ["0", "1"]
    for bad in ("", "a,b", "0,0"):
        with pytest.raises(SlotError):
            parse_gpus(bad)


def test_cuda_visible_devices_is_the_users_choice_of_gpus() -> None:
    # Kept as written (UUIDs included); an empty value or -1 means CPU workers.
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "2,GPU-8a1f"}) == (["2", "GPU-8a1f"], False)
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": ""}) == ([], False)
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == ([], False)
    # CUDA ignores everything from the first invalid entry on.
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,1"}) == (["0"], False)
    # One worker per GPU, however often it is listed.
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "1,1,0"}) == (["1", "0"], False)


def _hold(
    url: str,
    seconds: float,
    started: multiprocessing.synchronize.Event,
    released_at: multiprocessing.sharedctypes.Synchronized,  # type: ignore[type-arg]
) -> None:
    with StudyLock(url, "s").held():
        started.set()
        time.sleep(seconds)
        released_at.value = time.time()


def test_study_lock_excludes_other_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    released_at = context.Value("d", 0.0)
    holder = context.Process(target=_hold, args=(url, 1.0, started, released_at))
    holder.start()
    assert started.wait(60)
    with StudyLock(url, "s").held():
        acquired_at = time.time()
    holder.join()
    # We got the lock only once the other process had let go of it.
    assert released_at.value > 0 and acquired_at >= released_at.value


def _sqlite_study(tmp_path: Path) -> tuple[optuna.Study, optuna.storages.RDBStorage, StudyLock]:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = make_storage(url, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    return study, storage, StudyLock(url, "s")


def _ask(study: optuna.Study) -> optuna.Trial:
    trial = ask_quietly(study)
    trial.suggest_float("x", 0, 1)
    return trial


def test_a_sweep_fails_dead_peers_trials_but_never_its_own(tmp_path: Path) -> None:
    study, storage, lock = _sqlite_study(tmp_path)
    stale: list[int] = []
    liveness = Liveness(
        storage,
        lock,
        heartbeat_interval=1,
        grace_period=1,
        on_stale=lambda _, trial: stale.append(trial.number),
        needs_rerun=lambda trial: trial.number not in stale,
    )
    peer = _ask(study)
    storage.record_heartbeat(peer._trial_id)
    peer.set_user_attr(TrialAttr.COORDINATOR, "peer-host:1")
    ours = _ask(study)
    liveness.claim(ours, "this-host:2")
    unclaimed = _ask(study)  # its coordinator died inside ask(): no heartbeat, no claim
    liveness.close()  # our heartbeats stop too, as on a machine too loaded to send them
    time.sleep(2.5)
    liveness.sweep(study)
    states = {trial.number: trial.state for trial in study.get_trials()}
    # The peer's and the unclaimed trial are dead; ours is watched through its worker instead.
    assert states == {
        peer.number: TrialState.FAIL,
        ours.number: TrialState.RUNNING,
        unclaimed.number: TrialState.FAIL,
    }
    assert sorted(stale) == [peer.number, unclaimed.number]


def test_a_sweep_requeues_a_stale_failure_whose_sweeper_died(tmp_path: Path) -> None:
    study, storage, lock = _sqlite_study(tmp_path)
    orphan = _ask(study)
    # A sweeper failed it, then was killed before it could queue the re-run.
    storage.set_trial_state_values(orphan._trial_id, TrialState.FAIL)

    def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        enqueue_retry(
            study,
            number=trial.number,
            params=trial.params,
            user_attrs={},
            reason=Reason.STALE_HEARTBEAT,
        )

    liveness = Liveness(
        storage,
        lock,
        heartbeat_interval=1,
        grace_period=1,
        on_stale=requeue,
        needs_rerun=lambda trial: not is_retried(study, trial.number),
    )
    liveness.close()
    for _ in range(2):
        liveness.last_sweep = 0.0  # sweep now, not once per heartbeat interval
        liveness.sweep(study)
    # Re-queued once, with the same parameters, and not again by the second sweep.
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs[TrialAttr.RETRY_OF] == orphan.number
    assert _ask(study).params == orphan.params


def test_a_dead_trial_gets_exactly_one_closed_mlflow_run(tmp_path: Path) -> None:
    tracker = StudyTracker(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "s",
        storage="test",
        spool=tmp_path / "spool.jsonl",
        warn=lambda line: None,
    )
    study = optuna.create_study(direction="maximize")
    closer = TrialCloser(
        study, tracker, RetryPolicy(retries=0), limits=Limits(3), log=lambda _: None, started_at=0
    )
    running = tracker.start_trial(1, {"head_lr": 0.01}, config=None)
    # Trial 1's coordinator died mid-training; trial 2's died before it created the run.
    stale = Verdict(TrialState.FAIL, Reason.STALE_HEARTBEAT, "its coordinator stopped")
    closer.close(None, Ending(1, {"head_lr": 0.01}, {}, stale))
    closer.close(None, Ending(2, {"head_lr": 0.02}, {}, stale))
    runs = tracker.client.search_runs(
        [tracker.experiment_id], "tags.`finetune_search.role` = 'trial'"
    )
    by_trial = {run.data.tags["optuna.trial_number"]: run for run in runs}
    assert sorted(by_trial) == ["1", "2"] and len(runs) == 2
    assert by_trial["1"].info.run_id == running
    for run in runs:
        assert run.info.status == "FAILED"
        assert run.data.tags["fail_reason"] == Reason.STALE_HEARTBEAT
    assert by_trial["2"].data.params["head_lr"] == "0.02"
    # A peer's dead trial is not this coordinator's failure streak.
    assert closer.consecutive_failures == 0


def test_fault_plans_parse_and_reject_typos() -> None:
    assert parse_faults("kill@2:1, gpu_oom@4:2") == [Fault("kill", 2, 1), Fault("gpu_oom", 4, 2)]
    (by_batch,) = parse_faults("gpu_oom@batch>=64:1")
    assert by_batch == Fault("gpu_oom", None, 1, min_batch_size=64)
    assert by_batch.strikes(0, 64) and by_batch.strikes(7, 128) and not by_batch.strikes(0, 32)
    assert not Fault("kill", 2, 1).strikes(3, 64)
    with pytest.raises(ValueError, match="kind@batch>=N:epoch"):
        parse_faults("gpu_oom@batch>64:1")
    with pytest.raises(ValueError, match="unknown fault 'segfault'"):
        parse_faults("segfault@1:1")
    with pytest.raises(ValueError, match="kind@trial:epoch"):
        parse_faults("kill@1")
