"""KerasTuner's view of a space: the declared parameters and their conditional scopes, the
trials its three oracles sample, the Suggester that turns them into configs, and the oracle's
saved state (`search.engines.keras_tuner_space`, `search.engines.oracle`).

No Keras training: the oracles are asked for trials and told made-up accuracies.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import FixedTrial

from search.engines.keras_tuner_space import KerasTunerSuggester, SpaceMismatchError, declare_space
from search.engines.oracle import (
    HYPERBAND_KEYS,
    OBJECTIVE,
    EndTrial,
    NextTrial,
    OracleServer,
    OracleSettings,
    ProposedTrial,
    TrialEnded,
    make_oracle,
    most_epochs,
)
from search.study.files import load_study_file
from search.study.registry import STUDIES
from spaces import effnet_b4, smoke
from spaces.finetune import FineTuneSpace
from spaces.parameters import Parameter, Role
from tests.conftest import REPO
from trainers.config.schema import TrainConfig

DATA = "synthetic:target"
B4 = effnet_b4.SPACE
STUDY_FILES = sorted((REPO / "studies").glob("*.yaml"))
#: The parameters only a fine-tune phase has (effnet_b4 searches all of them).
FINE_TUNE = frozenset(
    {"ft_optimizer", "ft_lr_adamw", "ft_lr_sgd", "ft_epochs", "warmup_frac", "freeze_bn"}
    | {"use_l2sp", "l2sp_alpha"}
)
#: Trials per oracle. Hyperband over effnet_b4 (max_epochs 28, factor 3) fills round 0 of its
#: first bracket with 34 trials, then promotes: 40 trials see round 1.
TRIALS = {"random": 30, "bayesian": 10, "hyperband": 40}
#: Random trials before the Bayesian oracle fits its Gaussian process (its default, 3 x the
#: dimensions, is 51 on effnet_b4).
BAYESIAN_RANDOM_START = 6
#: With this seed every branch of effnet_b4 shows up within each oracle's trials.
SEED = 1


def settings(
    folder: Path,
    oracle: str,
    space: FineTuneSpace = B4,
    *,
    max_trials: int | None = 40,
    retries: int = 0,
) -> OracleSettings:
    return OracleSettings(
        oracle=oracle,
        folder=str(folder),
        project="study",
        space=space,
        data_source=DATA,
        seed=SEED,
        max_trials=max_trials,
        retries=retries,
    )


def accuracy(index: int) -> float:
    """A made-up accuracy for the index-th trial, unrelated to its values.

    Unstructured on purpose: the Bayesian oracle's Gaussian process then fits a flat
    acquisition function, which its 50 L-BFGS restarts leave at once. Accuracies that depend on
    the values cost up to a minute per trial in effnet_b4's 17 dimensions."""
    return 0.3 + (index * 5 % 13) / 20


def without_tuner_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if not name.startswith("tuner/")}


def one_choice(space: FineTuneSpace) -> set[str]:
    """Parameters the space asks for but does not search (a single choice, or fixed)."""
    return {parameter.name for parameter in space.parameters() if parameter.role == Role.FIXED}


# -- 1. the declaration -------------------------------------------------------------------------


def expected_declaration(space: FineTuneSpace) -> dict[str, list[dict[str, Any]]]:
    """Each parameter KerasTuner must search, in the order the space asks for them, with its
    `active_when` chain less the parents that are fixed (a fixed parent with another value
    leaves the parameter out)."""
    described = {parameter.name: parameter for parameter in space.parameters()}
    expected: dict[str, list[dict[str, Any]]] = {}
    for parameter in described.values():
        if parameter.role == Role.FIXED:
            continue
        chain: list[dict[str, Any]] = []
        reachable = True
        for parent, values in parameter.active_when:
            known = described.get(parent)
            if known is not None and known.role == Role.FIXED:
                reachable = reachable and known.value in values
            else:
                chain.append({"name": parent, "values": list(values)})
        if reachable:
            expected[parameter.name] = chain
    return expected


