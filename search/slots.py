"""Worker slots on one machine: one per GPU (pinned with CUDA_VISIBLE_DEVICES), or CPU workers.

With GPUs, each slot sees exactly one device, so a trial cannot take another trial's memory.
Without, N CPU workers split the cores between them instead of each spawning a thread per core.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence


class SlotError(ValueError):
    """Inconsistent --workers / --gpus."""


def detect_gpus() -> list[str]:
    """GPU indices that nvidia-smi lists, or [] on a machine without NVIDIA GPUs."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.splitlines() if line.strip()]


def parse_gpus(text: str) -> list[str]:
    gpus = [part.strip() for part in text.split(",") if part.strip()]
    if not gpus or not all(part.isdigit() for part in gpus):
        raise SlotError(f"--gpus expects comma-separated GPU indices such as 0,1; got {text!r}")
    if len(set(gpus)) != len(gpus):
        raise SlotError(f"--gpus lists a GPU twice: {text!r}")
    return gpus


def worker_environments(
    workers: int | None, gpus: Sequence[str], cpu_count: int | None = None
) -> tuple[dict[str, str], ...]:
    """One environment per slot. `workers` None means one per GPU, or one CPU worker."""
    if gpus:
        count = len(gpus) if workers is None else workers
        if count > len(gpus):
            raise SlotError(
                f"--workers {count} needs as many GPUs, but --gpus has {len(gpus)}: "
                "one worker per GPU"
            )
        if count < 1:
            raise SlotError(f"--workers must be at least 1, got {count}")
        return tuple({"CUDA_VISIBLE_DEVICES": gpu} for gpu in gpus[:count])
    count = 1 if workers is None else workers
    if count < 1:
        raise SlotError(f"--workers must be at least 1, got {count}")
    cores = cpu_count or os.cpu_count() or 1
    threads = str(max(1, cores // count))
    # No GPU for CPU workers, and a fair share of the cores each (TensorFlow and oneDNN
    # otherwise start one thread per core in every worker).
    environment = {
        "CUDA_VISIBLE_DEVICES": "",
        "TF_NUM_INTRAOP_THREADS": threads,
        "TF_NUM_INTEROP_THREADS": "1" if count > 1 else "2",
        "OMP_NUM_THREADS": threads,
    }
    return tuple(dict(environment) for _ in range(count))
