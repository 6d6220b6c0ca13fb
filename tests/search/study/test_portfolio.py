"""The portfolio: recipes moved onto any backbone's ladder and into narrowed ranges, skipped
with a reason where they have no point, run first, and off with `portfolio: none`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from search.run import main as run_main
from search.studies import main as studies_main
from search.study.files import load_study_file
from search.study.portfolio import (
    LABEL_PREFIX,
    SHIPPED_PORTFOLIO,
    Recipe,
    load_portfolio,
    place,
    place_all,
    with_portfolio,
)
from search.study.registry import STUDIES, get_study_spec
from spaces import demo, effnet_b4
from spaces.finetune import FineTuneSpace
from trainers.errors import ConfigError

PROBE = Recipe(
    name="linear_probe", head_lr=0.019, head_epochs=1.0, batch_size=16, head_dropout=0.28,
    unfreeze_share=0.0,
)  # fmt: skip
DEEP = Recipe(
    name="deep", head_lr=0.015, head_epochs=1.0, batch_size=16, head_dropout=0.08,
    unfreeze_share=1.0, ft_optimizer="adamw", ft_lr=0.0014, ft_epochs=1.0, warmup_frac=0.2,
    freeze_bn=True,
)  # fmt: skip
TOP_SGD = Recipe(
    name="top_sgd", head_lr=0.003, head_epochs=0.0, batch_size=32, head_dropout=0.48,
    unfreeze_share=0.08, ft_optimizer="sgd", ft_lr=0.072, ft_epochs=0.0, warmup_frac=0.2,
    freeze_bn=True,
)  # fmt: skip


def test_a_recipe_moves_onto_another_backbones_ladder_and_ranges() -> None:
    space = effnet_b4.SPACE  # 34 units; ladder 0, 1, 2, 3, 4, 5, 11, 17, 23
    deep = place(DEEP, space)
    assert deep.params is not None
    # All units is beyond the ladder: its deepest step (stage 4, 23 units); the longest phases
    # of this space; the adamw rate clipped into its range; what the recipe leaves open at the
    # mildest (least decay, no augmentation, no smoothing, no L2-SP).
    assert deep.params == {
        "head_lr": 0.015,
        "head_epochs": 8,
        "unfreeze_level": 8,
        "batch_size": 16,
        "weight_decay": 1e-6,
        "head_dropout": 0.08,
        "drop_connect_rate": 0.2,
        "augmentation": "none",
        "label_smoothing": 0.0,
        "ft_optimizer": "adamw",
        "ft_epochs": 20,
        "ft_lr_adamw": 1e-3,
        "warmup_frac": 0.2,
        "freeze_bn": True,
        "use_l2sp": False,
    }
    assert deep.moved == ("ft_lr_adamw 0.0014 → 0.001",)
    # 8% of 34 units is 2.7: the step of 3 units; the shortest phases; sgd's own range.
    top = place(TOP_SGD, space)
    assert top.params is not None
    assert (top.params["unfreeze_level"], space.unfreeze_ladder[3]) == (3, 3)
    assert (top.params["head_epochs"], top.params["ft_epochs"]) == (3, 5)
    assert top.params["ft_lr_sgd"] == pytest.approx(0.03) and "ft_lr_adamw" not in top.params
    # The linear probe stays one, and asks nothing of the fine-tune phase.
    probe = place(PROBE, space)
    assert probe.params is not None and probe.params["unfreeze_level"] == 0
    assert not {"ft_optimizer", "freeze_bn", "ft_epochs"} & probe.params.keys()
    # Each placed recipe is a point of the space: it samples the config it stands for.
    for placed in (deep, top, probe):
        assert placed.params is not None
        config = space.sample(optuna.trial.FixedTrial(dict(placed.params)), "data/x")
        assert space.params_of(config) == placed.params


def test_a_fine_tune_share_never_lands_on_the_linear_probe() -> None:
    # The demo's ladder on MobileNetV3Small (13 units): 1% of it is nearest 0, but a fine-tune
    # stays a fine-tune, on the smallest step that unfreezes anything.
    tiny_share = TOP_SGD.model_copy(update={"unfreeze_share": 0.01})
    placed = place(tiny_share, demo.SPACE)
    assert placed.params is not None and placed.params["unfreeze_level"] == 1


def test_a_narrowed_space_moves_recipes_to_its_nearest_point_or_skips_them(
    tmp_path: Path,
) -> None:
    study = tmp_path / "narrow.yaml"
    study.write_text(
        "name: narrow\nspace: demo\n"
        "unfreeze_ladder: [0, 2, 4]\n"
        "ranges:\n  ft_lr_adamw: [1.0e-5, 1.0e-4]\n  ft_optimizer: [adamw]\n"
        "  batch_size: [32]\n  head_lr: [1.0e-3, 5.0e-3]\n"
    )
    space = load_study_file(study).spec.space
    assert isinstance(space, FineTuneSpace)
    deep, top, probe = place_all((DEEP, TOP_SGD, PROBE), space)
    assert deep.params is not None
    # 13 units wanted, 4 is the deepest step; rates and batch size into the narrowed ranges.
    assert deep.params["unfreeze_level"] == 2
    assert deep.params["ft_lr_adamw"] == pytest.approx(1e-4)
    assert deep.params["head_lr"] == pytest.approx(5e-3)
    assert deep.params["batch_size"] == 32
    assert deep.moved == (
        "head_lr 0.015 → 0.005",
        "batch_size 16 → 32",
        "ft_lr_adamw 0.0014 → 0.0001",
    )
    # sgd is not searched here: skipped, saying why.
    assert top.params is None
    assert top.describe() == (
        "top_sgd: skipped: ft_optimizer sgd is not among the study's choices (adamw)"
    )
    assert probe.params is not None and probe.params["unfreeze_level"] == 0
    # A fixed BatchNorm policy other than the recipe's skips it too.
    bn_trained = DEEP.model_copy(update={"name": "bn_trained", "freeze_bn": False})
    fixed = place(bn_trained, replace(space, fixed={"freeze_bn": True}))
    assert fixed.skipped == "freeze_bn false is fixed to true here"
    # A recipe that lands where an earlier one did is not run twice.
    again = place_all((PROBE, PROBE.model_copy(update={"name": "probe_again"})), space)
    assert again[1].skipped == "the same trial as another the study runs first"


def test_the_portfolio_runs_after_the_studys_own_and_sizes_the_start_up() -> None:
    spec = get_study_spec("demo")
    started, placements = with_portfolio(spec, SHIPPED_PORTFOLIO)
    placed = [p for p in placements if p.params is not None]
    labels = [known.label for known in started.enqueued]
    # The portfolio first, in its file's order (best first), then the study's own.
    assert labels[: len(placed)] == [p.label for p in placed]
    assert all(label.startswith(LABEL_PREFIX) for label in labels[: len(placed)])
    assert labels[len(placed) :] == [known.label for known in spec.enqueued]
    # TPE models from the trials tried first on: no random draws after them.
    assert started.sampler_startup_trials == len(spec.enqueued) + len(placed)
    sampler = started.make_sampler()
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for known in started.enqueued:
        study.enqueue_trial(dict(known.params))
    for index, known in enumerate(started.enqueued):
        trial = study.ask()
        started.space(trial, started.default_data)
        assert trial.params == dict(known.params)
        study.tell(trial, 0.5 + 0.01 * index)
    # Off: the study as it was.
    assert with_portfolio(spec, None) == (spec, ())


def test_the_shipped_portfolio_holds_a_linear_probe_and_fine_tunes() -> None:
    recipes = load_portfolio(SHIPPED_PORTFOLIO)
    assert 3 <= len(recipes) <= 6
    assert [recipe.unfreeze_share for recipe in recipes].count(0.0) == 1
    assert all(recipe.why for recipe in recipes)
    # Every registered study can run all or most of it.
    for spec in STUDIES.values():
        placements = place_all(recipes, spec.space)  # type: ignore[arg-type]
        assert sum(p.params is not None for p in placements) >= 2


def test_portfolio_none_in_a_study_file_and_a_bad_portfolio_file(tmp_path: Path) -> None:
    off = tmp_path / "off.yaml"
    off.write_text("name: no_portfolio\nspace: demo\nportfolio: none\n")
    assert load_study_file(off).portfolio is None
    default = tmp_path / "default.yaml"
    default.write_text("name: default\nspace: demo\n")
    assert load_study_file(default).portfolio == SHIPPED_PORTFOLIO
    missing = tmp_path / "missing.yaml"
    missing.write_text("name: missing\nspace: demo\nportfolio: mine.yaml\n")
    with pytest.raises(ConfigError, match=r"portfolio: .*mine.yaml does not exist"):
        load_study_file(missing)
    bad = tmp_path / "bad_portfolio.yaml"
    bad.write_text("recipes:\n- name: x\n  head_lr: -1\n")
    with pytest.raises(ConfigError, match="not a portfolio file"):
        load_portfolio(bad)


def test_the_listing_shows_the_portfolio_as_it_applies(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert studies_main(["effnet_b4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    recipes = load_portfolio(SHIPPED_PORTFOLIO)
    header = next(line for line in lines if line.startswith("  portfolio    "))
    assert header.startswith(f"  portfolio    {len(recipes)} recipes before them")
    shown = lines[lines.index(header) + 1 : lines.index(header) + 1 + len(recipes)]
    assert [line.split(":")[0].strip() for line in shown] == [r.name for r in recipes]
    assert any("unfreeze_level 0" in line for line in shown)
    starts = len(recipes) + len(STUDIES["effnet_b4"].enqueued)
    assert f"TPE after {starts} start-up trials" in "\n".join(lines)
    assert studies_main(["effnet_b4", "--portfolio", "none"]) == 0
    assert "portfolio" not in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipes: []\n")
    assert studies_main(["effnet_b4", "--portfolio", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad}: not a portfolio file")


def test_a_bad_portfolio_is_one_error_line_from_search_run_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_main(["--study", "demo", "--portfolio", "nope.yaml"]) == 2
    error = capsys.readouterr().err
    assert error == f"error: {tmp_path / 'nope.yaml'}: no such portfolio file\n"
    assert list(tmp_path.iterdir()) == []