def declared(space: FineTuneSpace) -> dict[str, list[dict[str, Any]]]:
    hp = declare_space(space)
    return {entry.name: [c.get_config() for c in entry.conditions] for entry in hp.space}


def declared_range(entry: Any) -> tuple[Any, ...]:
    config = entry.get_config()
    if "values" in config:
        return ("categorical", tuple(config["values"]))
    kind = "int" if type(entry).__name__ == "Int" else "float"
    return (kind, config["min_value"], config["max_value"], config["sampling"] == "log")


def described_range(parameter: Parameter) -> tuple[Any, ...]:
    if parameter.kind == "categorical":
        return ("categorical", parameter.choices)
    return (parameter.kind, parameter.low, parameter.high, parameter.log)


def all_spaces() -> list[Any]:
    registered = [pytest.param(spec.space, id=name) for name, spec in STUDIES.items()]
    files = [pytest.param(load_study_file(path).spec.space, id=path.name) for path in STUDY_FILES]
    return registered + files


def test_every_registered_study_and_study_file_is_covered() -> None:
    # The parametrised declaration tests below see the four registered studies and every file
    # in studies/ (a new file is picked up without editing this one).
    assert set(STUDIES) == {"effnet_b4", "effnet_b0", "demo", "smoke"}
    assert {path.name for path in STUDY_FILES} >= {
        "image_folder_local_weights.yaml",
        "stanford_dogs_b0.yaml",
        "stanford_dogs_b4.yaml",
    }


@pytest.mark.parametrize("space", all_spaces())
def test_declaration_is_the_searched_parameters_with_their_conditions(
    space: FineTuneSpace,
) -> None:
    expected = expected_declaration(space)
    got = declared(space)
    # Exactly the parameters that are not fixed and not cut off by a fixed parent, in the
    # order the space asks for them (a parent is declared before its children).
    assert list(got) == list(expected)
    # Each one's KerasTuner conditions are its `active_when` chain, fixed parents resolved away.
    assert got == expected


@pytest.mark.parametrize("space", all_spaces())
def test_declared_ranges_and_choices_are_the_spaces(space: FineTuneSpace) -> None:
    described = {parameter.name: parameter for parameter in space.parameters()}
    hp = declare_space(space)
    for entry in hp.space:
        # Same choices (KerasTuner stores True/False as 1/0, which compare equal), or the same
        # bounds and scale.
        assert declared_range(entry) == described_range(described[entry.name]), entry.name


def test_effnet_b4_declares_every_conditional() -> None:
    got = declared(B4)
    fine_tune = {"name": "unfreeze_level", "values": [1, 2, 3, 4, 5, 6, 7, 8]}
    # Fine-tune parameters only when the level unfreezes units (level 0 is the linear probe);
    # each optimizer's rate only under its optimizer; l2sp_alpha only with use_l2sp.
    assert got["ft_optimizer"] == [fine_tune] and got["freeze_bn"] == [fine_tune]
    assert got["ft_lr_adamw"] == [fine_tune, {"name": "ft_optimizer", "values": ["adamw"]}]
    assert got["ft_lr_sgd"] == [fine_tune, {"name": "ft_optimizer", "values": ["sgd"]}]
    assert got["l2sp_alpha"] == [fine_tune, {"name": "use_l2sp", "values": [True]}]
    # Always-sampled parameters have no condition.
    assert got["head_lr"] == [] and got["unfreeze_level"] == []


# -- 2. sampling under each oracle ---------------------------------------------------------------


@dataclass(frozen=True)
class Sampled:
    trial_id: str
    values: dict[str, Any]
    used: dict[str, Any]
    config: TrainConfig


@dataclass(frozen=True)
class OracleRun:
    oracle: Any
    trials: list[Sampled]


