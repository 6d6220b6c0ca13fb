"""bench.study_timeline: how the study's stamped log lines become each trial's breakdown, and
how the log watcher stamps lines and sees a worker exit."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from bench.study_timeline import LogWatcher, StudyTimeline, cache_use, process_ended
from tests.conftest import wait_for

COLD_LOG = [
    (12.0, "trial 0: worker pid 11"),
    (30.0, "cache: decoded train images 400/400"),
    (31.0, "data: 400 training / 100 validation images, 10 classes from /data"),
    (40.0, "feature cache: head phase on frozen features, computed in 6.0s (0.7 MiB in c)"),
    (40.0, "phase 1/2: 3 epochs, adam lr 0.01 (constant); backbone frozen; on cached features"),
    (43.0, "epoch   1/4 [phase 1] loss 1.0  acc 0.5  val_acc 0.6000  lr 1.0e-02  (3.0s)"),
    (43.1, "epoch   2/4 [phase 1] loss 0.9  acc 0.6  val_acc 0.7000  lr 1.0e-02  (0.1s)"),
    (43.2, "epoch   3/4 [phase 1] loss 0.8  acc 0.7  val_acc 0.8000  lr 1.0e-02  (0.1s)"),
    (
        45.2,
        "cut-point cache: phase 2 trains its unfrozen blocks on activations after conv, "
        "computed in 2.0s (3.1 MiB in c)",
    ),
    (45.2, "phase 2/2: 1 epochs, adamw lr 0.001 (cosine); unfrozen 2 blocks"),
    (60.0, "epoch   4/4 [phase 2] loss 0.7  acc 0.8  val_acc 0.7500  lr 0.00e+00  (16.0s)"),
    (60.1, "best val_accuracy 0.8000 at epoch 3; restored its weights"),
]
WARM_LOG = [
    (66.0, "trial 1: prewarmed worker pid 12, ready 20.5s before the trial (start-up took 9.1s)"),
    (66.0, "trial 1: worker pid 12"),
    (67.0, "data: 400 training / 100 validation images, 10 classes from /data"),
    (70.0, "feature cache: head phase on frozen features, reused (0.7 MiB in c)"),
    (70.0, "phase 1/2: 2 epochs, adam lr 0.01 (constant); backbone frozen; on cached features"),
    (73.0, "epoch   1/3 [phase 1] loss 1.0  acc 0.5  val_acc 0.6000  lr 1.0e-02  (3.0s)"),
    (73.1, "epoch   2/3 [phase 1] loss 0.9  acc 0.6  val_acc 0.6500  lr 1.0e-02  (0.1s)"),
    (73.2, "cut-point cache: phase 2 trains its unfrozen blocks on activations after x, reused"),
    (73.2, "phase 2/2: 1 epochs, adamw lr 0.001 (cosine); unfrozen 2 blocks"),
    (75.2, "epoch   3/3 [phase 2] loss 0.8  acc 0.7  val_acc 0.6000  lr 0.00e+00  (2.0s)"),
    (75.3, "best val_accuracy 0.6500 at epoch 2; restored its weights"),
]
COORDINATOR = [
    (10.0, "study study_cost: 0/2 trials finished (0 epochs, 0m00s trial time); storage ..."),
    (11.0, "trial   0 started (slot 0): head_lr=0.01"),
    (61.0, "  trial   0 epoch   4/4 [phase 2] val_acc 0.7500 loss 0.7000"),
    (62.0, "trial   0 COMPLETE 0.8000 (epoch 3)         best 0.8000 (trial 0)  [0m50s trial]"),
    (65.0, "trial   1 started (slot 0): head_lr=0.01"),
    (76.0, "trial   1 COMPLETE 0.6500 (epoch 2)         best 0.8000 (trial 0)  [0m11s trial]"),
    (78.0, "study study_cost: 2/2 finished (2 COMPLETE); spent 7 epochs"),
]


def test_a_trials_breakdown_comes_from_the_stamped_lines_of_its_logs() -> None:
    timeline = StudyTimeline(
        launched=0.0,
        exited=80.0,
        coordinator=tuple(COORDINATOR),
        workers={0: COLD_LOG, 1: WARM_LOG},
        standby=((30.0, "standby pid 12 (slot 0) ready after 9.1s"),),
        worker_exits={1: 75.5},
    )
    cold, warm = timeline.trials()
    # The first window opens at the coordinator's first line; the cold worker imports
    # TensorFlow before its data line, and computing the feature and cut-point caches counts
    # as data, not as build or between phases.
    assert dataclasses.astuple(cold.breakdown) == pytest.approx((2.0, 27.0, 3.0, 19.2, 52.0))
    assert cold.breakdown.other == pytest.approx(0.8)
    assert cold.best_val_accuracy == 0.8 and len(cold.epoch_seconds) == 4
    assert cold.notes == (
        "cold worker: TF import in data; image cache built; feature cache computed in 6.0s; "
        "cut cache computed in 2.0s; closed 1.9s after training"
    )
    # The second window opens when the first trial is closed.
    assert dataclasses.astuple(warm.breakdown) == pytest.approx((4.0, 1.0, 3.0, 5.1, 14.0))
    assert warm.breakdown.other == pytest.approx(0.9)
    assert warm.notes == (
        "prewarmed (ready 20.5s before); feature cache reused; cut cache reused; "
        "worker exited 0.2s after training, trial closed 0.5s later"
    )
    assert (timeline.wall, timeline.start, timeline.close) == (80.0, 10.0, 4.0)
    assert timeline.standby_startups() == [9.1]


def test_a_cache_the_trial_could_not_use_is_noted() -> None:
    log = [(1.0, "feature cache not used: random augmentation (basic) changes every image")]
    assert cache_use(log, "feature cache") == (0.0, "feature cache not used")
    log = [(1.0, "cut-point cache not used in phase 2: it would not fit the cache budget")]
    assert cache_use(log, "cut-point cache") == (0.0, "cut cache not used")
    assert cache_use([], "cut-point cache") == (0.0, "")


def test_the_log_watcher_stamps_lines_as_they_appear_and_the_workers_exit(
    tmp_path: Path,
) -> None:
    worker = subprocess.Popen(["sleep", "30"])
    log = tmp_path / "trial-0003" / "worker.log"
    log.parent.mkdir()
    watcher = LogWatcher(tmp_path)
    log.write_text(f"trial 3: prewarmed worker pid {worker.pid}, ready 1.0s before\ndata: 4")
    watcher.poll()
    assert watcher.worker_exits() == {}
    with log.open("a") as file:
        file.write("00 training\n")
    worker.kill()
    # Ended but not yet reaped: the coordinator reaps its workers only when it closes them.
    assert wait_for(lambda: process_ended(worker.pid), 10)
    watcher.poll()
    (first, one), (second, two) = watcher.worker_logs()[3]
    assert two == "data: 400 training" and one.startswith("trial 3: prewarmed worker pid")
    assert first <= second <= watcher.worker_exits()[3]
    worker.wait()
    assert process_ended(worker.pid) and process_ended(os.getpid()) is False
