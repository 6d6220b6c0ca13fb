"""What a study costs against hand-written scripts: `python -m bench.study_cost [--quick]`.

Draws `--configs` configurations (6) with a fixed seed from a demo-sized space (the demo's
MobileNetV3Small at 64 px with the committed source-task weights and the demo's ranges, on a
folder of generated PNGs, 10 classes x 50 images, 100 held out; every config fine-tunes, and
its head phase, 3 or 4 epochs, is at least half its epochs, the fine-tune phase 1 to 3), and
trains them twice, side by side in one run:

- `scripts`: one process per config, one after another, each `python -m
  bench.bare_keras_script`: plain Keras as a user would write it by hand (`keras.applications`
  backbone, the same head, `model.fit` per phase, the same epochs, files, split, batch size,
  optimizer and rate; `bench.bare_keras_script` says what it leaves out). The floor.
- `study`: one study through `search.run`'s own command (`bench.study_cost_run` registers it),
  one worker, the caches (decoded images, frozen features, cut-point activations) and
  prewarmed workers on as by default, trial i training config i, never pruned.

Each side's wall time runs from launching its process(es) to their exit; the ratio of the two
is the last line, `study/scripts wall ratio: X.XX` (target: at most 0.6). Per config and side
it prints where the time went:

- `startup`: scripts, launch to TensorFlow and Keras imported. Study, from the end of the
  previous trial (the first: from the coordinator's first line) to the worker's first log
  line: the coordinator's bookkeeping between trials, then spawning a worker or handing the
  trial to a prewarmed one (and waiting for it if it has not finished importing).
- `data`: scripts, decoding every image into the in-memory cache. Study, the worker's first
  line to its `data:` line, plus computing the frozen-feature and cut-point caches (the
  `computed in` of their lines); a cold worker (the first trial, or any with `--no-prewarm`)
  imports TensorFlow in this span too, as its log has no line in between.
- `build`: building the model and loading the weights (the study also checks a batch and
  reads the feature cache), to the start of the first phase.
- `epochs`: the sum of the epochs' own seconds (`on_epoch_begin` to `on_epoch_end`, tracing
  and validation included), as both sides log them.
- `other`: the rest of the total: recompiling between phases, the process's exit, and for
  the study the coordinator closing the trial (history, learning-curve plot, MLflow); the
  study's notes split the closing into the worker's exit and what the coordinator did after.

The study's times come from its coordinator's output and its workers' logs, stamped as the
lines appear (`bench.study_timeline`: the logs and, through /proc, the workers' processes are
looked at every 50 ms; every stamped line is kept in OUTPUT/study/timeline.json). The rows
`study start` and `study close` are the coordinator's own start (imports, storage, MLflow, the
data check) and end (study plots, MLflow parent run), which only the study pays; in the sums
the study's `other` holds them too.

It also checks that both sides reached comparable accuracy, so that speed is not bought with
wrong results: per config, the best validation accuracy of the two must differ by no more
than the measurement noise of the difference, z = 2 standard errors of two binomial
proportions on the validation images (`search.pruning.noise`, as the collapse rules measure it: 0.11
at 80% on 100 images). Both train the same config on the same images, so a real fault (other
weights, preprocessing, features or split) shows as a larger gap; a config that fails is
marked and the exit status is 1.

    python -m bench.study_cost                  # 6 configs, 7 to 8 minutes on 2 CPU cores
    python -m bench.study_cost --quick          # 2 configs of 1+1 epochs: about 3 minutes
    python -m bench.study_cost --no-prewarm     # the study without prewarmed workers

Results go to `bench/results/study_cost[_quick].json`; the working files (images, specs,
script logs, the study's output folder) to `--output`. This module draws the configurations and
runs the benchmark; `bench.study_cost_sides` runs each side and `bench.study_cost_report`
compares them (the accuracy check, the table, the results JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from bench.study_cost_report import (
    Result,
    accuracy_cell,
    accuracy_lines,
    check_accuracy,
    describe,
    table,
    to_json,
)
from bench.study_cost_sides import (
    REPO,
    BenchError,
    run_cost_study,
    run_script,
    script_spec,
    unit_layers,
)
from search.trial.files import trial_folder
from spaces import demo
from spaces.finetune import FineTuneSpace
from trainers.config.schema import TrainConfig
from trainers.data.image_folder import scan_image_folder, stratified_split
from trainers.data.synthetic import write_image_folder

TARGET_RATIO = 0.6
RATIO_PREFIX = "study/scripts wall ratio:"

#: The demo's space (ranges, backbone, weights, no augmentation), with every config
#: fine-tuning (the ladder without its level 0) and a head phase of at least half the epochs.
FULL_SPACE = dataclasses.replace(
    demo.SPACE,
    head_epochs=(3, 4),
    ft_epochs=(1, 2, 3),
    unfreeze_ladder=demo.SPACE.unfreeze_ladder[1:],
    synthetic=None,
)
QUICK_SPACE = dataclasses.replace(FULL_SPACE, head_epochs=(1,), ft_epochs=(1,))


@dataclass(frozen=True)
class Mode:
    name: str
    space: FineTuneSpace
    configs: int
    classes: int
    images_per_class: int


FULL = Mode("study_cost", FULL_SPACE, configs=6, classes=10, images_per_class=50)
QUICK = Mode("study_cost_quick", QUICK_SPACE, configs=2, classes=10, images_per_class=30)


# -- configurations -------------------------------------------------------------------------------


def draw_params(space: FineTuneSpace, count: int, seed: int, data: str) -> list[dict[str, Any]]:
    """`count` parameter sets drawn by Optuna's RandomSampler with `seed`, in order."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    drawn = []
    for _ in range(count):
        trial = study.ask()
        space.sample(trial, data)
        drawn.append(dict(trial.params))
    return drawn


