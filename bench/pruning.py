"""What each pruner costs in missed winners: `python -m bench.pruning`.

Trains `--configurations` configurations (30) of the bench space on each generated task to
completion with pruning off and stores their curves (`bench/corpus/pruning_TASK.json`), then
replays every pruner stack on them offline (`bench.replay`). `--quick` replays the stored
corpus only, in seconds (CI). Per stack and task it prints epochs saved, trials pruned (by
reason), false prunes of winners, trials stopped after a good epoch with their best kept,
and the best value the stack still reached; then each stack's figures over both tasks, the
collapse rules' last.

    python -m bench.pruning --quick
    python -m bench.pruning --quick --plots bench/corpus   # and where each stack prunes, as PNG
    python -m bench.pruning --tasks far --configurations 30     # about 20 minutes on 2 cores

Stacks: the collapse rules as they were before the noise test (no validation count), and
before a fall after a good epoch kept its best (every stop a prune); the collapse rules; and
the collapse rules followed by each Optuna pruner a study can ask (median, asha, hyperband),
with the demo study's settings.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import optuna

from bench.corpus import (
    CORPUS_DIR,
    PRUNING_TASKS,
    TASKS,
    Corpus,
    build_corpus,
    corpus_path,
)
from bench.plots import plot_prunes
from bench.replay import PrunerStack, ReplayResult, replay_corpus
from search.pruning.decision import PRUNERS
from search.study.registry import get_study_spec

COLLAPSE_RULES = "collapse rules"
#: The demo study's settings (warm-up, startup trials) for every Optuna pruner it can ask.
_DEMO = get_study_spec("demo")
STACKS = (
    PrunerStack("collapse rules, no noise test", noise_aware=False, keep_best=False),
    PrunerStack("collapse rules, best not kept", keep_best=False),
    PrunerStack(COLLAPSE_RULES),
    *(
        PrunerStack(
            f"collapse rules + {name}", optuna_pruner=replace(_DEMO, pruner=name).make_pruner
        )
        for name in PRUNERS
    ),
)


def table(results: Sequence[ReplayResult]) -> list[str]:
    lines = [
        f"{'task':<5} {'pruner':<30} {'epochs saved':>12} {'pruned':>7} "
        f"{'false prunes (after best)':>25} {'kept best':>9} {'best reached':>12}  reasons"
    ]
    for result in results:
        reasons = ", ".join(f"{reason} {count}" for reason, count in result.reasons.most_common())
        lines.append(
            f"{result.task:<5} {result.stack:<30} {result.epochs_saved:>11.0%} "
            f"{result.pruned:>3}/{result.trials:<3} "
            f"{f'{result.false_prunes} ({result.false_prunes_after_best})':>25} "
            f"{result.stopped_kept:>9} "
            f"{result.best_reached:>6.3f}/{result.corpus_best:.3f}  {reasons or '-'}"
        )
    return lines


def summary(results: Sequence[ReplayResult], stack: str) -> str:
    """One stack's figures over every task: epochs saved and false prunes."""
    mine = [result for result in results if result.stack == stack]
    total = sum(result.epochs_total for result in mine)
    run = sum(result.epochs_run for result in mine)
    saved = 1.0 - run / total if total else 0.0
    false_prunes = sum(result.false_prunes for result in mine)
    return f"{stack}: {saved:.0%} epochs saved, {false_prunes} false prunes of top-quarter trials"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pruning",
        description="Replay pruners on fully trained curves: epochs saved against winners lost.",
    )
    parser.add_argument("--quick", action="store_true", help="replay the stored corpus only")
    parser.add_argument("--tasks", nargs="+", choices=tuple(TASKS), default=list(PRUNING_TASKS))
    parser.add_argument("--configurations", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="seeds the configurations drawn")
    parser.add_argument("--corpus-dir", type=Path, default=CORPUS_DIR)
    parser.add_argument(
        "--plots", type=Path, metavar="DIR", help="also draw where each stack prunes, per task"
    )
    args = parser.parse_args(argv)
    if args.configurations < 1:
        parser.exit(2, f"error: --configurations must be >= 1, got {args.configurations}\n")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    corpora = []
    for task in args.tasks:
        path = corpus_path(args.corpus_dir, task)
        if args.quick:
            if not path.is_file():
                parser.exit(2, f"error: no stored corpus {path}; run without --quick first\n")
            corpora.append(Corpus.load(path))
            continue
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        corpus = build_corpus(task, configurations=args.configurations, seed=args.seed)
        print(f"wrote {corpus.save(path)}", flush=True)
        corpora.append(corpus)
    results = [replay_corpus(corpus, stack) for corpus in corpora for stack in STACKS]
    for corpus in corpora:
        print(
            f"{corpus.task}: {len(corpus.records)} configurations of {corpus.data_source}, "
            f"{corpus.num_classes} classes, {corpus.validation_images} validation images"
        )
    if args.plots is not None:
        for corpus in corpora:
            mine = [result for result in results if result.task == corpus.task]
            print(f"wrote {plot_prunes(corpus, mine, args.plots / f'pruning_{corpus.task}.png')}")
    print("\n".join(table(results)))
    for stack in STACKS:
        if stack.optuna_pruner is not None:
            print(summary(results, stack.name))
    print(summary(results, COLLAPSE_RULES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
