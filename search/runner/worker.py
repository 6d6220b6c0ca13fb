"""The worker process: trains one trial's config with the Keras trainer and reports each epoch.

Started with the multiprocessing *spawn* method, so it begins with a fresh interpreter: no
TensorFlow state, host memory or GPU memory is inherited from the coordinator or from earlier
trials, and whatever this trial leaks dies with the process. It is usually started before its trial
and waits with TensorFlow imported (`search.runner.prewarm`), but it still serves one trial only.
Everything it prints (including TensorFlow's C++ logs) goes to the trial's log file; with the
study's cache folder, it decodes images and computes frozen features only where no earlier trial did
(`trainers.fit.loop`). It may train only a window of the config's epochs from another run's saved
weights, and save its own best epoch's weights for a later continuation.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from search.runner.faults import Fault, cache_fault, fault_callback, faults_for
from search.runner.protocol import (
    Epoch,
    Failed,
    Finished,
    Started,
    Stop,
    WorkerRequest,
)
from search.vocabulary import Reason

#: What a prewarmed process imports while the previous trial trains (`search.runner.prewarm`).
WARM_UP_MODULES = ("trainers.fit.loop",)

if TYPE_CHECKING:
    import keras

    from trainers.caching.store import CacheProgress
    from trainers.fit.loop import FitResult

#: Keras saves and loads weights only under this suffix.
WEIGHTS_SUFFIX = ".weights.h5"


class DiskFullTolerantLog(io.TextIOWrapper):
    """The trial's log file; a line that cannot be written (a full disk) is dropped, so that
    the trial trains on and reports its result instead of dying on a print."""

    def write(self, text: str) -> int:
        try:
            return super().write(text)
        except OSError:
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError):
            super().flush()


def redirect_output(log_path: str) -> None:
    try:
        raw = open(log_path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the process
    except OSError:
        # No room even for the log file's folder: train without a log rather than not at all.
        raw = open(os.devnull, "ab", buffering=0)  # noqa: SIM115
    log = DiskFullTolerantLog(raw, encoding="utf-8", line_buffering=True)
    # dup2 the file descriptors too, so TensorFlow's C++ logging lands in the same file.
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log


def exit_when_orphaned(parent_pid: int) -> None:
    """If the coordinator is killed (kill -9), stop training instead of running on unseen."""

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(3)
            time.sleep(1.0)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _classify(error: BaseException) -> Reason:
    from trainers.errors import TrainerInputError

    if isinstance(error, TrainerInputError):
        return Reason.INPUT
    if isinstance(error, MemoryError):
        return Reason.HOST_OOM
    # tf.errors.ResourceExhaustedError, without importing TensorFlow just to name it.
    if type(error).__name__ == "ResourceExhaustedError" or "OOM when allocating" in str(error):
        return Reason.GPU_OOM
    return Reason.ERROR


def _cache_progress(faults: list[Fault]) -> CacheProgress:
    """Log how far a cache entry has come (every 10 s) and inject a kill_caching fault."""
    from trainers.caching.store import throttled_progress

    logged = throttled_progress(lambda line: print(line, flush=True))
    after_chunk = cache_fault(faults)

    def progress(what: str, done: int, total: int) -> None:
        logged(what, done, total)
        if after_chunk is not None:
            after_chunk()

    return progress


def save_weights_atomically(model: keras.Model, path: Path) -> None:
    """Save `model`'s weights to `path` through a temporary file beside it, so that a reader
    sees either the whole file or none; a failed write leaves no temporary file behind."""
    stem = path.name.removesuffix(WEIGHTS_SUFFIX)
    partial = path.with_name(f".{stem}.tmp-{os.getpid()}{WEIGHTS_SUFFIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save_weights(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _save_best_weights(request: WorkerRequest, result: FitResult) -> None:
    """Save the run's best-epoch weights where the request asks, if it has a best epoch.

    A save that fails (a full disk) costs the continuation its starting point, not this
    trial its result: one log line, and the trial finishes.
    """
    if request.save_weights is None:
        return
    trial = request.trial_number
    if result.best_epoch is None:
        print(f"trial {trial}: no best epoch, so no weights saved", flush=True)
        return
    path = Path(request.save_weights)
    try:
        save_weights_atomically(result.model, path)
    except OSError as error:
        print(f"trial {trial}: could not save weights to {path}: {error}", flush=True)
        return
    print(f"trial {trial}: saved epoch {result.best_epoch}'s weights to {path}", flush=True)


def run_worker(connection: Connection, request: WorkerRequest, parent_pid: int) -> None:
    """Entry point of the spawned process."""
    # Ctrl-C reaches the whole process group; the coordinator decides what happens to us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(request.environment)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    redirect_output(request.log_path)
    exit_when_orphaned(parent_pid)
    print(f"trial {request.trial_number}: worker pid {os.getpid()}", flush=True)
    try:
        importing = time.monotonic()
        from trainers.config.schema import TrainConfig
        from trainers.data.pipelines import load_datasets
        from trainers.fit.loop import fit

        # Seconds for a cold worker; nothing for a prewarmed one, which imported them before.
        imported = time.monotonic() - importing
        print(f"trial {request.trial_number}: trainer imported in {imported:.1f}s", flush=True)
        config = TrainConfig.from_yaml(request.config_yaml, origin=f"trial {request.trial_number}")
        cache_dir = None if request.cache_dir is None else Path(request.cache_dir)
        injected = faults_for(request.trial_number, config.batch_size)
        progress = _cache_progress(injected)
        datasets = load_datasets(config, cache_dir=cache_dir, progress=progress)
        connection.send(
            Started(
                num_classes=datasets.num_classes,
                train_count=datasets.train_count,
                validation_count=datasets.validation_count,
                config_yaml=config.to_yaml(),
            )
        )

        def report(epoch: int, metrics: Mapping[str, float]) -> str | None:
            try:
                connection.send(Epoch(epoch, dict(metrics)))
                reply = connection.recv()
            except (EOFError, OSError):
                return Reason.COORDINATOR_GONE
            return reply.reason if isinstance(reply, Stop) else None

        callbacks = [fault_callback(injected)] if injected else []
        result = fit(
            config,
            report=report,
            datasets=datasets,
            callbacks=callbacks,
            cache_dir=cache_dir,
            progress=progress,
            cache_budget_bytes=request.cache_budget_bytes,
            window=request.window,
        )
        _save_best_weights(request, result)
        connection.send(Finished(stop_reason=result.stop_reason, stop_detail=result.stop_detail))
    except BaseException as error:  # report anything, then exit non-zero
        details = traceback.format_exc()
        print(details, flush=True)
        with contextlib.suppress(EOFError, OSError):
            connection.send(Failed(_classify(error), f"{type(error).__name__}: {error}", details))
        raise SystemExit(1) from None
    finally:
        connection.close()
    # The result is sent and nothing here needs a clean interpreter shutdown, which takes
    # TensorFlow seconds; the coordinator closes the trial, and starts the slot's next one, only
    # once this process has ended.
    sys.stdout.flush()
    os._exit(0)
