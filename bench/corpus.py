"""A corpus of learning curves: configurations trained to completion with pruning off.

Pruners are judged offline on it (`bench.replay`): every configuration's whole curve is known,
so what a pruner would have stopped, and what that stop would have cost, is exact, and a new
pruner costs no training to try. A corpus is one JSON file per generated task:

- `near`: `synthetic:target`, the demo's task; the frozen backbone is already good there.
- `far`: `synthetic:far`, where an object sits and how big it is, which pretraining taught the
  backbone to ignore; the head's accuracy stays low and fine-tuning decides.
- `near_small`, `far_small`: the same with 24 and 30 images per class instead of 80.
- `orientation`: `synthetic:orientation`, the angle at which a bar lies, which pretraining
  (every object at a random angle) taught the backbone to ignore; held out of the portfolio.

Configurations are drawn from `BENCH_SPACE` (the demo's space with a deeper ladder, longer
fine-tuning and more validation images) by Optuna's `RandomSampler` with a fixed seed, so the
corpus depends only on the seed and the task. Each is trained in this process by the project's
trainer (`bench.trials.train_trial`), exactly as a worker would, never stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from bench.trials import best_accuracy, train_trial
from search.pruning.collapse import EpochView
from spaces import demo
from spaces.finetune import FineTuneSpace


@dataclass(frozen=True)
class Task:
    """A generated task: its data source and images per class (None: the space's, 80 in
    `BENCH_SPACE`)."""

    data_source: str
    images_per_class: int | None = None

    def space_for(self, space: FineTuneSpace) -> FineTuneSpace:
        """`space` generating this task's images per class."""
        if self.images_per_class is None:
            return space
        synthetic = {**(space.synthetic or {}), "images_per_class": self.images_per_class}
        return dataclasses.replace(space, synthetic=synthetic)


#: The tasks, by name. The small ones hold a third of the images or less, where other recipes
#: win (fewer units, lower rates): the portfolio is chosen over those four (`PORTFOLIO_TASKS`,
#: `bench.portfolio`). `orientation` is far in another way (the angle of a bar) and held out
#: of that choice, so that it can judge the portfolio (`bench.search_quality --task`).
TASKS = {
    "near": Task("synthetic:target"),
    "far": Task("synthetic:far"),
    "near_small": Task("synthetic:target", 24),
    "far_small": Task("synthetic:far", 30),
    "orientation": Task("synthetic:orientation"),
}
PORTFOLIO_TASKS = ("near", "far", "near_small", "far_small")
#: Where the corpora are stored, one JSON file per task (`corpus_path`).
CORPUS_DIR = Path(__file__).parent / "corpus"
#: What `bench.pruning` replays unless told otherwise.
PRUNING_TASKS = ("near", "far")

BENCH_SPACE = dataclasses.replace(
    demo.SPACE,
    unfreeze_ladder=(0, 1, 2, 4, 6, 9, 13),
    head_epochs=(2, 3),
    ft_epochs=(3, 5),
    validation=0.3,
    synthetic={"classes": 10, "images_per_class": 80},
)


@dataclass(frozen=True)
class CurveRecord:
    """One configuration's whole curve, as the worker reported it epoch by epoch."""

    number: int
    params: dict[str, Any]
    unfreezing_phases: tuple[int, ...]
    epochs: tuple[EpochView, ...]
    seconds: float = 0.0

    @property
    def best(self) -> float:
        """The objective had it run to the end."""
        return best_accuracy(self.epochs)

    @property
    def best_epoch(self) -> int:
        """How many epochs it took to reach `best`."""
        return next(i for i, e in enumerate(self.epochs, 1) if e.val_accuracy == self.best)


@dataclass(frozen=True)
class Corpus:
    task: str
    data_source: str
    num_classes: int
    validation_images: int
    seed: int
    records: tuple[CurveRecord, ...]

    def save(self, path: Path) -> Path:
        payload = {
            "task": self.task,
            "data_source": self.data_source,
            "num_classes": self.num_classes,
            "validation_images": self.validation_images,
            "seed": self.seed,
            "records": [
                {
                    "number": record.number,
                    "params": record.params,
                    "unfreezing_phases": list(record.unfreezing_phases),
                    "seconds": round(record.seconds, 1),
                    "epochs": [
                        {
                            "epoch": e.epoch,
                            "phase": e.phase,
                            "loss": round(e.loss, 5),
                            "val_accuracy": round(e.val_accuracy, 5),
                            "val_loss": round(e.val_loss, 5),
                        }
                        for e in record.epochs
                    ],
                }
                for record in self.records
            ],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Corpus:
        payload = json.loads(path.read_text())
        records = tuple(
            CurveRecord(
                number=int(item["number"]),
                params=dict(item["params"]),
                unfreezing_phases=tuple(item["unfreezing_phases"]),
                seconds=float(item.get("seconds", 0.0)),
                epochs=tuple(EpochView(**epoch) for epoch in item["epochs"]),
            )
            for item in payload["records"]
        )
        return cls(
            task=payload["task"],
            data_source=payload["data_source"],
            num_classes=int(payload["num_classes"]),
            validation_images=int(payload["validation_images"]),
            seed=int(payload["seed"]),
            records=records,
        )


def build_corpus(
    task: str,
    *,
    configurations: int,
    seed: int = 0,
    space: FineTuneSpace = BENCH_SPACE,
    progress: Callable[[str], None] = print,
) -> Corpus:
    """Train `configurations` configurations of `space` on `task` to completion."""
    data_source = TASKS[task].data_source
    space = TASKS[task].space_for(space)
    sampler = optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    records: list[CurveRecord] = []
    num_classes = validation_images = 0
    started = time.monotonic()
    for number in range(configurations):
        trial = study.ask()
        config = space.sample(trial, data_source)
        trained = train_trial(config)
        num_classes, validation_images = trained.data.num_classes, trained.data.validation_images
        record = CurveRecord(
            number=number,
            params=dict(trial.params),
            unfreezing_phases=config.unfreezing_phases,
            epochs=trained.epochs,
            seconds=trained.seconds,
        )
        records.append(record)
        study.tell(trial, record.best)
        curve = " ".join(f"{epoch.val_accuracy:.2f}" for epoch in trained.epochs)
        progress(
            f"{task} {number + 1:>3}/{configurations}  best {record.best:.3f}  [{curve}]  "
            f"{record.seconds:.0f}s, {time.monotonic() - started:.0f}s elapsed"
        )
    return Corpus(task, data_source, num_classes, validation_images, seed, tuple(records))


def corpus_path(folder: Path, task: str) -> Path:
    return folder / f"pruning_{task}.json"
