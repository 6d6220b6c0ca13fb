"""`python -m search.studies [NAME_OR_FILE]`: the registered studies, or one study's space.

    python -m search.studies                          # one line per registered study
    python -m search.studies effnet_b4                # every parameter, and the unfreeze ladder
    python -m search.studies studies/stanford_dogs_b0.yaml --image-size 192

For one study it prints what it runs (backbone, weights, image size, data, trials, pruner, the
configs it tries first, the portfolio's recipes as they land in it), then every parameter with
its range or choices, scale, the condition under which it is sampled and its role, then the
unfreeze ladder: what each `unfreeze_level` unfreezes on that backbone. Imports no TensorFlow.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from search.study.files import STUDY_FILE_SUFFIXES, resolve_study
from search.study.overrides import with_overrides
from search.study.portfolio import LABEL_PREFIX, Placement, portfolio_path, with_portfolio
from search.study.registry import STUDIES, StudySpec, UnknownStudyError
from spaces.finetune import FineTuneSpace
from spaces.generic import ladder_steps
from spaces.parameters import Role
from trainers.errors import TrainerInputError
from trainers.installation import add_version_option

#: Where the shipped example study files live, relative to the repository root.
EXAMPLES_FOLDER = Path("studies")


def study_lines() -> list[str]:
    """One line per registered study, then the study files in ./studies, if any."""
    width = max(len(name) for name in STUDIES)
    lines = []
    for name, spec in sorted(STUDIES.items()):
        lines.append(f"{name:<{width}}  {spec.description}  ({_shape(spec)})")
    examples = sorted(
        path for path in EXAMPLES_FOLDER.glob("*") if path.suffix in STUDY_FILE_SUFFIXES
    )
    if examples:
        lines.append("")
        lines.append(f"study files in {EXAMPLES_FOLDER}/ (pass the path as --study):")
        lines += [f"  {path}" for path in examples]
    return lines


def _shape(spec: StudySpec) -> str:
    space = spec.space
    model = f"{space.backbone} @{space.image_size}px, " if isinstance(space, FineTuneSpace) else ""
    return f"{model}{spec.n_trials} trials, pruner {spec.pruner}, data {spec.default_data}"


def space_lines(spec: StudySpec, placements: Sequence[Placement] = ()) -> list[str]:
    """The study's setup, where the portfolio's recipes land in it (`placements`), its
    parameters and its unfreeze ladder."""
    space = spec.space
    lines = [f"study {spec.name}: {spec.description}"]
    if not isinstance(space, FineTuneSpace):
        return [*lines, "  (a space written as a function; its parameters are in its code)"]
    own = [known.label for known in spec.enqueued if not known.label.startswith(LABEL_PREFIX)]
    portfolio = len(spec.enqueued) - len(own)
    first = ", ".join(own) or "none"
    lines += [
        f"  backbone     {space.backbone} @{space.image_size}px, weights {space.weights}",
        f"  data         {spec.default_data} (validation {space.validation})",
        f"  trials       {spec.n_trials}, pruner {spec.pruner} "
        f"(after {spec.pruner_warmup_epochs} epochs), TPE after "
        f"{spec.sampler_startup_trials} start-up trials (the trials tried first count)",
        f"  tried first  {first}",
    ]
    if placements:
        lines.append(
            f"  portfolio    {portfolio} recipes before them (docs/studies.md; --portfolio none "
            "turns it off):"
        )
        lines += [f"    {placement.describe()}" for placement in placements]
    lines.append("")
    parameters = space.parameters()
    rows = [("parameter", "range or choices", "sampled when", "role")] + [
        (p.name, p.describe(), p.condition, p.role.value) for p in parameters
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines += [
        f"  {name:<{widths[0]}}  {values:<{widths[1]}}  {condition:<{widths[2]}}  {role}"
        for name, values, condition, role in rows
    ]
    searched = [p for p in parameters if p.role != Role.FIXED]
    scientific = [p.name for p in searched if p.role == Role.SCIENTIFIC]
    lines += [
        "",
        f"  {len(searched)} searched ({len(scientific)} scientific: {', '.join(scientific)}), "
        f"{len(parameters) - len(searched)} fixed",
        "",
        f"  unfreeze ladder on {space.backbone} (unfreeze_level -> whole units unfrozen):",
    ]
    for level, count, which in ladder_steps(space):
        units = "unit " if count == 1 else "units"
        lines.append(f"  {level:>4}  {count:>3} {units}  {which}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m search.studies",
        description="List the registered studies, or print one study's search space.",
    )
    add_version_option(parser)
    parser.add_argument("study", nargs="?", help="a registered study's name or a study file")
    parser.add_argument("--backbone", help="as search.run's --backbone")
    parser.add_argument("--image-size", type=int, help="as search.run's --image-size")
    parser.add_argument("--weights", help="as search.run's --weights")
    parser.add_argument("--portfolio", help="as search.run's --portfolio (shipped, none, FILE)")
    args = parser.parse_args(argv)
    if args.study is None:
        print("\n".join(study_lines()))
        return 0
    try:
        loaded = resolve_study(args.study)
        spec = with_overrides(
            loaded.spec, backbone=args.backbone, image_size=args.image_size, weights=args.weights
        )
        chosen = loaded.portfolio if args.portfolio is None else portfolio_path(args.portfolio)
        spec, placements = with_portfolio(spec, chosen)
    except (UnknownStudyError, TrainerInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(space_lines(spec, placements)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
