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
script logs, the study's output folder) to `--output`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from bench.study_cost_run import STUDY_NAME
from bench.study_timeline import (
    FINISHED,
    Breakdown,
    ConfigRun,
    LogWatcher,
    StudyTimeline,
    TimedLine,
)
from search.pruning.noise import Noise
from spaces import demo
from spaces.finetune import FineTuneSpace
from trainers.config.schema import TrainConfig
from trainers.data.image_folder import ImageFolder, scan_image_folder, stratified_split
from trainers.data.synthetic import write_image_folder
from trainers.model.backbones import build_backbone, get_backbone, group_layers_into_units

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.6
#: Standard errors of the difference two best validation accuracies may differ by.
ACCURACY_Z = 2.0
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


def describe(config: TrainConfig) -> str:
    epochs = "+".join(str(phase.epochs) for phase in config.phases)
    ft = config.phases[-1]
    bn = "bn frozen" if ft.freeze_batchnorm else "bn trains"
    return (
        f"{epochs} epochs, {config.unfrozen_units} units, {ft.optimizer} "
        f"{ft.learning_rate:.1e}, {bn}, batch {config.batch_size}"
    )


# -- the scripts' side ----------------------------------------------------------------------------


def unit_layers(backbone: str, image_size: int) -> tuple[tuple[str, ...], ...]:
    """Each unit's layer names, from the top down, as the project groups them (imports Keras).

    Built in a process that has built no other model, as each script is, so that Keras'
    automatic layer names (`re_lu_13`) are the ones the scripts see.
    """
    spec = get_backbone(backbone)
    model = build_backbone(spec, image_size=image_size, weights=None)
    units = group_layers_into_units(spec, [layer.name for layer in model.layers])
    return tuple(unit.layer_names for unit in units)


def script_spec(
    config: TrainConfig, folder: ImageFolder, units: Sequence[Sequence[str]]
) -> dict[str, Any]:
    """What `bench.bare_keras_script` trains: `config` on the project's split of `folder`."""
    assert isinstance(config.data.validation, float)
    split = stratified_split(folder.labels, config.data.validation, config.data.seed)
    paths, labels = list(folder.paths), list(folder.labels)
    weights = config.model.weights
    return {
        "train_files": [paths[i] for i in split.train],
        "train_labels": [labels[i] for i in split.train],
        "validation_files": [paths[i] for i in split.validation],
        "validation_labels": [labels[i] for i in split.validation],
        "num_classes": folder.num_classes,
        "image_size": config.data.image_size,
        "backbone": config.model.backbone,
        "weights": None if weights is None else str((REPO / weights).resolve()),
        "head_dropout": config.model.head_dropout,
        "batch_size": config.batch_size,
        "label_smoothing": config.label_smoothing,
        "seed": config.seed,
        "phases": [
            {
                "epochs": phase.epochs,
                "optimizer": phase.optimizer,
                "learning_rate": phase.learning_rate,
                "momentum": phase.momentum,
                "weight_decay": phase.weight_decay,
                "schedule": phase.schedule,
                "warmup_fraction": phase.warmup_fraction,
                "freeze_batchnorm": phase.freeze_batchnorm,
                "unfreeze_layers": [
                    name for unit in units[: phase.unfreeze_blocks] for name in unit
                ],
            }
            for phase in config.phases
        ],
    }


def script_run(launched: float, exited: float, result: Mapping[str, Any]) -> ConfigRun:
    """A script's breakdown from its launch and exit times and the JSON line it printed."""
    seconds = tuple(float(epoch["seconds"]) for epoch in result["epochs"])
    breakdown = Breakdown(
        startup=result["imported"] - launched,
        data=result["data_ready"] - result["imported"],
        build=result["built"] - result["data_ready"],
        epochs=sum(seconds),
        total=exited - launched,
    )
    return ConfigRun(breakdown, seconds, result.get("best_val_accuracy"))


def last_json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            parsed: dict[str, Any] = json.loads(line)
            return parsed
    raise ValueError("the script printed no JSON line")


