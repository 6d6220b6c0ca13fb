"""Folders of computed arrays shared by every trial of a study, written once and never in place.

A cache entry is a folder `<root>/<kind>-<digest>` whose name is a digest of everything its
contents depend on (`CacheKey`): change any input and the entry is simply a different folder.
The first process to need an entry builds it in a private `.tmp-<pid>` folder and renames it
into place, so a reader never sees half an entry; a file lock (`flock`, released by the kernel
if the builder is killed) makes the other processes that need the same entry wait for it
instead of computing it again. A builder killed mid-write leaves only its temporary folder,
which the next builder removes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Written last into an entry, with the key's inputs, so that a person can tell what it holds.
KEY_FILE = "key.json"
_TEMPORARY = ".tmp-"

#: What `--cache-budget-gb` counts in.
GIGABYTE = 10**9

#: Called as (entry kind, items done, items in all) while an entry is being built.
CacheProgress = Callable[[str, int, int], None]


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (weights files: a changed file is a different key)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """What an entry's contents depend on: its kind and a JSON-serialisable mapping of inputs."""

    kind: str
    inputs: Mapping[str, Any]

    @property
    def digest(self) -> str:
        text = json.dumps({"kind": self.kind, **self.inputs}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    @property
    def folder_name(self) -> str:
        return f"{self.kind}-{self.digest}"


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a", encoding="utf-8") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


#: What a full disk (or an exhausted quota) raises.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class CacheFullError(OSError):
    """No room left for a cache entry; the run goes on without that cache."""


def cached_entry(root: Path, key: CacheKey, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """The entry for `key` under `root`, built by `build(folder)` if it does not exist yet.

    Returns the entry's folder and whether this call built it. A full disk removes the partial
    entry and raises `CacheFullError`.
    """
    final = root / key.folder_name
    if final.is_dir():
        return final, False
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{key.folder_name}.lock"):
        if final.is_dir():  # a peer built it while we waited for the lock
            return final, False
        for abandoned in root.glob(f"{key.folder_name}{_TEMPORARY}*"):
            # Whoever wrote it held the lock we now hold: it was killed mid-write.
            shutil.rmtree(abandoned, ignore_errors=True)
        partial = root / f"{key.folder_name}{_TEMPORARY}{os.getpid()}"
        partial.mkdir()
        try:
            build(partial)
            (partial / KEY_FILE).write_text(
                json.dumps({"kind": key.kind, **key.inputs}, indent=2, sort_keys=True, default=str)
                + "\n",
                encoding="utf-8",
            )
            os.rename(partial, final)
        except BaseException as error:
            shutil.rmtree(partial, ignore_errors=True)
            if isinstance(error, OSError) and error.errno in DISK_FULL:
                raise CacheFullError(
                    error.errno, f"no space left for the {key.kind} cache in {root}"
                ) from error
            raise
    return final, True


def folder_size(folder: Path) -> int:
    """Bytes in the files of a folder (what an entry costs on disk)."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def throttled_progress(log: Callable[[str], None], every_s: float = 10.0) -> CacheProgress:
    """A CacheProgress that logs at most every `every_s` seconds, and always the last item."""
    last_logged = [-math.inf]

    def progress(what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - last_logged[0] >= every_s:
            last_logged[0] = now
            log(f"cache: {what} {done}/{total}")

    return progress
