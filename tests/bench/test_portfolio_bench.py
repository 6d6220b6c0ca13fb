"""bench.portfolio: the greedy choice over the corpora, and the file it writes."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from bench import portfolio
from bench.corpus import Corpus, CurveRecord
from search.pruning.collapse import EpochView
from search.study.portfolio import load_portfolio, place_all
from spaces import effnet_b4


def _params(level: int, optimizer: str = "adamw", freeze_bn: bool = True) -> dict[str, Any]:
    params: dict[str, Any] = {
        "head_lr": 0.003, "head_epochs": 2, "unfreeze_level": level, "batch_size": 16,
        "head_dropout": 0.2,
    }  # fmt: skip
    if level:
        params |= {
            "ft_optimizer": optimizer, f"ft_lr_{optimizer}": 1e-3, "ft_epochs": 3,
            "warmup_frac": 0.0, "freeze_bn": freeze_bn,
        }  # fmt: skip
    return params


CANDIDATES = [_params(0), _params(1, "sgd"), _params(6), _params(3, freeze_bn=False)]


def _corpus(task: str, bests: list[float], images: int = 2000) -> Corpus:
    records = tuple(
        CurveRecord(number, params, (2,), (EpochView(1, 1, 1.0, best),))
        for number, (params, best) in enumerate(zip(CANDIDATES, bests, strict=True))
    )
    return Corpus(task, "synthetic:far", 10, images, 0, records)


def test_the_greedy_choice_starts_from_the_probe_and_covers_every_task() -> None:
    # Two tasks, each won by another fine-tune; the last is nowhere near either winner.
    corpora = [_corpus("a", [0.50, 0.90, 0.40, 0.30]), _corpus("b", [0.20, 0.25, 0.85, 0.30])]
    found = portfolio.candidates(corpora)
    chosen = portfolio.choose(found, corpora)
    numbers = [candidate.number for candidate, _ in chosen]
    # The linear probe first, then both winners (the order is the larger gain first); the rest
    # adds nothing, but a portfolio holds at least 3.
    assert numbers[0] == 0 and set(numbers[1:3]) == {1, 2} and len(numbers) == 3
    scores = [score for _, score in chosen]
    assert scores == sorted(scores) and scores[-1] == pytest.approx(1.0, abs=0.01)


def test_measurement_noise_makes_a_close_second_worth_a_place() -> None:
    # On 60 images, 0.80 and 0.78 are within noise: the second may well be the better one.
    noisy = [_corpus("a", [0.2, 0.80, 0.78, 0.1], images=60)]
    assert [c.number for c, _ in portfolio.choose(portfolio.candidates(noisy), noisy)][:3] == [
        0, 1, 2,
    ]  # fmt: skip
    # On 20,000 images the same gap is not noise, and the greedy gain of the second is small.
    exact = [_corpus("a", [0.2, 0.80, 0.78, 0.1], images=20_000)]
    chosen = portfolio.choose(portfolio.candidates(exact), exact)
    gains = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(chosen)]
    assert gains[1] < portfolio.MIN_GAIN


def test_the_run_order_is_the_best_alone_first() -> None:
    corpora = [_corpus("a", [0.50, 0.90, 0.40, 0.30]), _corpus("b", [0.20, 0.25, 0.85, 0.30])]
    chosen = portfolio.choose(portfolio.candidates(corpora), corpora)
    # Chosen probe first (the baseline), run after the two fine-tunes: scaled per task,
    # candidate 2 averages 0.58, candidate 1 0.54, the probe 0.17.
    assert [c.number for c in portfolio.run_order(chosen, corpora)] == [2, 1, 0]


def test_recipes_are_written_as_shares_and_positions() -> None:
    corpora = [_corpus("a", [0.50, 0.90, 0.40, 0.30])]
    deep = portfolio.recipe_of(portfolio.candidates(corpora)[2], corpora)
    # Level 6 of the bench ladder unfreezes all 13 units of MobileNetV3Small.
    assert (deep.name, deep.unfreeze_share) == ("adamw_100pct_units_bn_frozen", 1.0)
    assert (deep.head_epochs, deep.ft_epochs, deep.ft_lr) == (0.0, 0.0, 1e-3)
    assert deep.why == "configuration 2 of the corpora: a 0.400 (rank 3 of 4)"
    probe = portfolio.recipe_of(portfolio.candidates(corpora)[0], corpora)
    assert (probe.name, probe.unfreeze_share, probe.ft_optimizer) == ("linear_probe", 0.0, None)


def test_the_command_writes_a_portfolio_every_study_can_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written = tmp_path / "portfolio.yaml"
    assert portfolio.main(["--tasks", "near", "far", "-o", str(written)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2] == f"wrote {written}"
    assert lines[-1].startswith("portfolio of ")
    recipes = load_portfolio(written)
    # One linear probe; written best first, the order a study runs them.
    assert 3 <= len(recipes) <= 6 and [r.name for r in recipes].count("linear_probe") == 1
    assert recipes[0].unfreeze_share > 0
    # Each says where it comes from: its score and rank on both tasks.
    assert all(" near 0." in r.why and ", far 0." in r.why for r in recipes)
    placed = place_all(recipes, effnet_b4.SPACE)
    assert all(placement.params is not None for placement in placed)


def test_a_missing_corpus_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert portfolio.main(["--corpus-dir", str(tmp_path), "-o", str(tmp_path / "p.yaml")]) == 2
    error = capsys.readouterr().err.splitlines()
    assert len(error) == 1 and error[0].startswith("error: no stored corpus")
    assert not (tmp_path / "p.yaml").exists()
