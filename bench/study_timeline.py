"""The study's side of `bench.study_cost`, timed from outside: when each line of its output
appeared, and where each trial's wall time went.

The benchmark times the study from outside, as its user would see it, from three sources:

- the coordinator's output, which the benchmark reads line by line from the study's stdout
  and stamps with the time each line arrives;
- the workers' and standby workers' logs in the study's output folder (`trial-NNNN/worker.log`,
  `standby.log`), which a `LogWatcher` thread reads every `POLL_SECONDS` (50 ms), stamping
  every complete line new since the last read with the time that read began: the stamps, and
  so the breakdowns, are good to about 50 ms;
- each worker's exit: the pid its log's first lines name, looked up in /proc at the same
  polls (`process_ended`). A worker that has exited but that the coordinator has not yet
  reaped (it reaps a worker only when it closes its trial) counts as ended, so the exit is
  seen when it happens, not when the trial closes. Without /proc no exits are seen.

From these stamped lines `StudyTimeline` measures, per finished trial (`study_trial`), the
same columns as the scripts' side (`Breakdown`): each trial's window runs from the previous
trial's end (the first: the coordinator's first line) to the coordinator's line saying it
finished, and is split at its worker's first line (`startup`), its `data:` line plus the
seconds its logs say computing the feature and cut-point caches took (`data`), the first
phase's line (`build`), the epochs' own logged seconds (`epochs`) and the rest (`other`),
with notes on whether the worker was prewarmed, what the caches did and when the worker
exited. Apart from trials it measures the coordinator's own start and close and the standby
workers' start-up times. Nothing here runs the study; `bench.study_cost_sides` does.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: How often the study's log files are read; the resolution of the study's breakdown.
POLL_SECONDS = 0.05

#: A line and the time (`time.time()`) it was first seen.
TimedLine = tuple[float, str]

#: The coordinator's line for a trial's end; `bench.study_cost_sides` echoes these as they come.
FINISHED = re.compile(r"^trial\s+(\d+) (COMPLETE|PRUNED|FAIL)\b")
_STUDY_HEADER = re.compile(r"^study \S+: \d+(?:/\d+)? trials finished")
_EPOCH = re.compile(r"^epoch\s+\d+/\d+ \[phase \d+\] .*\((\d+(?:\.\d+)?)s\)$")
_BEST = re.compile(r"^best val_accuracy (\d+(?:\.\d+)?) at epoch")
_COMPUTED = re.compile(r", computed in (\d+(?:\.\d+)?)s")
_PREWARMED = re.compile(r"prewarmed worker pid \d+, ready (\d+(?:\.\d+)?)s before the trial")
_WORKER_PID = re.compile(r"^trial \d+: (?:prewarmed )?worker pid (\d+)")
_STANDBY_READY = re.compile(r"^standby pid \d+ \(slot \d+\) ready after (\d+(?:\.\d+)?)s")


@dataclass(frozen=True)
class Breakdown:
    """Where one config's wall time went on one side, in seconds."""

    startup: float
    data: float
    build: float
    epochs: float
    total: float

    @property
    def other(self) -> float:
        return self.total - (self.startup + self.data + self.build + self.epochs)


@dataclass(frozen=True)
class ConfigRun:
    """One config trained on one side."""

    breakdown: Breakdown
    epoch_seconds: tuple[float, ...]
    best_val_accuracy: float | None
    notes: str = ""


def process_ended(pid: int) -> bool | None:
    """Whether process `pid` has exited (a zombie not yet reaped counts); None where there is no
    /proc to tell."""
    if not Path("/proc/self/stat").exists():
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


class LogWatcher:
    """Stamps every line of a study's worker and standby logs with the time it appeared, and
    each worker's exit with the time it was first seen."""

    def __init__(self, folder: Path, interval: float = POLL_SECONDS) -> None:
        self.folder = folder
        self.interval = interval
        self.lines: dict[str, list[TimedLine]] = {}
        #: Log (as in `lines`) -> when its worker process was first seen ended.
        self.ended: dict[str, float] = {}
        self._offsets: dict[str, int] = {}
        self._partial: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-watcher", daemon=True)

    def __enter__(self) -> LogWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()  # whatever was written after the last poll

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        now = time.time()
        for path in [*self.folder.glob("trial-*/worker.log"), self.folder / "standby.log"]:
            key = str(path.relative_to(self.folder))
            try:
                with path.open("rb") as file:
                    file.seek(self._offsets.get(key, 0))
                    chunk = file.read()
            except FileNotFoundError:
                continue
            if not chunk:
                continue
            self._offsets[key] = self._offsets.get(key, 0) + len(chunk)
            text = self._partial.get(key, "") + chunk.decode("utf-8", "replace")
            *complete, self._partial[key] = text.split("\n")
            self.lines.setdefault(key, []).extend((now, line) for line in complete)
        for key, lines in self.lines.items():
            pid = next((int(m[1]) for _, line in lines[:3] if (m := _WORKER_PID.match(line))), 0)
            if pid and key not in self.ended and process_ended(pid):
                self.ended[key] = now

    def _by_trial(self) -> dict[int, str]:
        found = (re.fullmatch(r"trial-(\d+)/worker\.log", key) for key in self.lines)
        return {int(m[1]): m[0] for m in found if m}

    def worker_logs(self) -> dict[int, list[TimedLine]]:
        return {number: self.lines[key] for number, key in self._by_trial().items()}

    def worker_exits(self) -> dict[int, float]:
        return {n: self.ended[key] for n, key in self._by_trial().items() if key in self.ended}


