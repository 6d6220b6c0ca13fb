"""The two sides of `bench.study_cost`, run: hand-written scripts and a study.

The scripts' side writes each config as the spec `bench.bare_keras_script` trains (the project's
split of the folder, the layers of each unit it unfreezes) and runs one script per config,
timing each from its launch to its exit (`script_run`: where the time went, from the times the
script printed). The study's side runs `bench.study_cost_run`, `search.run`'s own command with
the benchmark's study registered, stamping each line of its output and logs as it appears
(`bench.study_timeline`). Either side failing is a `BenchError`, one message.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.study_cost_run import STUDY_NAME
from bench.study_timeline import (
    FINISHED,
    Breakdown,
    ConfigRun,
    LogWatcher,
    StudyTimeline,
    TimedLine,
)
from trainers.config.schema import TrainConfig
from trainers.data.image_folder import ImageFolder, stratified_split
from trainers.model.backbones import build_backbone, get_backbone, group_layers_into_units

REPO = Path(__file__).resolve().parents[1]


class BenchError(Exception):
    """A side failed to run; reported as one message."""


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


def run_cost_study(
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
