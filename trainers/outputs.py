"""Output folders: created and proven writable before any training time is spent."""

from __future__ import annotations

from pathlib import Path

from trainers.errors import OutputFolderError


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