def run_oracle(name: str, folder: Path) -> OracleRun:
    """`TRIALS[name]` trials of effnet_b4 under one oracle, each built into a config by the
    space and ended COMPLETED with a made-up accuracy."""
    oracle = make_oracle(settings(folder, name))
    oracle._set_project_dir(str(folder), "study")
    if name == "bayesian":
        oracle.num_initial_points = BAYESIAN_RANDOM_START
        oracle.gpr.n_restarts_optimizer = 0  # speed only: the sampling path is the same
    sampled = []
    for index in range(TRIALS[name]):
        trial = oracle.create_trial(f"tuner{index}")
        assert trial.status == "RUNNING", (name, index, trial.status)
        suggester = KerasTunerSuggester(trial.hyperparameters)
        config = B4(suggester, DATA)
        values = dict(trial.hyperparameters.values)
        sampled.append(Sampled(trial.trial_id, values, dict(suggester.used), config))
        oracle.update_trial(trial.trial_id, {OBJECTIVE: accuracy(index)})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    return OracleRun(oracle, sampled)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, OracleRun]:
    return {name: run_oracle(name, tmp_path_factory.mktemp(name)) for name in TRIALS}


ORACLES = pytest.mark.parametrize("oracle", list(TRIALS))


@ORACLES
def test_every_trial_builds_a_config_of_its_phases(runs: dict[str, OracleRun], oracle: str) -> None:
    trials = runs[oracle].trials
    # Every trial the oracle made became a config (the space raised for none of them).
    assert len(trials) == TRIALS[oracle]
    for sampled in trials:
        level = sampled.values["unfreeze_level"]
        # Level 0 is head-only; any other level adds a fine-tune phase of its ladder's units.
        assert len(sampled.config.phases) == (1 if level == 0 else 2)
        assert sampled.config.phases[-1].unfreeze_blocks == B4.unfreeze_ladder[level]


@ORACLES
def test_oracles_never_sample_inactive_parameters(runs: dict[str, OracleRun], oracle: str) -> None:
    for sampled in runs[oracle].trials:
        values = sampled.values
        if values["unfreeze_level"] == 0:
            # A linear probe has no fine-tune value at all.
            assert not FINE_TUNE & set(values), values
            continue
        # Each optimizer's learning rate only with that optimizer.
        assert ("ft_lr_adamw" in values) == (values["ft_optimizer"] == "adamw"), values
        assert ("ft_lr_sgd" in values) == (values["ft_optimizer"] == "sgd"), values
        # l2sp_alpha only when L2-SP is on.
        assert ("l2sp_alpha" in values) == bool(values["use_l2sp"]), values


@ORACLES
def test_every_branch_occurs_over_a_run(runs: dict[str, OracleRun], oracle: str) -> None:
    trials = runs[oracle].trials
    levels = {sampled.values["unfreeze_level"] > 0 for sampled in trials}
    optimizers = {sampled.values.get("ft_optimizer") for sampled in trials}
    l2sp = {sampled.used.get("use_l2sp") for sampled in trials}
    # The checks above are not vacuous: the run has linear probes and fine-tunes, both
    # optimizers and L2-SP on and off.
    assert levels == {False, True}
    assert optimizers == {None, "adamw", "sgd"}
    assert l2sp == {None, False, True}


@ORACLES
def test_used_parameters_are_the_trials_values(runs: dict[str, OracleRun], oracle: str) -> None:
    unsearched = one_choice(B4)
    for sampled in runs[oracle].trials:
        used = {name: value for name, value in sampled.used.items() if name not in unsearched}
        # The space asked for exactly the values the oracle sampled (Hyperband's tuner/*
        # bookkeeping aside): nothing inactive, nothing missing.
        assert used == without_tuner_keys(sampled.values)


@ORACLES
def test_boolean_choices_come_back_as_bools(runs: dict[str, OracleRun], oracle: str) -> None:
    fine_tunes = [sampled for sampled in runs[oracle].trials if len(sampled.config.phases) == 2]
    assert fine_tunes
    for sampled in fine_tunes:
        # KerasTuner stores True/False as 1/0; the space gets the choice itself.
        assert type(sampled.used["freeze_bn"]) is bool and type(sampled.used["use_l2sp"]) is bool
        assert sampled.config.phases[1].freeze_batchnorm is sampled.used["freeze_bn"]
        assert sampled.used["freeze_bn"] == sampled.values["freeze_bn"]
        # L2-SP off leaves the config's alpha at 0.
        assert (sampled.config.l2sp_alpha > 0) is sampled.used["use_l2sp"]