def _first(lines: Iterable[TimedLine], prefix: str) -> float:
    return next((t for t, line in lines if line.startswith(prefix)), math.nan)


def cache_use(log: Sequence[TimedLine], prefix: str) -> tuple[float, str]:
    """Seconds spent computing a cache's entries (the `prefix` lines' "computed in"), and
    what the trial did with that cache, for its notes ("" if its log never says)."""
    computed, reused, unused = 0.0, False, False
    for _, line in log:
        if line.startswith(f"{prefix} not used"):
            unused = True
        elif line.startswith(f"{prefix}: "):
            match = _COMPUTED.search(line)
            computed += float(match[1]) if match else 0.0
            reused = reused or match is None
    name = prefix.removesuffix(" cache").replace("-point", "")
    if computed:
        return computed, f"{name} cache computed in {computed:.1f}s"
    return 0.0, f"{name} cache reused" if reused else f"{name} cache not used" if unused else ""


def study_trial(
    window_start: float, finished: float, log: Sequence[TimedLine], exited: float | None = None
) -> ConfigRun:
    """One trial's breakdown from when its window opened (the previous trial's end), when the
    coordinator printed it finished, its worker log's stamped lines and when its worker
    process was seen ended (if known)."""
    first = log[0][0] if log else math.nan
    data_line = _first(log, "data: ")
    phase_one = _first(log, "phase 1/")
    features, features_note = cache_use(log, "feature cache")
    # Computed between phases: without this, in `other`.
    cut_points, cut_points_note = cache_use(log, "cut-point cache")
    seconds = tuple(float(m[1]) for _, line in log if (m := _EPOCH.match(line)))
    best = next((float(m[1]) for _, line in log if (m := _BEST.match(line))), None)
    breakdown = Breakdown(
        startup=first - window_start,
        data=data_line - first + features + cut_points,
        build=phase_one - data_line - features,
        epochs=sum(seconds),
        total=finished - window_start,
    )
    prewarmed = next((m for _, line in log[:2] if (m := _PREWARMED.search(line))), None)
    notes = [
        f"prewarmed (ready {float(prewarmed[1]):.1f}s before)"
        if prewarmed
        else "cold worker: TF import in data"
    ]
    if any(line.startswith("cache: decoded") for _, line in log):
        notes.append("image cache built")
    notes += [note for note in (features_note, cut_points_note) if note]
    trained = _first(log, "best val_accuracy")
    if exited is not None and not math.isnan(trained):
        notes.append(
            f"worker exited {exited - trained:.1f}s after training, trial closed "
            f"{finished - exited:.1f}s later"
        )
    elif not math.isnan(trained):
        notes.append(f"closed {finished - trained:.1f}s after training")
    return ConfigRun(breakdown, seconds, best, "; ".join(notes))


@dataclass(frozen=True)
class StudyTimeline:
    """The study's process as the benchmark saw it."""

    launched: float
    exited: float
    coordinator: tuple[TimedLine, ...]
    workers: Mapping[int, Sequence[TimedLine]]
    standby: tuple[TimedLine, ...] = ()
    #: Trial -> when its worker process was seen ended.
    worker_exits: Mapping[int, float] = field(default_factory=dict)

    @property
    def wall(self) -> float:
        return self.exited - self.launched

    def header(self) -> float:
        return next((t for t, line in self.coordinator if _STUDY_HEADER.match(line)), math.nan)

    def finished(self) -> dict[int, float]:
        return {int(m[1]): t for t, line in self.coordinator if (m := FINISHED.match(line))}

    def trials(self) -> list[ConfigRun]:
        """Every finished trial's breakdown, in trial order: each trial's window runs from the
        previous one's end (the first: the coordinator's first line) to its own."""
        runs = []
        window_start = self.header()
        for number, finished in sorted(self.finished().items()):
            log = self.workers.get(number, ())
            runs.append(study_trial(window_start, finished, log, self.worker_exits.get(number)))
            window_start = finished
        return runs

    @property
    def start(self) -> float:
        return self.header() - self.launched

    @property
    def close(self) -> float:
        ends = self.finished().values()
        return self.exited - max(ends) if ends else math.nan

    def standby_startups(self) -> list[float]:
        return [float(m[1]) for _, line in self.standby if (m := _STANDBY_READY.match(line))]
