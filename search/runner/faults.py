"""Fault injection for the fault-tolerance tests: faults no CPU machine can cause for real.

A GPU running out of memory cannot happen without a GPU, and waiting for the kernel's OOM
killer is not a test. Setting FINETUNE_SEARCH_FAULTS makes workers inject such faults at the end
of a given epoch of a given trial, through the same code paths the real faults take:

    FINETUNE_SEARCH_FAULTS="kill@2:1,gpu_oom@4:2,nan@5:1,host_oom@7:1"

A fault may name a batch size instead of a trial: `gpu_oom@batch>=64:1` makes every trial whose
batch size is 64 or more run out of GPU memory at the end of epoch 1, as a GPU too small for
those batches would (what the sampler must learn to avoid).

- `kill`: the worker SIGKILLs itself (as the OOM killer or a node failure would);
- `gpu_oom`: raises tf.errors.ResourceExhaustedError, as TensorFlow does on a GPU;
- `host_oom`: raises MemoryError;
- `nan`: overwrites the head's weights with NaN, so the next epoch's loss really is NaN;
- `kill_caching`: the worker SIGKILLs itself while writing a cache entry, after the N-th chunk
  (`kill_caching@0:1`: trial 0, first chunk), as a worker killed mid-write would.

Unset (always, outside tests), nothing here runs.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ENVIRONMENT_VARIABLE = "FINETUNE_SEARCH_FAULTS"
KINDS = ("kill", "gpu_oom", "host_oom", "nan", "kill_caching")
KILL_CACHING = "kill_caching"


#: How a fault names the smallest batch size it strikes: `batch>=64`.
BATCH_CONDITION = "batch>="


@dataclass(frozen=True)
class Fault:
    kind: str
    #: The trial it strikes, or None when it strikes by batch size.
    trial: int | None
    epoch: int
    #: Every trial with at least this batch size (None: only `trial`).
    min_batch_size: int | None = None

    def strikes(self, trial_number: int, batch_size: int) -> bool:
        if self.min_batch_size is not None:
            return batch_size >= self.min_batch_size
        return self.trial == trial_number


def parse_faults(text: str) -> list[Fault]:
    faults = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            kind, where = item.split("@")
            target, epoch = where.split(":")
            if target.startswith(BATCH_CONDITION):
                batch = int(target.removeprefix(BATCH_CONDITION))
                fault = Fault(kind, None, int(epoch), min_batch_size=batch)
            else:
                fault = Fault(kind, int(target), int(epoch))
        except ValueError:
            raise ValueError(
                f"{ENVIRONMENT_VARIABLE}: expected kind@trial:epoch or kind@batch>=N:epoch, "
                f"got {item!r}"
            ) from None
        if kind not in KINDS:
            raise ValueError(
                f"{ENVIRONMENT_VARIABLE}: unknown fault {kind!r}; known: {', '.join(KINDS)}"
            )
        faults.append(fault)
    return faults


def faults_for(trial_number: int, batch_size: int) -> list[Fault]:
    plan = parse_faults(os.environ.get(ENVIRONMENT_VARIABLE, ""))
    return [fault for fault in plan if fault.strikes(trial_number, batch_size)]


def cache_fault(faults: list[Fault]) -> Callable[[], None] | None:
    """What to call after each chunk a cache entry writes, if `faults` has a kill_caching."""
    chunks = [fault.epoch for fault in faults if fault.kind == KILL_CACHING]
    if not chunks:
        return None
    written = [0]

    def after_chunk() -> None:
        written[0] += 1
        if written[0] >= chunks[0]:
            print(f"injecting fault {KILL_CACHING!r} after chunk {written[0]}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    return after_chunk


def fault_callback(faults: list[Fault]) -> Any:
    """A Keras callback that injects `faults` at the end of their epochs."""
    import keras
    import numpy as np
    import tensorflow as tf

    by_epoch = {fault.epoch: fault.kind for fault in faults if fault.kind != KILL_CACHING}

    class InjectFaults(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            kind = by_epoch.get(epoch + 1)
            if kind is None:
                return
            print(f"injecting fault {kind!r} after epoch {epoch + 1}", flush=True)
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if kind == "gpu_oom":
                raise tf.errors.ResourceExhaustedError(
                    None, None, "OOM when allocating tensor (injected by FINETUNE_SEARCH_FAULTS)"
                )
            if kind == "host_oom":
                raise MemoryError("injected by FINETUNE_SEARCH_FAULTS")
            if kind == "nan":
                head = self.model.get_layer("head_predictions")
                head.set_weights([np.full_like(w, np.nan) for w in head.get_weights()])

    return InjectFaults()
