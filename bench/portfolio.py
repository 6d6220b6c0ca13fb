"""Choosing the portfolio of recipes every study tries first: `python -m bench.portfolio`.

    python -m bench.portfolio              # from the stored corpora, writes the shipped file
    python -m bench.portfolio --tasks near far -o /tmp/portfolio.yaml

The candidates are the configurations of the benchmark corpora (`bench.corpus`: the same
configurations of `BENCH_SPACE`, trained to completion on each generated task; build a missing
one with `python -m bench.pruning --tasks TASK`). The score is what a study cares about, each
configuration's best validation accuracy, scaled per task from its worst configuration (0) to
its best (1), so that every task weighs the same.

The choice is greedy, as Auto-sklearn 2.0 builds its portfolio: first the best linear probe
(the frozen baseline everything is measured against), then, one at a time, the candidate that
most raises the portfolio's expected score, the mean over tasks of the best of its recipes.
"Expected", because each accuracy was measured once on a few hundred images: every score is
drawn again `DRAWS` times within its binomial noise, so a second recipe close to the first
still adds the chance that it is the better one, and one far below adds nothing. It stops at
`MAX_RECIPES`, or once a recipe adds less than `MIN_GAIN` and the portfolio has `MIN_RECIPES`.

Each chosen configuration is written as a `Recipe` that moves to any backbone and ranges
(`search.study.portfolio`), to `search/study/portfolio.yaml` by default, with its scores, in
the order a study runs them: the best alone first (`run_order`).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.corpus import BENCH_SPACE, CORPUS_DIR, PORTFOLIO_TASKS, TASKS, Corpus, corpus_path
from search.study.portfolio import SHIPPED_PORTFOLIO, PortfolioFile, Recipe
from trainers.model.backbones import get_backbone

MAX_RECIPES = 6
MIN_RECIPES = 3
#: A recipe that raises the expected score by less than this share of a task's range ends it.
MIN_GAIN = 0.01
#: Draws of every score within its noise.
DRAWS = 4000


@dataclass(frozen=True)
class Candidate:
    """One configuration of the corpora, with its best accuracy on every task."""

    number: int
    params: dict[str, Any]
    best: dict[str, float]

    @property
    def linear_probe(self) -> bool:
        return BENCH_SPACE.unfreeze_ladder[self.params["unfreeze_level"]] == 0


def candidates(corpora: Sequence[Corpus]) -> list[Candidate]:
    """The configurations every corpus trained, by their parameters."""
    first, *rest = corpora
    found = []
    for record in first.records:
        others = [next((r for r in c.records if r.params == record.params), None) for c in rest]
        if any(other is None for other in others):
            continue
        best = {first.task: record.best}
        best |= {
            corpus.task: other.best for corpus, other in zip(rest, others, strict=True) if other
        }
        found.append(Candidate(record.number, record.params, best))
    return found


def choose(
    found: Sequence[Candidate], corpora: Sequence[Corpus], *, seed: int = 0
) -> list[tuple[Candidate, float]]:
    """The portfolio, greedily (see the module docstring): each candidate chosen, with the
    expected score of the portfolio up to it."""
    rng = np.random.default_rng(seed)
    draws = []
    for corpus in corpora:
        best = np.array([candidate.best[corpus.task] for candidate in found])
        low, high = best.min(), best.max()
        spread = high - low if high > low else 1.0
        noise = np.sqrt(np.clip(best * (1 - best), 1e-4, None) / corpus.validation_images)
        sampled = best[None, :] + noise[None, :] * rng.standard_normal((DRAWS, len(found)))
        draws.append((sampled - low) / spread)

    def expected(chosen: list[int]) -> float:
        return float(np.mean([task[:, chosen].max(axis=1).mean() for task in draws]))

    def mean_score(index: int) -> float:
        return float(np.mean([task[:, index].mean() for task in draws]))

    probes = [index for index, candidate in enumerate(found) if candidate.linear_probe]
    chosen = [max(probes, key=mean_score)] if probes else []
    portfolio = [(found[index], expected(chosen)) for index in chosen]
    while len(chosen) < MAX_RECIPES and len(chosen) < len(found):
        now = expected(chosen) if chosen else 0.0
        gains = {i: expected([*chosen, i]) - now for i in range(len(found)) if i not in chosen}
        pick = max(gains, key=lambda index: gains[index])
        if gains[pick] < MIN_GAIN and len(chosen) >= MIN_RECIPES:
            break
        chosen.append(pick)
        portfolio.append((found[pick], expected(chosen)))
    return portfolio


def mean_score(candidate: Candidate, corpora: Sequence[Corpus]) -> float:
    """The candidate's score alone: its best per task, scaled from the task's worst
    configuration (0) to its best (1), averaged over the tasks."""
    scores = []
    for corpus in corpora:
        bests = [record.best for record in corpus.records]
        low, high = min(bests), max(bests)
        scores.append((candidate.best[corpus.task] - low) / (high - low) if high > low else 1.0)
    return float(np.mean(scores))


def run_order(
    chosen: Sequence[tuple[Candidate, float]], corpora: Sequence[Corpus]
) -> list[Candidate]:
    """The chosen candidates, best alone first: a study runs them in this order, so its best
    chance at a good model comes within the first few epochs."""
    return sorted((c for c, _ in chosen), key=lambda c: -mean_score(c, corpora))


def recipe_of(candidate: Candidate, corpora: Sequence[Corpus]) -> Recipe:
    """A configuration of `BENCH_SPACE` as a recipe for any space."""
    params = candidate.params
    units = BENCH_SPACE.unfreeze_ladder[params["unfreeze_level"]]
    share = units / get_backbone(BENCH_SPACE.backbone).unit_count
    scores = ", ".join(
        f"{corpus.task} {candidate.best[corpus.task]:.3f} "
        f"({_rank(candidate, corpus.task, corpora)})"
        for corpus in corpora
    )
    fine_tune: dict[str, Any] = {}
    if units:
        optimizer = params["ft_optimizer"]
        fine_tune = {
            "ft_optimizer": optimizer,
            "ft_lr": _round(params[f"ft_lr_{optimizer}"]),
            "ft_epochs": _position(params["ft_epochs"], BENCH_SPACE.ft_epochs),
            "warmup_frac": params["warmup_frac"],
            "freeze_bn": params["freeze_bn"],
        }
    return Recipe(
        name=_name(share, fine_tune),
        why=f"configuration {candidate.number} of the corpora: {scores}",
        head_lr=_round(params["head_lr"]),
        head_epochs=_position(params["head_epochs"], BENCH_SPACE.head_epochs),
        batch_size=params["batch_size"],
        head_dropout=round(params["head_dropout"], 2),
        unfreeze_share=round(share, 2),
        **fine_tune,
    )


def _rank(candidate: Candidate, task: str, corpora: Sequence[Corpus]) -> str:
    corpus = next(corpus for corpus in corpora if corpus.task == task)
    better = sum(record.best > candidate.best[task] for record in corpus.records)
    return f"rank {better + 1} of {len(corpus.records)}"


def _name(share: float, fine_tune: dict[str, Any]) -> str:
    if not fine_tune:
        return "linear_probe"
    batchnorm = "bn_frozen" if fine_tune["freeze_bn"] else "bn_trained"
    return f"{fine_tune['ft_optimizer']}_{round(100 * share)}pct_units_{batchnorm}"


def _position(value: int, choices: Sequence[int]) -> float:
    low, high = min(choices), max(choices)
    return 0.0 if high == low else round((value - low) / (high - low), 2)


def _round(rate: float) -> float:
    """A learning rate to two significant digits."""
    return float(f"{rate:.2g}")


def write(recipes: Sequence[Recipe], source: str, path: Path) -> Path:
    portfolio = PortfolioFile(source=source, recipes=tuple(recipes))
    header = (
        '# The portfolio of recipes every study tries first (docs/studies.md, "The portfolio").\n'
        "# Written by `python -m bench.portfolio`; rebuild it rather than edit it.\n"
    )
    body = yaml.safe_dump(portfolio.model_dump(exclude_none=True), sort_keys=False, width=100)
    path.write_text(header + body)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.portfolio",
        description="Choose the portfolio of recipes from the benchmark corpora.",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=tuple(TASKS),
        default=list(PORTFOLIO_TASKS),
        help="the corpora to choose from (default: %(default)s; orientation is held out)",
    )
    parser.add_argument("--corpus-dir", type=Path, default=CORPUS_DIR)
    parser.add_argument("-o", "--output", type=Path, default=SHIPPED_PORTFOLIO)
    args = parser.parse_args(argv)
    missing = [t for t in args.tasks if not corpus_path(args.corpus_dir, t).is_file()]
    if missing:
        paths = ", ".join(str(corpus_path(args.corpus_dir, t)) for t in missing)
        print(
            f"error: no stored corpus {paths}; build it with python -m bench.pruning --tasks "
            f"{' '.join(missing)}",
            file=sys.stderr,
        )
        return 2
    corpora = [Corpus.load(corpus_path(args.corpus_dir, task)) for task in args.tasks]
    found = candidates(corpora)
    if not found:
        print("error: the corpora share no configuration to choose from", file=sys.stderr)
        return 2
    chosen = choose(found, corpora)
    # Written in the order a study runs them: the best alone first (`run_order`).
    recipes = [recipe_of(candidate, corpora) for candidate in run_order(chosen, corpora)]
    tasks = ", ".join(
        f"{c.task} ({c.data_source}, {len(c.records)} configurations, "
        f"{c.validation_images} validation images)"
        for c in corpora
    )
    source = (
        f"chosen greedily by python -m bench.portfolio from {len(found)} configurations of "
        f"{BENCH_SPACE.backbone} trained to completion on {tasks}"
    )
    print(f"{len(found)} configurations on {len(corpora)} tasks: {', '.join(args.tasks)}")
    for candidate, score in chosen:
        recipe = recipe_of(candidate, corpora)
        print(f"  {recipe.name:<32} expected score {score:.3f}  {recipe.why}")
    print(f"run order: {', '.join(recipe.name for recipe in recipes)}")
    print(f"wrote {write(recipes, source, args.output)}")
    alone = math.nan if not chosen else chosen[0][1]
    print(
        f"portfolio of {len(recipes)} recipes: expected score {chosen[-1][1]:.3f} of 1 "
        f"(the linear probe alone {alone:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