def test_bayesian_oracle_left_its_random_start(runs: dict[str, OracleRun]) -> None:
    oracle = runs["bayesian"].oracle
    # After BAYESIAN_RANDOM_START completed trials the rest came from its fitted Gaussian
    # process (fitted on all completed trials but the last).
    assert TRIALS["bayesian"] > BAYESIAN_RANDOM_START
    assert len(oracle.gpr.X_train_) == TRIALS["bayesian"] - 1


def test_hyperband_promotes_the_same_values_to_a_later_round(
    runs: dict[str, OracleRun],
) -> None:
    trials = {sampled.trial_id: sampled for sampled in runs["hyperband"].trials}
    promoted = [sampled for sampled in trials.values() if sampled.values["tuner/round"] > 0]
    # 40 trials get past the first round of the first bracket.
    assert promoted
    for sampled in promoted:
        source = trials[sampled.values["tuner/trial_id"]]
        # A promotion continues its source trial: the same config, more epochs.
        assert without_tuner_keys(sampled.values) == without_tuner_keys(source.values)
        assert sampled.config == source.config
        assert sampled.values["tuner/initial_epoch"] == source.values["tuner/epochs"]


def test_next_trial_proposes_a_config_its_params_reproduce(tmp_path: Path) -> None:
    server = OracleServer(settings(tmp_path, "hyperband"))
    for index in range(6):
        proposed = server.next_trial(NextTrial(f"t{index}"))
        assert isinstance(proposed, ProposedTrial) and proposed.status == "RUNNING"
        assert proposed.error is None and proposed.config_yaml is not None
        config = TrainConfig.from_yaml(proposed.config_yaml)
        hyperparameters = server.oracle.get_trial(proposed.trial_id).hyperparameters
        suggester = KerasTunerSuggester(hyperparameters)
        # The proposal's config is the space's config of the trial's values ...
        assert B4(suggester, DATA) == config
        # ... its params are what the space used, and they reproduce the config under Optuna.
        assert dict(proposed.params) == suggester.used
        assert B4(FixedTrial(dict(proposed.params)), DATA) == config
        # Its values are the trial's, tuner/* included.
        assert dict(proposed.values) == hyperparameters.values
        # A first-round trial has Hyperband's keys, all but the trial it continues.
        assert set(proposed.values) - set(suggester.used) == HYPERBAND_KEYS - {"tuner/trial_id"}
        ended = server.end_trial(EndTrial(proposed.trial_id, "COMPLETED", accuracy(index)))
        assert ended == TrialEnded(proposed.trial_id, "COMPLETED")


class _Undescribed(FineTuneSpace):
    """effnet_b4 whose description forgets head_dropout: a bug in a space."""

    def parameters(self) -> tuple[Parameter, ...]:
        return tuple(p for p in super().parameters() if p.name != "head_dropout")


def test_a_space_asking_for_an_undeclared_parameter_is_a_proposal_error(tmp_path: Path) -> None:
    space = _Undescribed(**{f.name: getattr(B4, f.name) for f in dataclasses.fields(B4)})
    proposed = OracleServer(settings(tmp_path, "random", space)).next_trial(NextTrial("t0"))
    # The trial is proposed without a config, with an error naming the parameter, rather than
    # crashing the oracle process.
    assert proposed.status == "RUNNING" and proposed.config_yaml is None
    assert proposed.error is not None and "head_dropout" in proposed.error


# -- 3. fixed parents resolve away ---------------------------------------------------------------


