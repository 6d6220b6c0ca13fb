"""KerasTuner's oracle in a process of its own, answering the coordinator over a pipe.

The coordinator never imports TensorFlow, and `keras_tuner` imports Keras and with it
TensorFlow; so the oracle (`keras_tuner.oracles.HyperbandOracle`, `BayesianOptimizationOracle`
or `RandomSearchOracle`) lives in a spawned process, as KerasTuner's own distributed mode keeps
it in a chief process. It is asked for the next trial, turns it into a config with the study's
space (`search.engines.keras_tuner_space`), and is told how each trial ended.

Its state is KerasTuner's own files, `oracle.json` and one `trial_*/trial.json` per trial, in
the study's output folder (`OUTPUT/keras-tuner/<study>/`), written atomically; a restarted
coordinator reloads them, and KerasTuner queues the trials that were running again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from search.engines.keras_tuner_space import active_scopes
from spaces.finetune import FineTuneSpace
from spaces.parameters import Role

#: The oracles `--oracle` offers, by KerasTuner's tuner names.
ORACLES = ("hyperband", "bayesian", "random")
#: The objective every oracle maximises: the trial's best validation accuracy.
OBJECTIVE = "val_accuracy"
#: Where in the output folder the oracle keeps its state.
ORACLE_FOLDER = "keras-tuner"
#: The hyperparameters Hyperband adds to a trial's values (`HyperbandOracle`'s docstring).
HYPERBAND_KEYS = frozenset(
    {"tuner/epochs", "tuner/initial_epoch", "tuner/trial_id", "tuner/bracket", "tuner/round"}
)


@dataclass(frozen=True)
class OracleSettings:
    """Everything the oracle process needs; it knows nothing of Optuna."""

    oracle: str
    folder: str
    project: str
    space: FineTuneSpace
    data_source: str
    seed: int
    #: The most trials the oracle creates (random and bayesian); None: until the study's
    #: budget ends it.
    max_trials: int | None
    #: Re-runs of a trial that crashed (`INVALID`), KerasTuner's `max_retries_per_trial`.
    retries: int
    #: Hyperband's `factor`, and its `max_epochs` (None: the space's longest config).
    factor: int = 3
    max_epochs: int | None = None
    #: How often Hyperband runs all its brackets; None: again and again, until the study's
    #: trial target or budget ends it.
    hyperband_iterations: int | None = 1
    log_path: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict)


# -- requests --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NextTrial:
    tuner_id: str


@dataclass(frozen=True)
class EndTrial:
    trial_id: str
    #: KerasTuner's `COMPLETED`, `INVALID` (crashed: re-run while retries are left) or `FAILED`.
    status: str
    value: float | None = None
    message: str = ""


# -- replies ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OracleReady:
    #: Trials in the reloaded state (0 for a new study).
    trials: int
    #: KerasTuner trials that were running when the state was saved, queued again.
    requeued: tuple[str, ...]
    max_epochs: int


@dataclass(frozen=True)
class ProposedTrial:
    trial_id: str
    #: `RUNNING` (run it), `IDLE` (wait for running trials) or `STOPPED` (the search is over).
    status: str
    #: The trial's KerasTuner values, `tuner/*` included.
    values: Mapping[str, Any] = field(default_factory=dict)
    #: What the space asked for, one-choice parameters included: an Optuna trial's params.
    params: Mapping[str, Any] = field(default_factory=dict)
    config_yaml: str | None = None
    #: Why the space could not make a config of these values.
    error: str | None = None


@dataclass(frozen=True)
class TrialEnded:
    trial_id: str
    #: The trial's status after `end_trial`: `INVALID` means queued to run again.
    status: str


@dataclass(frozen=True)
class OracleFailed:
    message: str
    traceback: str = ""


def most_epochs(space: FineTuneSpace) -> int:
    """The longest config of the space, in epochs: Hyperband's `max_epochs`."""
    described = {parameter.name: parameter for parameter in space.parameters()}

    def largest(name: str) -> int:
        parameter = described[name]
        return int(parameter.value if parameter.role == Role.FIXED else max(parameter.choices))

    epochs = largest("head_epochs")
    fine_tune = described.get("ft_epochs")
    if fine_tune is not None and active_scopes(fine_tune, described) is not None:
        epochs += largest("ft_epochs")
    return epochs


def keras_tuner_seed(seed: int) -> int:
    """`seed` as KerasTuner's oracles take it: they read 0 as none and draw one at random;
    numpy's seeds end at 2**32 - 1, which stands for 0 here."""
    return seed or 2**32 - 1


