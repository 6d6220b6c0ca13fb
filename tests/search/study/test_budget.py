"""The compute budget: what it counts, and two coordinators sharing it exactly across a resume.

The in-process cases (a prune giving epochs back, an hour budget with running trials) are in
test_coordinator_study; here are the counting rules on a hand-made study, and the real command run
twice at once on one SQLite study, then resumed.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.reporting.console import budget_text
from search.study.budget import Limit, Limits, budget
from search.vocabulary import TrialAttr
from tests.search.harness import CoordinatorProcess, is_finished_line

X = {"x": FloatDistribution(0, 1)}
START = datetime.datetime(2026, 1, 1, 12, 0, 0)


def _finished(state: TrialState, epochs_reported: int, **user_attrs: object) -> object:
    return create_trial(
        state=state,
        value=0.5 if state == TrialState.COMPLETE else None,
        params={"x": 0.5},
        distributions=X,
        intermediate_values={step: 0.5 for step in range(1, epochs_reported + 1)},
        user_attrs=user_attrs,
    )


def test_the_budget_counts_every_trials_epochs_and_seconds() -> None:
    study = optuna.create_study(direction="maximize")
    # Recorded when it ended: 5 epochs in 100 s.
    study.add_trial(
        _finished(
            TrialState.COMPLETE, 5, **{TrialAttr.EPOCHS_SPENT: 5, TrialAttr.SECONDS_SPENT: 100.0}
        )  # type: ignore[arg-type]
    )
    # Failed by a peer's sweep, so nothing recorded: its 2 reported epochs, and its start-to-end
    # time. It was retried, so it is not a used trial, but its compute was spent.
    swept = _finished(TrialState.FAIL, 2)
    swept.datetime_start = START  # type: ignore[attr-defined]
    swept.datetime_complete = START + datetime.timedelta(seconds=30)  # type: ignore[attr-defined]
    study.add_trial(swept)  # type: ignore[arg-type]
    study.add_trial(
        _finished(TrialState.COMPLETE, 1, **{TrialAttr.RETRY_OF: 1, TrialAttr.EPOCHS_SPENT: 1})  # type: ignore[arg-type]
    )
    # Running: 1 epoch reported of the 4 its config plans.
    running = study.ask(X)
    running.set_user_attr(TrialAttr.EPOCHS_PLANNED, 4)
    running.report(0.4, step=1)

    spent = budget(study, Limits(trials=None, epochs=11, hours=1.0))
    assert (spent.used, spent.running, spent.remaining) == (2, 1, None)
    assert (spent.epochs_spent, spent.epochs_planned) == (5 + 2 + 1 + 1, 3)
    # 100 s recorded, 30 s swept, the retry's start-to-end, and the running trial's time so far.
    assert 130 <= spent.seconds_spent < 140
    # 9 spent + 3 planned reach 11: no new trial, but the running one may still end early.
    assert spent.exhausted() == Limit.EPOCHS and spent.spent() is None
    assert budget(study, Limits(None, epochs=13)).exhausted() is None
    assert budget(study, Limits(None, epochs=9)).spent() == Limit.EPOCHS
    assert budget(study, Limits(None, hours=130 / 3600)).spent() == Limit.HOURS
    assert budget(study, Limits(2)).exhausted() == Limit.TRIALS
    assert budget_text(spent).startswith("9/11 epochs, 2m1") and spent.target is None
    assert budget_text(spent).endswith("/1h trial time")
    assert budget_text(budget(study, Limits(3))).startswith("9 epochs, 2m1")
    with pytest.raises(ValueError, match="a trial target or a compute budget"):
        Limits(None)


def _started_in_order(storage: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="smoke", storage=storage)
    return sorted(study.get_trials(), key=lambda trial: trial.number)


def _check_exact(trials: list[optuna.trial.FrozenTrial], epochs: int) -> None:
    """Every trial started while the trials before it planned fewer than `epochs` epochs, and
    no trial could have started after the last: the budget, exactly, with no trial ending early."""
    assert all(trial.state == TrialState.COMPLETE for trial in trials)
    planned = [int(trial.user_attrs[TrialAttr.EPOCHS_PLANNED]) for trial in trials]
    assert [trial.user_attrs[TrialAttr.EPOCHS_SPENT] for trial in trials] == planned
    assert sum(planned[:-1]) < epochs <= sum(planned), planned


# Three `search.run` processes, one after two others: a whole-command test, in the full suite.
@pytest.mark.slow
def test_two_coordinators_share_an_epoch_budget_exactly_and_a_resume_keeps_it(
    tmp_path: Path,
) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    common = ["--study", "smoke", "--workers", "2", "--storage", storage]
    # Scripted trials of the smoke study play 2 or 3 epochs of 1 s: each coordinator has time
    # to start some before the budget is used.
    slow = {"SCRIPTED_SECONDS_PER_EPOCH": "1.0"}
    coordinators = [
        CoordinatorProcess(
            [*common, "--budget-epochs", "20", "--output", f"host{index}"],
            tmp_path,
            slow,
            module="tests.search.scripted_run",
        )
        for index in range(2)
    ]
    codes = [coordinator.finish() for coordinator in coordinators]
    assert codes == [0, 0], "\n\n".join(c.output[-3000:] for c in coordinators)
    trials = _started_in_order(storage)
    _check_exact(trials, 20)
    started = [sum(" started (slot " in line for line in c.lines) for c in coordinators]
    assert all(count >= 1 for count in started) and sum(started) == len(trials)
    # Both summaries count the whole study's spending, and say why it ended. A coordinator
    # stops once the budget is spent, without waiting for its peer's last trial, so its
    # summary counts that trial's epochs so far: between the budget and the final total.
    spent = sum(int(trial.user_attrs[TrialAttr.EPOCHS_SPENT]) for trial in trials)
    for coordinator in coordinators:
        last = [line for line in coordinator.lines if line.startswith("study smoke: ")][-1]
        shown = int(last.split("; spent ")[1].split("/")[0])
        assert 20 <= shown <= spent and last.endswith("; epoch budget reached"), last
        assert any(is_finished_line(line) and "/20 epochs" in line for line in coordinator.lines)

    # A resume with a larger budget continues from what was spent, and stops exactly again.
    resumed = CoordinatorProcess(
        [*common, "--budget-epochs", "26", "--output", "host0"],
        tmp_path,
        module="tests.search.scripted_run",
    )
    assert resumed.finish() == 0, resumed.output[-3000:]
    assert resumed.lines[0].startswith(f"study smoke: {len(trials)} trials finished, continuing")
    more = _started_in_order(storage)
    assert more[: len(trials)] == trials and len(more) > len(trials)
    _check_exact(more, 26)