def test_a_fixed_linear_probe_declares_no_fine_tune_parameter() -> None:
    got = declared(dataclasses.replace(B4, fixed={"unfreeze_level": 0}))
    # unfreeze_level is not searched, and no fine-tune parameter can ever be active.
    assert "unfreeze_level" not in got
    assert not FINE_TUNE & set(got)
    assert {"head_lr", "batch_size", "head_dropout"} <= set(got)


def test_a_fixed_fine_tune_level_drops_the_level_condition() -> None:
    got = declared(dataclasses.replace(B4, fixed={"unfreeze_level": 3}))
    # A fixed level that unfreezes units is always true: the fine-tune parameters are
    # unconditional, the optimizer's rate depends on the optimizer alone.
    assert got["ft_optimizer"] == [] and got["freeze_bn"] == [] and got["use_l2sp"] == []
    assert got["ft_lr_sgd"] == [{"name": "ft_optimizer", "values": ["sgd"]}]
    assert got["l2sp_alpha"] == [{"name": "use_l2sp", "values": [True]}]


def test_a_single_optimizer_declares_only_its_rate_under_the_level() -> None:
    got = declared(dataclasses.replace(B4, ft_optimizers=("sgd",)))
    fine_tune = [{"name": "unfreeze_level", "values": [1, 2, 3, 4, 5, 6, 7, 8]}]
    # One optimizer is not searched: its rate has no ft_optimizer condition, the other
    # optimizer's rate does not exist.
    assert "ft_optimizer" not in got and "ft_lr_adamw" not in got
    assert got["ft_lr_sgd"] == fine_tune


def test_a_fixed_other_optimizer_cuts_off_its_rate() -> None:
    got = declared(dataclasses.replace(B4, fixed={"ft_optimizer": "sgd"}))
    # ft_lr_adamw applies only with adamw, which a fixed sgd never is.
    assert "ft_lr_adamw" not in got and "ft_optimizer" not in got
    assert got["ft_lr_sgd"] == [{"name": "unfreeze_level", "values": [1, 2, 3, 4, 5, 6, 7, 8]}]


def test_l2sp_fixed_off_declares_no_alpha_and_fixed_on_always_samples_it(tmp_path: Path) -> None:
    off = declared(dataclasses.replace(B4, fixed={"use_l2sp": False}))
    # L2-SP off: neither the switch nor its strength is searched.
    assert "use_l2sp" not in off and "l2sp_alpha" not in off
    on_space = dataclasses.replace(B4, fixed={"use_l2sp": True})
    on = declared(on_space)
    # L2-SP on: its strength depends on the fine-tune level alone ...
    assert "use_l2sp" not in on
    assert on["l2sp_alpha"] == [{"name": "unfreeze_level", "values": [1, 2, 3, 4, 5, 6, 7, 8]}]
    # ... and every fine-tune trial the oracle makes has it, and a config with L2-SP.
    server = OracleServer(settings(tmp_path, "random", on_space))
    proposals = [server.next_trial(NextTrial(f"t{index}")) for index in range(12)]
    fine_tunes = [p for p in proposals if p.values["unfreeze_level"] > 0]
    assert fine_tunes and len(fine_tunes) < len(proposals)
    for proposed in proposals:
        assert ("l2sp_alpha" in proposed.values) == (proposed.values["unfreeze_level"] > 0)
        assert proposed.config_yaml is not None
        alpha = TrainConfig.from_yaml(proposed.config_yaml).l2sp_alpha
        assert (alpha > 0) == (proposed.values["unfreeze_level"] > 0)


# -- 4. the Suggester's errors -------------------------------------------------------------------


def test_an_inactive_parameter_is_a_mismatch_naming_it() -> None:
    hp = declare_space(B4)
    assert hp.get("unfreeze_level") == 0  # the declaration's default: a linear probe
    suggester = KerasTunerSuggester(hp)
    # ft_lr_adamw is declared but inactive at level 0: asking for it is a space bug.
    with pytest.raises(SpaceMismatchError, match=r"'ft_lr_adamw'.*inactive"):
        suggester.suggest_float("ft_lr_adamw", 1e-6, 1e-3, log=True)
    with pytest.raises(SpaceMismatchError, match=r"'use_l2sp'.*inactive"):
        suggester.suggest_categorical("use_l2sp", [False, True])
    # A failed question records nothing.
    assert suggester.used == {}