def _write_json(path: str, state: Any) -> None:
    """Write-then-rename: a process killed mid-write leaves the previous file, never half a
    file that `reload` cannot read."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(state, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def make_oracle(settings: OracleSettings) -> Any:
    """The KerasTuner oracle of `settings`, with atomic state files, its space declared."""
    import keras_tuner

    from search.engines.keras_tuner_space import declare_space

    classes = {
        "hyperband": keras_tuner.oracles.HyperbandOracle,
        "bayesian": keras_tuner.oracles.BayesianOptimizationOracle,
        "random": keras_tuner.oracles.RandomSearchOracle,
    }

    base: Any = classes[settings.oracle]

    class AtomicallySaved(base):
        """KerasTuner writes its JSON files in place; these replace them whole."""

        def save(self) -> None:
            _write_json(self._get_oracle_fname(), self.get_state())

        def end_trial(self, trial: Any) -> None:
            # KerasTuner saves before it takes the trial off its running ones: without a
            # second save, a reload would run the ended trial again.
            super().end_trial(trial)
            self.save()

        def _save_trial(self, trial: Any) -> None:
            folder = self._get_trial_dir(trial.trial_id)
            _write_json(os.path.join(folder, "trial.json"), trial.get_state())

    common: dict[str, Any] = {
        "objective": keras_tuner.Objective(OBJECTIVE, direction="max"),
        "hyperparameters": declare_space(settings.space),
        "seed": keras_tuner_seed(settings.seed),
        "max_retries_per_trial": settings.retries,
        # The coordinator stops the study after its own streak of failures (--max-consecutive-
        # failures); KerasTuner's would raise in the middle of a tell.
        "max_consecutive_failed_trials": sys.maxsize,
        # The space is declared whole: a parameter it does not list is a bug, not a new entry.
        "allow_new_entries": False,
    }
    if settings.oracle == "hyperband":
        max_epochs = settings.max_epochs or most_epochs(settings.space)
        oracle = AtomicallySaved(
            max_epochs=max_epochs,
            factor=settings.factor,
            # KerasTuner reads None as no end.
            hyperband_iterations=settings.hyperband_iterations,
            **common,
        )
    else:
        oracle = AtomicallySaved(max_trials=settings.max_trials, **common)
    oracle.verbose = 0  # the coordinator prints one line per trial itself
    return oracle


class OracleServer:
    """The oracle and the space, answering one request at a time."""

    def __init__(self, settings: OracleSettings) -> None:
        self.settings = settings
        self.oracle = make_oracle(settings)
        self.oracle._set_project_dir(settings.folder, settings.project)
        self.requeued: tuple[str, ...] = ()
        state = Path(self.oracle._get_oracle_fname())
        if state.is_file():
            running = json.loads(state.read_text(encoding="utf-8"))["ongoing_trials"]
            # KerasTuner's reload queues the trials that were running again.
            self.oracle.reload()
            self.requeued = tuple(sorted(running.values()))

    def ready(self) -> OracleReady:
        max_epochs = getattr(self.oracle, "max_epochs", most_epochs(self.settings.space))
        return OracleReady(len(self.oracle.trials), self.requeued, int(max_epochs))

    def next_trial(self, request: NextTrial) -> ProposedTrial:
        from search.engines.keras_tuner_space import KerasTunerSuggester, SpaceMismatchError
        from trainers.errors import TrainerInputError

        trial = self.oracle.create_trial(request.tuner_id)
        values = dict(trial.hyperparameters.values)
        if trial.status != "RUNNING":
            return ProposedTrial(trial.trial_id, trial.status)
        suggester = KerasTunerSuggester(trial.hyperparameters)
        try:
            config = self.settings.space(suggester, self.settings.data_source)
        except (TrainerInputError, SpaceMismatchError) as error:
            return ProposedTrial(
                trial.trial_id, trial.status, values, suggester.used, error=str(error)
            )
        return ProposedTrial(trial.trial_id, trial.status, values, suggester.used, config.to_yaml())

    def end_trial(self, request: EndTrial) -> TrialEnded:
        trial = self.oracle.get_trial(request.trial_id)
        scored = request.value is not None and math.isfinite(request.value)
        if scored:
            self.oracle.update_trial(trial.trial_id, {OBJECTIVE: request.value})
        # KerasTuner cannot score a completed trial without a value.
        trial.status = "FAILED" if request.status == "COMPLETED" and not scored else request.status
        trial.message = request.message or None
        self.oracle.end_trial(trial)
        return TrialEnded(trial.trial_id, self.oracle.get_trial(trial.trial_id).status)


def serve(connection: Connection, settings: OracleSettings) -> None:
    """Entry point of the spawned oracle process: serve until the coordinator's pipe closes.

    One request at a time on the main thread: a coordinator that dies closes the pipe, and
    the process ends between two requests, never in the middle of writing its state."""
    os.environ.update(settings.environment)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if settings.log_path is not None:
        log = open(settings.log_path, "ab", buffering=0)  # noqa: SIM115 - lives with the process
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        server = OracleServer(settings)
        connection.send(server.ready())
    except Exception as error:
        with contextlib.suppress(OSError):
            failed = OracleFailed(f"{type(error).__name__}: {error}", traceback.format_exc())
            connection.send(failed)
        return
    while True:
        try:
            request = connection.recv()
        except (EOFError, OSError):
            return
        try:
            if isinstance(request, NextTrial):
                reply: Any = server.next_trial(request)
            elif isinstance(request, EndTrial):
                reply = server.end_trial(request)
            else:
                return
        except Exception as error:
            reply = OracleFailed(f"{type(error).__name__}: {error}", traceback.format_exc())
        try:
            connection.send(reply)
        except OSError:
            return