def config_of(space: FineTuneSpace, params: Mapping[str, Any], data: str) -> TrainConfig:
    return space.sample(optuna.trial.FixedTrial(dict(params)), data)


def head_share(config: TrainConfig) -> float:
    """The share of a config's epochs spent on the frozen backbone, before any unfreezing."""
    head = 0
    for phase in config.phases:
        if phase.unfreeze_blocks > 0:
            break
        head += phase.epochs
    return head / config.total_epochs


# -- the run --------------------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.study_cost",
        description="A study's wall time against the same configs as hand-written scripts.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 configs of 1+1 epochs on 300 images"
    )
    parser.add_argument("--configs", type=int, help="configs to draw (default: 6; --quick: 2)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the configs drawn")
    parser.add_argument(
        "--no-cache", action="store_true", help="run the study with --no-cache (for comparison)"
    )
    parser.add_argument(
        "--no-prewarm",
        action="store_true",
        help="run the study with --no-prewarm (for comparison)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="working folder, emptied first (default: runs/bench/<results name>)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=REPO / "bench" / "results",
        help="folder for the results JSON (default: bench/results)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    mode = QUICK if args.quick else FULL
    count = args.configs if args.configs is not None else mode.configs
    if count < 1:
        print(f"error: --configs must be at least 1, got {count}", file=sys.stderr)
        return 2
    flags = [flag for flag, on in (("--no-cache", args.no_cache),
                                   ("--no-prewarm", args.no_prewarm)) if on]  # fmt: skip
    name = mode.name + "".join(f"_{flag.removeprefix('--')}" for flag in flags)
    output = (args.output or REPO / "runs" / "bench" / name).resolve()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = env["TF_CPP_MIN_LOG_LEVEL"]
    started = time.monotonic()

    def progress(line: str) -> None:
        print(f"{line}  [{time.monotonic() - started:.0f}s]", flush=True)

    for part in ("data", "scripts", "study"):
        shutil.rmtree(output / part, ignore_errors=True)
    data = write_image_folder(
        output / "data",
        "target",
        num_classes=mode.classes,
        images_per_class=mode.images_per_class,
        image_size=mode.space.image_size,
    )
    folder = scan_image_folder(data)
    params = draw_params(mode.space, count, args.seed, str(data))
    configs = [config_of(mode.space, p, str(data)) for p in params]
    held_out = mode.space.validation
    assert isinstance(held_out, float), "the benchmark holds out a fraction of its folder"
    validation_images = len(
        stratified_split(folder.labels, held_out, configs[0].data.seed).validation
    )
    (output / "scripts").mkdir(parents=True)
    plan = {"space": dataclasses.asdict(mode.space), "params": params, "data": str(data)}
    plan_path = output / "plan.json"
    plan_path.write_text(json.dumps(plan, indent=1) + "\n")
    (output / "configs.yaml").write_text("---\n".join(config.to_yaml() for config in configs))
    progress(
        f"{count} configs of {mode.space.backbone} @{mode.space.image_size}px, "
        f"{len(folder.paths)} images in {folder.num_classes} classes "
        f"({validation_images} validation); working folder {output}"
    )
    units = unit_layers(mode.space.backbone, mode.space.image_size)
    load = os.getloadavg()
    try:
        scripts = []
        for index, config in enumerate(configs):
            spec_path = output / "scripts" / f"config-{index}.json"
            spec_path.write_text(json.dumps(script_spec(config, folder, units)))
            log_path = output / "scripts" / f"config-{index}.log"
            scripts.append(run_script(spec_path, log_path, env))
            progress(
                f"  script {index}: {describe(config)}: {scripts[-1].breakdown.total:.1f}s, "
                f"best val_acc {accuracy_cell(scripts[-1].best_val_accuracy).strip()}"
            )
        timeline = run_cost_study(plan_path, data, output / "study", count, flags, env)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    progress(f"study: {timeline.wall:.1f}s")
    study = timeline.trials()
    for index, config in enumerate(configs):
        trained = TrainConfig.from_yaml(
            (trial_folder(output / "study", index) / "config.yaml").read_text()
        )
        if trained != config:
            print(f"error: study trial {index} trained another config than drawn", file=sys.stderr)
            return 1
    if len(study) != count:
        print(f"error: the study finished {len(study)} of {count} trials", file=sys.stderr)
        return 1
    result = Result(mode.name, configs, scripts, study, timeline, validation_images)
    result.checks = [
        check_accuracy(s.best_val_accuracy, t.best_val_accuracy, validation_images)
        for s, t in zip(scripts, study, strict=True)
    ]
    print("\n".join(table(result)))
    print("\n".join(accuracy_lines(result)))
    args.results.mkdir(parents=True, exist_ok=True)
    saved = args.results / f"{name}.json"
    extra = {
        "seed": args.seed,
        "study_flags": flags,
        "cpus": os.cpu_count(),
        "load_average_before": load[0],
        "load_average_after": os.getloadavg()[0],
        "target_ratio": TARGET_RATIO,
    }
    saved.write_text(json.dumps(to_json(result, extra), indent=1) + "\n")
    print(
        f"wrote {saved}; scripts {result.scripts_wall:.1f}s, study {timeline.wall:.1f}s "
        f"(target ratio at most {TARGET_RATIO})"
    )
    print(f"{RATIO_PREFIX} {result.ratio:.2f}")
    return 0 if all(check.passed for check in result.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
