"""Per-epoch training history: records, the best epoch, and its CSV form.

Epoch numbers are global across phases and start at 1, so phase 2 begins at the epoch after
phase 1 ends. Keras-free, so the search coordinator can read histories its workers send.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Columns every record has, in CSV order; top-5 columns appear when there are >= 5 classes.
BASE_COLUMNS = ("epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy")
TOP5_COLUMNS = ("top5_accuracy", "val_top5_accuracy")
TRAILING_COLUMNS = ("learning_rate", "seconds")
OBJECTIVE = "val_accuracy"


@dataclass(frozen=True)
class TrainingHistory:
    """Immutable sequence of epoch records (plain dicts of numbers)."""

    records: tuple[Mapping[str, float], ...] = ()

    def append(self, record: Mapping[str, float]) -> TrainingHistory:
        return TrainingHistory((*self.records, dict(record)))

    def __len__(self) -> int:
        return len(self.records)

    @property
    def columns(self) -> tuple[str, ...]:
        present = {key for record in self.records for key in record}
        middle = tuple(column for column in TOP5_COLUMNS if column in present)
        known = (*BASE_COLUMNS, *middle, *TRAILING_COLUMNS)
        extra = tuple(sorted(present - set(known)))
        return tuple(column for column in known if column in present) + extra

    def series(self, column: str) -> list[float]:
        return [float(record.get(column, math.nan)) for record in self.records]

    @property
    def best_epoch(self) -> int | None:
        """Epoch with the highest validation accuracy (the earliest on ties).

        Epochs with any non-finite metric never count: their weights are not usable.
        """
        best: tuple[float, int] | None = None
        for record in self.records:
            value = float(record.get(OBJECTIVE, math.nan))
            if non_finite_keys(record) or not math.isfinite(value):
                continue
            if best is None or value > best[0]:
                best = (value, int(record["epoch"]))
        return None if best is None else best[1]

    @property
    def best_val_accuracy(self) -> float | None:
        epoch = self.best_epoch
        if epoch is None:
            return None
        return float(next(r[OBJECTIVE] for r in self.records if int(r["epoch"]) == epoch))

    def phase_starts(self) -> dict[int, int]:
        """First global epoch of every phase that ran: {phase: epoch}."""
        starts: dict[int, int] = {}
        for record in self.records:
            starts.setdefault(int(record["phase"]), int(record["epoch"]))
        return starts

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            writer.writeheader()
            for record in self.records:
                writer.writerow({key: _format(record.get(key)) for key in self.columns})
        return path

    @classmethod
    def from_csv(cls, path: str | Path) -> TrainingHistory:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return cls.from_records(
            {key: _parse(key, value) for key, value in row.items() if value != ""} for row in rows
        )

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, float]]) -> TrainingHistory:
        return cls(tuple(dict(record) for record in records))


def _format(value: float | None) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _parse(key: str, value: str) -> float:
    return int(value) if key in ("epoch", "phase") else float(value)


def non_finite_keys(metrics: Mapping[str, float], keys: Sequence[str] | None = None) -> list[str]:
    """Names of the metrics (all, or `keys`) whose values are NaN or infinite."""
    selected = keys if keys is not None else list(metrics)
    return [key for key in selected if key in metrics and not math.isfinite(float(metrics[key]))]
