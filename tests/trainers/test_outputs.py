"""Output folders: the look-only check a command makes before it spends time, and the creation."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainers.errors import OutputFolderError
from trainers.outputs import check_writable_folder, ensure_writable_folder


def test_a_folder_that_can_be_made_passes_the_check_and_is_not_made(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "a" / "b"
    check_writable_folder(folder)
    assert list(tmp_path.iterdir()) == []
    assert ensure_writable_folder(folder) == folder and folder.is_dir()
    assert list(folder.iterdir()) == []  # the probe file is gone


@pytest.mark.parametrize("in_the_way", ["a file", "a dangling link"])
def test_something_in_the_way_is_one_error_before_anything_is_made(
    in_the_way: str, tmp_path: Path
) -> None:
    blocker = tmp_path / "blocker"
    if in_the_way == "a file":
        blocker.write_text("")
    else:
        blocker.symlink_to(tmp_path / "gone")
    folder = blocker / "out"
    with pytest.raises(OutputFolderError) as raised:
        check_writable_folder(folder)
    assert str(raised.value) == (
        f"output folder {folder} is not writable: Not a directory ({blocker})"
    )
    assert [path.name for path in tmp_path.iterdir()] == ["blocker"]
    # Creating it fails the same way, as one OutputFolderError.
    with pytest.raises(OutputFolderError, match="is not writable"):
        ensure_writable_folder(folder)