def test_an_undeclared_parameter_is_a_mismatch_naming_it() -> None:
    suggester = KerasTunerSuggester(declare_space(B4))
    with pytest.raises(SpaceMismatchError, match=r"'momentum'.*lacks"):
        suggester.suggest_float("momentum", 0.0, 1.0)
    # smoke does not search L2-SP: its declaration has no use_l2sp.
    with pytest.raises(SpaceMismatchError, match=r"'use_l2sp'.*lacks"):
        KerasTunerSuggester(declare_space(smoke.SPACE)).suggest_categorical(
            "use_l2sp", [False, True]
        )


def test_a_value_outside_the_asked_range_is_a_mismatch() -> None:
    suggester = KerasTunerSuggester(declare_space(B4))
    # batch_size is 16 by default: not a choice of another list, and level 0 not in 1..8.
    with pytest.raises(SpaceMismatchError, match="batch_size=16"):
        suggester.suggest_categorical("batch_size", [32, 64])
    with pytest.raises(SpaceMismatchError, match="unfreeze_level=0"):
        suggester.suggest_int("unfreeze_level", 1, 8)


def test_a_linear_probe_hp_builds_a_head_only_config() -> None:
    suggester = KerasTunerSuggester(declare_space(B4))
    config = B4(suggester, DATA)
    # The declaration's defaults are a point of the space: one phase, nothing fine-tune asked.
    assert len(config.phases) == 1
    assert not FINE_TUNE & set(suggester.used)


# -- 5. most_epochs --------------------------------------------------------------------------


def test_most_epochs_is_the_longest_config() -> None:
    # Longest head phase plus longest fine-tune phase.
    assert most_epochs(B4) == max(B4.head_epochs) + max(B4.ft_epochs) == 28
    # smoke: 2 head epochs + 1 fine-tune epoch, both single choices.
    assert most_epochs(smoke.SPACE) == 3
    # A space that never fine-tunes is its head phase only.
    assert most_epochs(dataclasses.replace(B4, fixed={"unfreeze_level": 0})) == max(B4.head_epochs)
    assert most_epochs(dataclasses.replace(B4, unfreeze_ladder=(0,))) == max(B4.head_epochs)
    # Fixed values count as they are fixed.
    fixed = dataclasses.replace(B4, fixed={"head_epochs": 5, "ft_epochs": 10})
    assert most_epochs(fixed) == 15


def test_hyperband_runs_to_most_epochs(tmp_path: Path) -> None:
    ready = OracleServer(settings(tmp_path, "hyperband")).ready()
    # Hyperband's max_epochs is the space's longest config; a new study has no trials.
    assert ready.max_epochs == most_epochs(B4) and ready.trials == 0 and ready.requeued == ()


# -- 6. state and resume -----------------------------------------------------------------------


def start(server: OracleServer, tuner: str) -> ProposedTrial:
    proposed = server.next_trial(NextTrial(tuner))
    assert proposed.status == "RUNNING" and proposed.config_yaml is not None
    return proposed


def complete(server: OracleServer, proposed: ProposedTrial, value: float = 0.5) -> None:
    ended = server.end_trial(EndTrial(proposed.trial_id, "COMPLETED", value))
    assert ended.status == "COMPLETED"


def one_running(folder: Path) -> tuple[OracleSettings, list[ProposedTrial]]:
    """Three Hyperband trials, the first two ended and the third still running."""
    chosen = settings(folder, "hyperband", max_trials=None)
    server = OracleServer(chosen)
    first = start(server, "t0")
    complete(server, first, 0.4)
    second = start(server, "t1")
    complete(server, second, 0.6)
    return chosen, [first, second, start(server, "t2")]


