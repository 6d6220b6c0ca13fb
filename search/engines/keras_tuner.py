"""The KerasTuner engine: a KerasTuner oracle chooses the trials, the coordinator runs them.

`python -m search.run --study NAME --engine keras-tuner --oracle hyperband|bayesian|random`.
The oracle runs in its own process (`search.engines.oracle`); this side asks it for a trial,
records that trial as an Optuna trial with exactly the oracle's values (`FixedValuesSampler`),
and runs it like any other: spawned worker, the project's trainer, the collapse rules, the
same MLflow runs. Hyperband's rounds become epoch windows: a trial trains up to its round's
`tuner/epochs`, and a trial that continues an earlier round's trial starts from that trial's
best-epoch weights (`best.weights.h5` in its folder) at `tuner/initial_epoch`, as KerasTuner's
own Hyperband does (weights only; the optimizer starts afresh).

The oracle is told every result once the study has recorded it. A pruned trial is told
COMPLETED with its best epoch so far, as KerasTuner scores a trial an `EarlyStopping` callback
ended; an out-of-memory or failed one FAILED; a crashed one INVALID, and the oracle queues it
again (up to `--retries`). A trial stopped by Ctrl-C, or left running by a killed coordinator,
is not told: reloading the oracle's state queues it again. A result the study recorded but the
oracle never heard (a coordinator killed in between) is told when the oracle hands that trial
out again, so no finished trial is run twice or lost. One coordinator runs a KerasTuner study
(a file lock in its state folder); it may run several workers.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.engines.base import WAIT, EngineChoice, Proposal, Wait, ask_quietly
from search.engines.oracle import (
    ORACLE_FOLDER,
    EndTrial,
    NextTrial,
    OracleFailed,
    OracleReady,
    OracleSettings,
    ProposedTrial,
    TrialEnded,
    serve,
)
from search.engines.oracle_results import NOT_TOLD, OracleResult, oracle_result, recorded_result
from search.engines.rounds import hyperband_round, round_plan
from search.reporting.console import Log
from search.runner.spawning import start_without_main
from search.study.registry import StudySpec
from search.study.setup import StudyMismatchError
from search.trial.closing import Ending
from search.trial.retry import RetryPolicy
from search.vocabulary import Reason, TrialAttr
from spaces.finetune import FineTuneSpace
from trainers.config.schema import TrainConfig
from trainers.errors import TrainerInputError

#: Seconds the oracle process may take to import KerasTuner (and TensorFlow) and load.
ORACLE_START_TIMEOUT_S = 600.0
#: Seconds one answer of the oracle may take.
ORACLE_ANSWER_TIMEOUT_S = 120.0


class OracleError(RuntimeError):
    """The oracle process failed or stopped answering."""


class FixedValuesSampler(optuna.samplers.BaseSampler):
    """Answers each parameter with the value another engine chose for the trial being asked
    (`values`, set before `ask`), so that the Optuna trial records exactly that trial."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, optuna.distributions.BaseDistribution]:
        return {}

    def sample_relative(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, optuna.distributions.BaseDistribution],
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: optuna.distributions.BaseDistribution,
    ) -> Any:
        if param_name not in self.values:
            raise TrainerInputError(
                f"the space asked for {param_name!r}, which the other engine did not choose"
            )
        return self.values[param_name]


