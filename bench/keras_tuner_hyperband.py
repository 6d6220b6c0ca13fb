"""KerasTuner's Hyperband over the project's space, as the KerasTuner engine runs it.

The competitor of `bench.search_quality`: `search.run --engine keras-tuner --oracle hyperband`
in one process. The same pieces as the engine, with the trials trained here (`bench.trials`)
instead of in worker processes, so that an epoch costs what it costs every other system:

- the oracle is the engine's (`search.engines.oracle.OracleServer`): KerasTuner's
  `HyperbandOracle` with the space declared in conditional scopes, its trials turned into
  configs by `KerasTunerSuggester`;
- a trial trains its round's window of epochs (`search.engines.rounds.HyperbandRound`); one
  that continues an earlier round's trial starts from that trial's best-epoch weights after
  `tuner/initial_epoch`, as KerasTuner's own Hyperband does, so it is charged only the epochs
  it trains;
- the per-epoch decision judges every epoch, as in the engine (`bench.trials.deciding`: the
  collapse rules; a KerasTuner study has no Optuna pruner), and the oracle is told each result as
  the engine tells it (`oracle_result`): a pruned trial with its best epoch so far. A pruned
  trial's value does not count for the benchmark, as `search.export` would not export it; a
  trial stopped after a good epoch completes with its best, as in the engine.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from optuna.trial import TrialState

from bench.trials import TrainedTrial, deciding, train_trial
from search.engines.oracle import EndTrial, NextTrial, OracleServer, OracleSettings
from search.engines.oracle_results import oracle_result
from search.engines.rounds import hyperband_round
from search.pruning.collapse import CollapseRules
from spaces.finetune import FineTuneSpace
from trainers.config.schema import TrainConfig


@dataclass(frozen=True)
class HyperbandTrial:
    """One KerasTuner trial as the benchmark counts it."""

    params: dict[str, object]
    epochs: int
    seconds: float
    #: Its best validation accuracy (or, with nothing left to train, its earlier trial's).
    best: float
    #: Why the collapse rules pruned it, if they did (a fall after a good epoch stops a trial
    #: but keeps its best).
    pruned: str | None
    continues: bool

    @property
    def value(self) -> float | None:
        """What it counts for: its best, unless the collapse rules pruned it."""
        return None if self.pruned is not None else self.best

    @classmethod
    def of(
        cls, params: dict[str, object], trained: TrainedTrial, continues: bool
    ) -> HyperbandTrial:
        return cls(
            params,
            len(trained.epochs),
            trained.seconds,
            trained.best,
            trained.pruned,
            continues,
        )


def run_keras_tuner_hyperband(
    space: FineTuneSpace,
    data_source: str,
    *,
    max_epochs: int,
    seed: int,
    rules: CollapseRules,
    factor: int = 3,
    on_trial: Callable[[HyperbandTrial], None] = lambda _trial: None,
) -> list[HyperbandTrial]:
    """Run one Hyperband iteration (every bracket once) and return its trials in order."""
    trials: list[HyperbandTrial] = []
    with tempfile.TemporaryDirectory(prefix="keras-tuner-") as folder:
        oracle = OracleServer(
            OracleSettings(
                oracle="hyperband",
                folder=folder,
                project="bench",
                space=space,
                data_source=data_source,
                seed=seed,
                max_trials=None,
                retries=0,
                factor=factor,
                max_epochs=max_epochs,
            )
        )
        best_weights: dict[str, Path] = {}
        results: dict[str, HyperbandTrial] = {}
        while True:
            proposed = oracle.next_trial(NextTrial("bench"))
            if proposed.status != "RUNNING":  # one trial at a time: never IDLE
                break
            assert proposed.config_yaml is not None, proposed.error
            config = TrainConfig.from_yaml(proposed.config_yaml)
            round_ = hyperband_round(proposed.values)
            assert round_ is not None
            weights = Path(folder) / f"{proposed.trial_id}.weights.h5"
            start = best_weights.get(round_.trial_id) if round_.trial_id else None
            params = dict(proposed.params)
            window = round_.window(start)
            if start is not None and window.after_epoch >= config.total_epochs:
                # Its earlier trial trained the whole config: its result, as the engine tells.
                assert round_.trial_id is not None
                earlier = results[round_.trial_id]
                counted = HyperbandTrial(params, 0, 0.0, earlier.best, earlier.pruned, True)
            else:
                decide = deciding(config, rules)
                trained = train_trial(config, decide, window=window, save=weights)
                if weights.is_file():
                    best_weights[proposed.trial_id] = weights
                counted = HyperbandTrial.of(params, trained, start is not None)
            state = TrialState.COMPLETE if counted.pruned is None else TrialState.PRUNED
            result = oracle_result(state, counted.pruned or "", counted.best)
            oracle.end_trial(EndTrial(proposed.trial_id, result.status, result.value))
            results[proposed.trial_id] = counted
            trials.append(counted)
            on_trial(counted)
    return trials
