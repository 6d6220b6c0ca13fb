"""`python -m search.run` with the benchmark's study registered: the study side of bench.study_cost.

    python -m bench.study_cost_run PLAN.json --study study_cost --n-trials 6 --workers 1 ...

Everything after PLAN.json goes to `search.run`'s own `main`: the same parsing, checks,
coordinator, storage, MLflow tracking, caches, prewarmed workers and trial processes as the
command users run. The only addition is the study `study_cost`, built from PLAN.json (written by
`bench.study_cost`): the benchmark's space, and the parameters it drew, enqueued in order so
that trial i trains config i. Nothing stops a trial early: the collapse rules are given
thresholds they never reach (a non-finite loss still stops one) and the Optuna pruner is
`NopPruner`, since the benchmark compares the cost of the same epochs.

Spawned workers re-import this module as `__mp_main__`, as they re-import `search.run` under
`python -m search.run`, so both pay the same imports; the study is registered only in the
coordinator (under the main guard), since a worker gets its config as YAML and never looks a
study up.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from search.pruning.collapse import CollapseRules
from search.run import main as search_main
from search.study.registry import STUDIES, EnqueuedTrial, StudySpec
from spaces.finetune import FineTuneSpace

STUDY_NAME = "study_cost"

#: Collapse-rule thresholds no curve reaches: the rules wait more epochs than any trial has,
#: and a first fine-tune epoch would have to lose more than all it gained, beyond 10 standard
#: errors. Only the `nan` rule, which needs no threshold, still stops a trial.
NEVER_COLLAPSE = CollapseRules(
    chance_grace_epochs=10**6,
    collapse_patience=10**6,
    shock_patience=10**6,
    shock_wreck_drop=0.999,
    noise_z=10.0,
)


@dataclass(frozen=True)
class UnprunedStudySpec(StudySpec):
    """A study whose Optuna pruner never prunes (no such choice exists among `PRUNERS`)."""

    def make_pruner(self) -> optuna.pruners.BasePruner:
        return optuna.pruners.NopPruner()


def space_from_plan(fields: Mapping[str, Any]) -> FineTuneSpace:
    """A FineTuneSpace from its fields as JSON stores them (lists where it has tuples)."""
    values: dict[str, Any] = {
        key: tuple(value) if isinstance(value, list) else value for key, value in fields.items()
    }
    return FineTuneSpace(**values)


def study_spec(plan: Mapping[str, Any]) -> StudySpec:
    space = space_from_plan(plan["space"])
    params: Sequence[Mapping[str, Any]] = plan["params"]
    return UnprunedStudySpec(
        name=STUDY_NAME,
        description="bench.study_cost: drawn configs, in order, never pruned",
        space=space.sample,
        default_data=plan["data"],
        n_trials=len(params),
        enqueued=tuple(EnqueuedTrial(f"config {i}", p) for i, p in enumerate(params)),
        rules=NEVER_COLLAPSE,
    )


def main(argv: Sequence[str]) -> int:
    if not argv:
        print("usage: python -m bench.study_cost_run PLAN.json SEARCH_RUN_ARGS...", file=sys.stderr)
        return 2
    plan = json.loads(Path(argv[0]).read_text())
    STUDIES[STUDY_NAME] = study_spec(plan)
    return search_main(list(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