class KerasTunerEngine:
    """A KerasTuner oracle as the study's engine (see the module docstring)."""

    study_requeues = False
    enqueues_known = False

    def __init__(
        self,
        spec: StudySpec,
        choice: EngineChoice,
        *,
        data_source: str,
        output_dir: Path,
        n_trials: int | None,
        retry: RetryPolicy,
        identity: str,
        log: Log,
        study_bounded: bool = False,
    ) -> None:
        if not isinstance(spec.space, FineTuneSpace):
            raise StudyMismatchError(
                f"study {spec.name!r}: the keras-tuner engine needs a space that lists its "
                "parameters (a FineTuneSpace: a registered study or a study file)"
            )
        self.choice = choice
        self.spec = spec
        self.space: FineTuneSpace = spec.space
        self.data_source = data_source
        self.output_dir = output_dir
        self.identity = identity
        self.log = log
        self.folder = output_dir / ORACLE_FOLDER
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._hold_folder()
        self.had_state = (self.folder / spec.name / "oracle.json").is_file()
        self.values_sampler = FixedValuesSampler()
        self.requests = 0
        self.stopped = False
        settings = OracleSettings(
            oracle=choice.oracle,
            folder=str(self.folder),
            project=spec.name,
            space=self.space,
            data_source=data_source,
            seed=spec.seed,
            max_trials=n_trials,
            retries=retry.retries,
            # With a trial target or a budget, Hyperband runs its brackets again while it
            # lasts; without one, its single iteration is what ends the study.
            hyperband_iterations=None if study_bounded else 1,
            log_path=str(self.folder / "oracle.log"),
            # It holds no model: keep it off the GPUs the workers use.
            environment={"CUDA_VISIBLE_DEVICES": ""},
        )
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe(duplex=True)
        self.process = context.Process(
            target=serve, args=(theirs, settings), name="keras-tuner-oracle", daemon=True
        )
        start_without_main(self.process)
        theirs.close()
        self.connection: Connection = ours
        self.ready: OracleReady | None = None

    def _hold_folder(self) -> IO[str]:
        """One coordinator per KerasTuner study: the oracle's state has one writer."""
        lock = open(self.folder / ".coordinator.lock", "a+", encoding="utf-8")  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise StudyMismatchError(
                f"another coordinator runs the KerasTuner study in {self.folder}; the "
                "keras-tuner engine runs one coordinator per study (use --workers for "
                "parallel trials)"
            ) from None
        return lock

    # -- the study ----------------------------------------------------------------------------

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return self.values_sampler

    def pruner(self) -> optuna.pruners.BasePruner:
        return optuna.pruners.NopPruner()

    def check_study(self, study: optuna.Study) -> None:
        """Refuse a study whose trials the oracle's state (in another output folder) knows."""
        chosen = any(
            TrialAttr.KERAS_TUNER_TRIAL in trial.user_attrs
            for trial in study.get_trials(deepcopy=False)
        )
        if chosen and not self.had_state:
            raise StudyMismatchError(
                f"study {self.spec.name!r} has KerasTuner trials but its oracle state is not "
                f"in {self.folder}; pass the --output it was started with"
            )

    # -- the oracle process -------------------------------------------------------------------

    def _answer(self, timeout: float) -> Any:
        if not self.connection.poll(timeout):
            raise OracleError(f"the KerasTuner oracle gave no answer in {timeout:.0f}s")
        try:
            reply = self.connection.recv()
        except (EOFError, OSError):
            raise OracleError(
                f"the KerasTuner oracle process ended; see {self.folder / 'oracle.log'}"
            ) from None
        if isinstance(reply, OracleFailed):
            raise OracleError(f"the KerasTuner oracle failed: {reply.message}\n{reply.traceback}")
        return reply

    def _wait_ready(self) -> OracleReady:
        if self.ready is None:
            started = time.monotonic()
            ready = self._answer(ORACLE_START_TIMEOUT_S)
            assert isinstance(ready, OracleReady)
            self.ready = ready
            again = (
                f", {len(ready.requeued)} that were running queued again" if ready.requeued else ""
            )
            state = f"{ready.trials} trials reloaded{again}" if ready.trials else "new search"
            epochs = f", max_epochs {ready.max_epochs}" if self.choice.oracle == "hyperband" else ""
            self.log(
                f"keras-tuner {self.choice.oracle} oracle ready in "
                f"{time.monotonic() - started:.1f}s ({state}{epochs}; state in "
                f"{self.folder / self.spec.name})"
            )
        return self.ready

    def _request(self, request: NextTrial | EndTrial) -> Any:
        self._wait_ready()
        self.connection.send(request)
        return self._answer(ORACLE_ANSWER_TIMEOUT_S)

    def _tell(self, trial_id: str, result: OracleResult) -> str:
        ended = self._request(EndTrial(trial_id, result.status, result.value, result.message))
        assert isinstance(ended, TrialEnded)
        return ended.status

    # -- trials -------------------------------------------------------------------------------

    def ask(self, study: optuna.Study) -> Proposal | Wait | None:
        """The oracle's next trial as an Optuna trial; call under the study lock."""
        while True:
            self.requests += 1
            proposed = self._request(NextTrial(f"{self.identity}/{self.requests}"))
            assert isinstance(proposed, ProposedTrial)
            if proposed.status == "STOPPED":
                self.stopped = True
                return None
            if proposed.status != "RUNNING":
                return WAIT
            trials = study.get_trials(deepcopy=False)
            earlier = [
                trial
                for trial in trials
                if trial.user_attrs.get(TrialAttr.KERAS_TUNER_TRIAL) == proposed.trial_id
            ]
            recorded = next(
                (result for result in map(recorded_result, earlier) if result is not None), None
            )
            if recorded is None:
                return self._record(study, proposed, earlier, trials)
            # Told to the study, lost on the way to the oracle (a coordinator killed between
            # the two): the oracle hears it now, and asks again.
            self._tell(proposed.trial_id, recorded)
            self.log(
                f"keras-tuner trial {proposed.trial_id}: already recorded as trial "
                f"{earlier[-1].number}; told the oracle"
            )

    def _record(
        self,
        study: optuna.Study,
        proposed: ProposedTrial,
        earlier: list[FrozenTrial],
        trials: list[FrozenTrial],
    ) -> Proposal:
        self.values_sampler.values = dict(proposed.params)
        trial = ask_quietly(study)
        values = proposed.values
        trial.set_user_attr(TrialAttr.KERAS_TUNER_TRIAL, proposed.trial_id)
        if earlier:
            last = earlier[-1]
            trial.set_user_attr(TrialAttr.RETRY_OF, last.number)
            trial.set_user_attr(TrialAttr.RETRY_COUNT, len(earlier))
            reason = last.user_attrs.get(TrialAttr.FAIL_REASON, Reason.STALE_HEARTBEAT)
            trial.set_user_attr(TrialAttr.RETRY_REASON, reason)
        round_ = hyperband_round(values)
        config = self._config(trial, proposed)
        if round_ is None:
            return Proposal(trial, config)
        plan = round_plan(round_, trials, self.output_dir)
        trial.set_user_attr(TrialAttr.HYPERBAND_BRACKET, int(values["tuner/bracket"]))
        trial.set_user_attr(TrialAttr.HYPERBAND_ROUND, int(values["tuner/round"]))
        trial.set_user_attr(TrialAttr.UNTIL_EPOCH, round_.epochs)
        if plan.continued is not None:
            trial.set_user_attr(TrialAttr.CONTINUES_TRIAL, plan.continued)
            trial.set_user_attr(TrialAttr.AFTER_EPOCH, round_.initial_epoch)
        elif round_.trial_id is not None:
            self.log(
                f"trial {trial.number}: the weights of KerasTuner trial {round_.trial_id} "
                f"are gone; it trains from the start up to epoch {round_.epochs}"
            )
        window = plan.window
        if (
            not isinstance(config, TrainConfig)
            or plan.inherited is None
            or window.after_epoch < config.total_epochs
        ):
            return Proposal(trial, config, window, save_weights=True)
        return Proposal(trial, config, window, True, plan.inherited, plan.inherited_best)

    def _config(
        self, trial: optuna.Trial, proposed: ProposedTrial
    ) -> TrainConfig | TrainerInputError:
        """The config the oracle's space made, checked against the one the Optuna trial's
        parameters make: the record reproduces what ran."""
        if proposed.error is not None or proposed.config_yaml is None:
            return TrainerInputError(proposed.error or "no config")
        config = TrainConfig.from_yaml(proposed.config_yaml, origin=f"trial {trial.number}")
        try:
            recorded = self.space(trial, self.data_source)
        except TrainerInputError as error:
            return error
        if recorded != config:
            return TrainerInputError(
                f"the space made another config from the Optuna trial's parameters "
                f"{trial.params} than from KerasTuner's values"
            )
        return config

    def told(self, ending: Ending) -> bool | None:
        """Tell the oracle how a trial the study recorded ended; whether it runs again."""
        trial_id = ending.user_attrs.get(TrialAttr.KERAS_TUNER_TRIAL)
        if trial_id is None:
            return None
        verdict = ending.verdict
        if verdict.reason in NOT_TOLD:
            return verdict.reason != Reason.TAKEN_OVER
        value = verdict.value if verdict.state == TrialState.COMPLETE else ending.best_value
        result = oracle_result(verdict.state, verdict.reason, value, verdict.detail)
        return self._tell(str(trial_id), result) == "INVALID"

    def ended_search(self) -> bool:
        return self.stopped

    def close(self) -> None:
        self.connection.close()  # the process ends when its pipe does, between two requests
        # Before it is ready it has written nothing: no need to wait for its imports.
        self.process.join(timeout=30 if self.ready is not None else 0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=30)
        self._lock_file.close()
