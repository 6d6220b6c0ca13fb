"""Output folders: proven writable before any training time is spent.

`check_writable_folder` looks without creating anything, for checks that run before bad input
is ruled out; `ensure_writable_folder` creates the folder and writes a probe file into it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from trainers.errors import OutputFolderError


def check_writable_folder(folder: str | Path) -> None:
    """Raise OutputFolderError unless `folder` exists and is writable, or could be created in
    its nearest existing parent; creates nothing, and never raises anything else."""
    folder = Path(folder)
    absolute = folder.absolute()
    # lexists, never exists: it does not raise for a parent that cannot be entered, and a
    # dangling link counts as what it is, a file in the way.
    existing = next(path for path in (absolute, *absolute.parents) if os.path.lexists(path))
    if not os.path.isdir(existing):
        reason = os.strerror(errno.ENOTDIR)
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = os.strerror(errno.EROFS if _read_only(existing) else errno.EACCES)
    else:
        return
    raise OutputFolderError(f"output folder {folder} is not writable: {reason} ({existing})")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def ensure_writable_folder(folder: str | Path) -> Path:
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise OutputFolderError(
            f"output folder {folder} is not writable: {error.strerror or error}"
        ) from None
    return folder
