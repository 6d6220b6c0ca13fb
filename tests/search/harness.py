"""Run `python -m search.run` as users do, watch its lines, and check a study's invariants."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

from search.study.budget import Limits, budget
from search.trial.retry import retry_params
from search.vocabulary import TrialAttr
from tests.conftest import REPO


class CoordinatorProcess:
    """A coordinator subprocess whose output is read line by line."""

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        environment: dict[str, str] | None = None,
        *,
        module: str = "search.run",
    ) -> None:
        """`module` is search.run, or tests.search.scripted_run for scripted workers."""
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        env.update(environment or {})
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            # Its own process group, with its workers: `kill_all` ends both after the test.
            start_new_session=True,
        )
        _started.append(self)

    def read_until(self, predicate: Callable[[str], bool]) -> str | None:
        """Read lines until one satisfies `predicate` (returned) or the process ends (None)."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if predicate(line):
                return line
        return None

    def finish(self, timeout: float = 600) -> int:
        self.read_until(lambda _: False)
        return self.process.wait(timeout=timeout)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> int:
        self.process.send_signal(signal.SIGKILL)
        return self.process.wait(timeout=60)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


_started: list[CoordinatorProcess] = []


def kill_all() -> None:
    """Kill every coordinator a test started, and its workers, whatever the test left."""
    while _started:
        coordinator = _started.pop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(coordinator.process.pid, signal.SIGKILL)
        coordinator.process.wait(timeout=60)
        if coordinator.process.stdout is not None:
            coordinator.process.stdout.close()


def is_epoch_line(line: str) -> bool:
    return line.startswith("  trial ") and " epoch " in line


def has_epochs_left(line: str) -> bool:
    """An epoch line (`  trial   3 epoch   1/3 ...`) of a trial with more epochs to train."""
    if not is_epoch_line(line):
        return False
    done, total = line.split(" epoch ")[1].split()[0].split("/")
    return int(done) < int(total)


def is_finished_line(line: str) -> bool:
    return line.startswith("trial ") and " best " in line


@dataclass
class Snapshot:
    """What the stores say about a study at one moment."""

    states: dict[int, TrialState]
    values: dict[int, float | None]
    #: Each trial's parameters with those it was queued with (`retry_params`).
    params: dict[int, dict[str, object]]
    user_attrs: dict[int, dict[str, object]]
    used: int
    runs_per_trial: dict[int, int] = field(default_factory=dict)
    run_status: dict[int, list[str]] = field(default_factory=dict)
    parents: int = 0

    def completed(self) -> dict[int, float | None]:
        return {n: self.values[n] for n, s in self.states.items() if s == TrialState.COMPLETE}

    def retried(self) -> set[int]:
        return {
            int(attrs[TrialAttr.RETRY_OF])  # type: ignore[call-overload]
            for attrs in self.user_attrs.values()
            if TrialAttr.RETRY_OF in attrs
        }

    def with_reason(self, reason: str) -> list[int]:
        return [
            n
            for n, attrs in self.user_attrs.items()
            if attrs.get("fail_reason") == reason or attrs.get("prune_reason") == reason
        ]


def snapshot(study_name: str, storage: str, tracking_uri: str, target: int) -> Snapshot:
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials()
    result = Snapshot(
        states={t.number: t.state for t in trials},
        values={t.number: t.value for t in trials},
        params={t.number: retry_params(t) for t in trials},
        user_attrs={t.number: dict(t.user_attrs) for t in trials},
        used=budget(study, Limits(target)).used,
    )
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        return result
    for run in client.search_runs([experiment.experiment_id], max_results=5000):
        role = run.data.tags.get("finetune_search.role")
        if role == "study":
            result.parents += 1
        elif role == "trial":
            number = int(run.data.tags["optuna.trial_number"])
            result.runs_per_trial[number] = result.runs_per_trial.get(number, 0) + 1
            result.run_status.setdefault(number, []).append(run.info.status)
    return result


def trial_count(storage: optuna.storages.BaseStorage, study_name: str, *, finished: bool) -> int:
    """Trials of `study_name` so far (0 before it exists), or only the finished ones. Polls
    pass one storage object, so that they do not open a connection pool per look."""
    if study_name not in optuna.get_all_study_names(storage):
        return 0
    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    return sum(trial.state.is_finished() for trial in trials) if finished else len(trials)


def check_final_invariants(final: Snapshot, target: int) -> None:
    """The promises of a finished study, whatever faults it went through."""
    # It reached its target, and nothing is left RUNNING or queued.
    assert final.used == target, final.used
    assert not [n for n, s in final.states.items() if s in (TrialState.RUNNING, TrialState.WAITING)]
    # Trial numbers are unique and dense; every trial has exactly one MLflow run, closed.
    assert sorted(final.states) == list(range(len(final.states)))
    assert final.runs_per_trial == {n: 1 for n in final.states}, final.runs_per_trial
    assert all(status != ["RUNNING"] for status in final.run_status.values())
    assert final.parents == 1
    # No completed trial is duplicated: a retry chain (a trial and its re-runs) ends at most once.
    for number in final.retried():
        assert final.states[number] == TrialState.FAIL
    retries_of: dict[int, list[int]] = {}
    for number, attrs in final.user_attrs.items():
        if TrialAttr.RETRY_OF in attrs:
            retries_of.setdefault(int(attrs[TrialAttr.RETRY_OF]), []).append(number)  # type: ignore[call-overload]
    for original, retries in retries_of.items():
        chain = [original, *retries]
        finished_ok = [
            n for n in chain if final.states[n] in (TrialState.COMPLETE, TrialState.PRUNED)
        ]
        assert len(finished_ok) <= 1, chain
        # A re-run keeps every parameter of the original; an original cut off before its
        # space finished sampling (a lost database connection) has fewer, sampled anew. A
        # trial's parameters here include those it was queued with (`retry_params`): a re-run
        # whose coordinator died while its space was still asking for them holds them only so.
        assert all(final.params[original].items() <= final.params[n].items() for n in chain)


def check_nothing_lost(before: Snapshot, after: Snapshot) -> None:
    """Every trial completed before a fault is still completed, with the same value."""
    for number, value in before.completed().items():
        assert after.states[number] == TrialState.COMPLETE and after.values[number] == value


def smoke_command(target: int) -> list[str]:
    """The fault tests' `search.run` arguments: the smoke study, 2 workers, quick heartbeats."""
    return [
        "--study", "smoke", "--n-trials", str(target), "--workers", "2",
        "--heartbeat-interval", "1", "--grace-period", "4",
    ]  # fmt: skip


def print_fault_figures(title: str, faults: int, final: Snapshot, target: int) -> int:
    """Print what a fault test went through; returns the number of trials lost."""
    completed = len(final.completed())
    lost = target - final.used + sum(s == TrialState.RUNNING for s in final.states.values())
    print(
        f"\n{title}: {faults} faults injected, {completed} trials completed, "
        f"{sum(s == TrialState.PRUNED for s in final.states.values())} pruned, "
        f"{sum(s == TrialState.FAIL for s in final.states.values())} failed "
        f"({len(final.retried())} of them re-run), {lost} trials lost"
    )
    return lost