def run_script(spec_path: Path, log_path: Path, env: Mapping[str, str]) -> ConfigRun:
    command = [sys.executable, "-m", "bench.bare_keras_script", "--spec", str(spec_path)]
    with log_path.open("w") as log:
        launched = time.time()
        done = subprocess.run(
            command, cwd=REPO, env=dict(env), stdout=subprocess.PIPE, stderr=log, text=True
        )
        exited = time.time()
    if done.returncode != 0:
        raise BenchError(f"{shlex.join(command)} exited {done.returncode}; see {log_path}")
    return script_run(launched, exited, last_json_line(done.stdout))


# -- the study's side -----------------------------------------------------------------------------


def run_study(
    plan_path: Path, data: Path, output: Path, count: int, flags: Sequence[str],
    env: Mapping[str, str],
) -> StudyTimeline:  # fmt: skip
    """The study through `search.run`'s command; echoes its trial lines."""
    command = [
        *(sys.executable, "-m", "bench.study_cost_run", str(plan_path)),
        *("--study", STUDY_NAME, "--n-trials", str(count), "--workers", "1"),
        *("--data", str(data), "--output", str(output)),
        *("--storage", f"sqlite:///{output}/optuna.db"),
        *("--tracking-uri", f"sqlite:///{output}/mlflow.db"),
        *flags,
    ]
    coordinator: list[TimedLine] = []
    output.mkdir(parents=True)
    with LogWatcher(output) as watcher:
        launched = time.time()
        process = subprocess.Popen(
            command, cwd=REPO, env=dict(env), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1,
        )  # fmt: skip
        assert process.stdout is not None
        for line in process.stdout:
            coordinator.append((time.time(), line.rstrip("\n")))
            if FINISHED.match(line) or (line.startswith("trial") and " started " in line):
                print(f"  study: {line.rstrip()}", flush=True)
        returncode = process.wait()
        exited = time.time()
    (output / "coordinator.log").write_text("".join(f"{line}\n" for _, line in coordinator))
    # Every line with the time it appeared, for a closer look than the table's.
    stamped = {"launched": launched, "exited": exited, "coordinator": coordinator}
    stamped["worker_exits"] = watcher.worker_exits()
    (output / "timeline.json").write_text(json.dumps({**stamped, "logs": watcher.lines}))
    if returncode != 0:
        tail = "\n".join(line for _, line in coordinator[-20:])
        raise BenchError(f"the study exited {returncode}:\n{tail}")
    return StudyTimeline(
        launched,
        exited,
        tuple(coordinator),
        watcher.worker_logs(),
        tuple(watcher.lines.get("standby.log", ())),
        watcher.worker_exits(),
    )


# -- comparing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccuracyCheck:
    script: float | None
    study: float | None
    tolerance: float

    @property
    def passed(self) -> bool:
        if self.script is None or self.study is None:
            return False
        return abs(self.script - self.study) <= self.tolerance


def check_accuracy(script: float | None, study: float | None, validation: int) -> AccuracyCheck:
    """Whether two best validation accuracies of one config agree within their noise."""
    if script is None or study is None:
        return AccuracyCheck(script, study, math.nan)
    return AccuracyCheck(script, study, Noise(validation, ACCURACY_Z).of_difference(script, study))


@dataclass
class Result:
    mode: str
    configs: list[TrainConfig]
    scripts: list[ConfigRun]
    study: list[ConfigRun]
    timeline: StudyTimeline
    validation_images: int
    checks: list[AccuracyCheck] = field(default_factory=list)

    @property
    def scripts_wall(self) -> float:
        return sum(run.breakdown.total for run in self.scripts)

    @property
    def ratio(self) -> float:
        return self.timeline.wall / self.scripts_wall


_COLUMNS = ("startup", "data", "build", "epochs", "other", "total")


def _cells(breakdown: Breakdown) -> str:
    return " ".join(f"{getattr(breakdown, name):>7.1f}" for name in _COLUMNS)


