"""Worker slots on one machine: one per GPU (pinned with CUDA_VISIBLE_DEVICES), or CPU workers.

With GPUs, each slot sees exactly one device, so a trial cannot take another trial's memory.
Without, N CPU workers split the cores between them instead of each spawning a thread per core.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence


class SlotError(ValueError):
    """Inconsistent --workers / --gpus."""


def detect_gpus(environment: Mapping[str, str] = os.environ) -> tuple[list[str], bool]:
    """The GPUs workers may use, and whether they are numbered as nvidia-smi numbers them.

    CUDA_VISIBLE_DEVICES, when set, is the user's choice and is kept as written (empty or -1:
    no GPU, so `CUDA_VISIBLE_DEVICES= python -m search.run --workers 2` gives CPU workers on a
    GPU machine); otherwise every GPU that nvidia-smi lists, or none.
    """
    visible = environment.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus: list[str] = []
        for entry in (part.strip() for part in visible.split(",")):
            if not entry or entry.startswith("-"):
                break  # CUDA ignores everything from the first invalid entry on
            if entry not in gpus:  # one worker per GPU, however often it is listed
                gpus.append(entry)
        return gpus, False
    if shutil.which("nvidia-smi") is None:
        return [], True
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return [], True
    return [line.strip() for line in listed.splitlines() if line.strip()], True


def parse_gpus(text: str) -> list[str]:
    gpus = [part.strip() for part in text.split(",") if part.strip()]
    if not gpus or not all(part.isdigit() for part in gpus):
        raise SlotError(f"--gpus expects comma-separated GPU indices such as 0,1; got {text!r}")
    if len(set(gpus)) != len(gpus):
        raise SlotError(f"--gpus lists a GPU twice: {text!r}")
    return gpus


def worker_environments(
    workers: int | None,
    gpus: Sequence[str],
    cpu_count: int | None = None,
    *,
    nvidia_smi_numbering: bool = True,
) -> tuple[dict[str, str], ...]:
    """One environment per slot. `workers` None means one per GPU, or one CPU worker.

    GPU indices from --gpus or nvidia-smi follow nvidia-smi's PCI bus order, which CUDA only
    uses when told to (its default puts the fastest GPU first).
    """
    if gpus:
        count = len(gpus) if workers is None else workers
        if count > len(gpus):
            raise SlotError(
                f"--workers {count} needs as many GPUs, but --gpus has {len(gpus)}: "
                "one worker per GPU"
            )
        if count < 1:
            raise SlotError(f"--workers must be at least 1, got {count}")
        order = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"} if nvidia_smi_numbering else {}
        return tuple({"CUDA_VISIBLE_DEVICES": gpu, **order} for gpu in gpus[:count])
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