def test_state_files_are_whole_json_and_reload(tmp_path: Path) -> None:
    chosen, proposals = one_running(tmp_path)
    project = tmp_path / "study"
    # Every state file is complete JSON, and no temporary file of the atomic writes is left.
    state = json.loads((project / "oracle.json").read_text())
    trial_files = sorted(project.glob("trial_*/trial.json"))
    assert len(trial_files) == len(proposals)
    saved = {json.loads(path.read_text())["trial_id"] for path in trial_files}
    assert saved == {proposed.trial_id for proposed in proposals}
    assert list(tmp_path.rglob("*.tmp-*")) == []
    assert state["ongoing_trials"] == {"t2": proposals[2].trial_id}
    # A new server over the same folder reloads all three trials.
    assert OracleServer(chosen).ready().trials == len(proposals)


def test_a_reload_hands_the_running_trial_out_again(tmp_path: Path) -> None:
    chosen, proposals = one_running(tmp_path)
    running = proposals[2]
    server = OracleServer(chosen)
    again = server.next_trial(NextTrial("another tuner"))
    # The trial that was running runs again: same id, same values, same config.
    assert (again.trial_id, again.status) == (running.trial_id, "RUNNING")
    assert again.values == running.values and again.config_yaml == running.config_yaml
    # The ended trials keep their state; the next request is a new trial.
    assert server.oracle.get_trial(proposals[0].trial_id).status == "COMPLETED"
    assert start(server, "t3").trial_id not in {proposed.trial_id for proposed in proposals}


def test_a_reload_reports_the_running_trial_as_requeued(tmp_path: Path) -> None:
    chosen, proposals = one_running(tmp_path)
    # The trial that was running when the state was saved is reported as queued again.
    assert OracleServer(chosen).ready().requeued == (proposals[2].trial_id,)


def test_a_reload_queues_only_the_trials_that_were_running(tmp_path: Path) -> None:
    chosen = settings(tmp_path, "hyperband", max_trials=None)
    server = OracleServer(chosen)
    first, second, third = (start(server, f"t{index}") for index in range(3))
    complete(server, first)
    complete(server, third)  # `second` is still running: three workers, one unfinished
    reloaded = OracleServer(chosen)
    # Only the unfinished trial is queued again and runs again; the completed ones stay
    # completed.
    assert reloaded.ready().requeued == (second.trial_id,)
    again = reloaded.next_trial(NextTrial("t3"))
    assert again.trial_id == second.trial_id
    assert reloaded.oracle.get_trial(third.trial_id).status == "COMPLETED"


# -- 7. retries --------------------------------------------------------------------------------


@pytest.mark.parametrize("oracle", ["random", "bayesian", "hyperband"])
def test_an_invalid_trial_runs_again_until_its_retries_are_spent(
    tmp_path: Path, oracle: str
) -> None:
    server = OracleServer(settings(tmp_path, oracle, retries=1))
    first = start(server, "t0")
    # A crash with a retry left queues the trial again (INVALID) ...
    assert server.end_trial(EndTrial(first.trial_id, "INVALID", message="oom")) == TrialEnded(
        first.trial_id, "INVALID"
    )
    retry = start(server, "t1")
    # ... and the next request hands out the same trial with the same values ...
    assert (retry.trial_id, retry.values) == (first.trial_id, first.values)
    # ... whose second crash spends max_retries_per_trial + 1 = 2 runs: FAILED for good.
    assert server.end_trial(EndTrial(first.trial_id, "INVALID", message="oom")) == TrialEnded(
        first.trial_id, "FAILED"
    )
    assert start(server, "t2").trial_id != first.trial_id


def test_without_retries_an_invalid_trial_fails_at_once(tmp_path: Path) -> None:
    server = OracleServer(settings(tmp_path, "hyperband", retries=0))
    proposed = start(server, "t0")
    # max_retries_per_trial 0: one run, so the first crash is final.
    ended = server.end_trial(EndTrial(proposed.trial_id, "INVALID"))
    assert ended == TrialEnded(proposed.trial_id, "FAILED")
    assert start(server, "t1").trial_id != proposed.trial_id
