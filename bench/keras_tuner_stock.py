"""Stock KerasTuner `Hyperband`, as a user would run it, over the project's space.

The headline peer of `bench.search_quality`: the strongest KerasTuner a user gets without this
project is its `keras_tuner.Hyperband` Tuner (`hyperband_iterations=1`, `factor=3`, objective
`val_accuracy`, maximised), so the benchmark's last line compares against it. Its trials are
trained here with the project's trainer (`bench.trials`), so an epoch costs what it costs every
other system:

- the space is declared in conditional scopes (`search.engines.keras_tuner_space.declare_space`)
  and a trial's hyperparameters become a config through `KerasTunerSuggester`, as in the
  KerasTuner engine;
- `run_trial` replaces the hypermodel: a trial trains up to `tuner/epochs` global epochs, and
  one that continues an earlier trial starts from its best-epoch weights after
  `tuner/initial_epoch`, as KerasTuner's Hyperband reloads its checkpoint
  (`bench.trials.HyperbandRounds`), charged only the epochs it trains;
- no collapse rules and no pruning, which stock KerasTuner does not have: every trial counts
  for its best validation accuracy.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.trials import HyperbandRounds, HyperbandTrial
from search.engines.keras_tuner_space import KerasTunerSuggester, declare_space
from search.engines.oracle import OBJECTIVE, keras_tuner_seed
from spaces.finetune import FineTuneSpace


def run_keras_tuner_stock(
    space: FineTuneSpace,
    data_source: str,
    *,
    max_epochs: int,
    seed: int,
    factor: int = 3,
    on_trial: Callable[[HyperbandTrial], None] = lambda _trial: None,
) -> list[HyperbandTrial]:
    """Run stock `keras_tuner.Hyperband` for one iteration (every bracket once) and return
    its trials in the order it ran them."""
    import keras_tuner

    trials: list[HyperbandTrial] = []

    with tempfile.TemporaryDirectory(prefix="keras-tuner-stock-") as folder:
        rounds = HyperbandRounds(Path(folder))

        class ProjectTrainerHyperband(keras_tuner.Hyperband):
            """KerasTuner's Hyperband whose trials train with the project's trainer."""

            def run_trial(self, trial: Any, *_args: Any, **_kwargs: Any) -> dict[str, float]:
                hp = trial.hyperparameters
                suggester = KerasTunerSuggester(hp)
                config = space(suggester, data_source)
                values = dict(hp.values)
                counted = rounds.run(trial.trial_id, values, suggester.used, config)
                trials.append(counted)
                on_trial(counted)
                return {OBJECTIVE: counted.best}

        tuner = ProjectTrainerHyperband(
            objective=keras_tuner.Objective(OBJECTIVE, direction="max"),
            hyperparameters=declare_space(space),
            max_epochs=max_epochs,
            factor=factor,
            hyperband_iterations=1,
            seed=keras_tuner_seed(seed),
            directory=folder,
            project_name="bench",
            overwrite=True,
        )
        tuner.search(verbose=0)
    return trials
