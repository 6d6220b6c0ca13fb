"""The lines a coordinator prints when a study and a trial start."""

from __future__ import annotations

from pathlib import Path

from search.reporting.console import started_line
from search.vocabulary import TrialAttr
from trainers.fit.window import EVERY_EPOCH, EpochWindow


def test_a_trial_start_says_its_slot_its_parameters_and_what_it_continues() -> None:
    params = {"head_lr": 0.0031622, "batch_size": 32, "freeze_bn": True}
    assert started_line(3, 0, params, {}, EVERY_EPOCH) == (
        "trial   3 started (slot 0): head_lr=0.00316, batch_size=32, freeze_bn=True"
    )
    # A re-run names the trial it repeats.
    assert started_line(7, 1, {"head_lr": 0.01}, {TrialAttr.RETRY_OF: 3}, EVERY_EPOCH) == (
        "trial   7 started (slot 1), re-running trial 3 with the same params: head_lr=0.01"
    )
    # A Hyperband round: up to its last epoch; a continuation also after which epoch of which
    # trial it goes on.
    assert started_line(4, 0, {}, {}, EpochWindow(until_epoch=2)) == (
        "trial   4 started (slot 0), up to epoch 2: "
    )
    window = EpochWindow(after_epoch=2, until_epoch=5, initial_weights=Path("w.weights.h5"))
    attrs = {TrialAttr.CONTINUES_TRIAL: 1}
    assert started_line(9, 0, {"head_lr": 0.01}, attrs, window) == (
        "trial   9 started (slot 0), continuing trial 1 after epoch 2, up to epoch 5: head_lr=0.01"
    )
