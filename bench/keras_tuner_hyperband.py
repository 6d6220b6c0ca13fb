"""KerasTuner's Hyperband over the project's space, as the KerasTuner engine runs it.

An extra row of `bench.search_quality`, whose headline peer is stock KerasTuner
(`bench.keras_tuner_stock`): `search.run --engine keras-tuner --oracle hyperband` in one
process. The same pieces as the engine, with the trials trained here (`bench.trials`)
instead of in worker processes, so that an epoch costs what it costs every other system:

- the oracle is the engine's (`search.engines.oracle.OracleServer`): KerasTuner's
  `HyperbandOracle` with the space declared in conditional scopes, its trials turned into
  configs by `KerasTunerSuggester`;
- a trial trains its round's window of epochs (`bench.trials.HyperbandRounds`, as stock
  KerasTuner's trials do in `bench.keras_tuner_stock`); one that continues an earlier round's
  trial starts from that trial's best-epoch weights after `tuner/initial_epoch`, as
  KerasTuner's own Hyperband does, so it is charged only the epochs it trains;
- the per-epoch decision judges every epoch, as in the engine (`bench.trials.deciding`: the
  collapse rules; a KerasTuner study has no Optuna pruner), and the oracle is told each result as
  the engine tells it (`oracle_result`): a pruned trial with its best epoch so far. A pruned
  trial's value does not count for the benchmark, as `search.export` would not export it; a
  trial stopped after a good epoch completes with its best, as in the engine.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from optuna.trial import TrialState

from bench.trials import HyperbandRounds, HyperbandTrial, deciding
from search.engines.oracle import EndTrial, NextTrial, OracleServer, OracleSettings
from search.engines.oracle_results import oracle_result
from search.pruning.collapse import CollapseRules
from spaces.finetune import FineTuneSpace
from trainers.config.schema import TrainConfig


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
        rounds = HyperbandRounds(Path(folder))
        while True:
            proposed = oracle.next_trial(NextTrial("bench"))
            if proposed.status != "RUNNING":  # one trial at a time: never IDLE
                break
            assert proposed.config_yaml is not None, proposed.error
            config = TrainConfig.from_yaml(proposed.config_yaml)
            counted = rounds.run(
                proposed.trial_id,
                proposed.values,
                proposed.params,
                config,
                deciding(config, rules),
            )
            state = TrialState.COMPLETE if counted.pruned is None else TrialState.PRUNED
            result = oracle_result(state, counted.pruned or "", counted.best)
            oracle.end_trial(EndTrial(proposed.trial_id, result.status, result.value))
            trials.append(counted)
            on_trial(counted)
    return trials