def _accuracy(value: float | None) -> str:
    return f"{value:>7.3f}" if value is not None else f"{'-':>7}"


def table(result: Result) -> list[str]:
    """Per config, both sides' breakdowns; the study's own start and close; the sums."""
    header = f"{'cfg':>3} {'side':<7} " + " ".join(f"{name:>7}" for name in _COLUMNS)
    lines = [f"{header} {'val_acc':>7}  notes"]
    for index, (config, script, trial) in enumerate(
        zip(result.configs, result.scripts, result.study, strict=True)
    ):
        lines.append(
            f"{index:>3} {'scripts':<7} {_cells(script.breakdown)} "
            f"{_accuracy(script.best_val_accuracy)}  {describe(config)}"
        )
        lines.append(
            f"{'':>3} {'study':<7} {_cells(trial.breakdown)} "
            f"{_accuracy(trial.best_val_accuracy)}  {trial.notes}"
        )
    timeline = result.timeline
    lines.append(
        f"study start (coordinator: imports, storage, MLflow, data check) {timeline.start:.1f}s, "
        f"study close (plots, MLflow) {timeline.close:.1f}s"
    )
    for side, runs, wall in (
        ("scripts", result.scripts, result.scripts_wall),
        ("study", result.study, timeline.wall),
    ):
        # The study's `other` also holds its start and close.
        summed = Breakdown(
            startup=sum(run.breakdown.startup for run in runs),
            data=sum(run.breakdown.data for run in runs),
            build=sum(run.breakdown.build for run in runs),
            epochs=sum(run.breakdown.epochs for run in runs),
            total=wall,
        )
        lines.append(f"{'all':>3} {side:<7} {_cells(summed)}")
    return lines


def accuracy_lines(result: Result) -> list[str]:
    lines = []
    for index, check in enumerate(result.checks):
        verdict = "ok" if check.passed else "MISMATCH"
        difference = (
            abs(check.script - check.study)
            if check.script is not None and check.study is not None
            else math.nan
        )
        lines.append(
            f"accuracy {index}: scripts {_accuracy(check.script).strip()} study "
            f"{_accuracy(check.study).strip()}, difference {difference:.3f} within "
            f"±{check.tolerance:.3f} ({ACCURACY_Z:g} standard errors on "
            f"{result.validation_images} images): {verdict}"
        )
    return lines


def to_json(result: Result, extra: Mapping[str, Any]) -> dict[str, Any]:
    def run(item: ConfigRun) -> dict[str, Any]:
        return {
            **dataclasses.asdict(item.breakdown),
            "other": item.breakdown.other,
            "epoch_seconds": list(item.epoch_seconds),
            "best_val_accuracy": item.best_val_accuracy,
            "notes": item.notes,
        }

    return {
        **extra,
        "mode": result.mode,
        "validation_images": result.validation_images,
        "configs": [config.to_dict() for config in result.configs],
        "scripts": [run(item) for item in result.scripts],
        "study": [run(item) for item in result.study],
        "study_start": result.timeline.start,
        "study_close": result.timeline.close,
        "standby_startups": result.timeline.standby_startups(),
        "scripts_wall": result.scripts_wall,
        "study_wall": result.timeline.wall,
        "accuracy": [
            {**dataclasses.asdict(check), "passed": check.passed} for check in result.checks
        ],
        "ratio": result.ratio,
    }


# -- the run --------------------------------------------------------------------------------------


class BenchError(Exception):
    """A side failed to run; reported as one message."""


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
                f"best val_acc {_accuracy(scripts[-1].best_val_accuracy).strip()}"
            )
        timeline = run_study(plan_path, data, output / "study", count, flags, env)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    progress(f"study: {timeline.wall:.1f}s")
    study = timeline.trials()
    for index, config in enumerate(configs):
        trained = TrainConfig.from_yaml(
            (output / "study" / f"trial-{index:04d}" / "config.yaml").read_text()
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
