"""Fault injection for the fault-tolerance tests: faults no CPU machine can cause for real.

A GPU running out of memory cannot happen without a GPU, and waiting for the kernel's OOM
killer is not a test. Setting FINETUNE_SEARCH_FAULTS makes workers inject such faults at the end
of a given epoch of a given trial, through the same code paths the real faults take:

    FINETUNE_SEARCH_FAULTS="kill@2:1,gpu_oom@4:2,nan@5:1,host_oom@7:1"

- `kill`: the worker SIGKILLs itself (as the OOM killer or a node failure would);
- `gpu_oom`: raises tf.errors.ResourceExhaustedError, as TensorFlow does on a GPU;
- `host_oom`: raises MemoryError;
- `nan`: overwrites the head's weights with NaN, so the next epoch's loss really is NaN.

Unset (always, outside tests), nothing here runs.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any

ENVIRONMENT_VARIABLE = "FINETUNE_SEARCH_FAULTS"
KINDS = ("kill", "gpu_oom", "host_oom", "nan")


@dataclass(frozen=True)
class Fault:
    kind: str
    trial: int
    epoch: int


def parse_faults(text: str) -> list[Fault]:
    faults = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            kind, where = item.split("@")
            trial, epoch = where.split(":")
            fault = Fault(kind, int(trial), int(epoch))
        except ValueError:
            raise ValueError(
                f"{ENVIRONMENT_VARIABLE}: expected kind@trial:epoch, got {item!r}"
            ) from None
        if kind not in KINDS:
            raise ValueError(
                f"{ENVIRONMENT_VARIABLE}: unknown fault {kind!r}; known: {', '.join(KINDS)}"
            )
        faults.append(fault)
    return faults


def faults_for(trial_number: int) -> list[Fault]:
    return [
        f for f in parse_faults(os.environ.get(ENVIRONMENT_VARIABLE, "")) if f.trial == trial_number
    ]


def fault_callback(faults: list[Fault]) -> Any:
    """A Keras callback that injects `faults` at the end of their epochs."""
    import keras
    import numpy as np
    import tensorflow as tf

    by_epoch = {fault.epoch: fault.kind for fault in faults}

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
