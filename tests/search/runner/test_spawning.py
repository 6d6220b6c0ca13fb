"""`search.runner.spawning`: a child started lean does not re-import its parent's main module,
and the parent's main module is left as it was."""

from __future__ import annotations

import importlib.util
import multiprocessing
import sys
import types
from multiprocessing.connection import Connection

import pytest

from search.runner.spawning import start_without_main

#: The main module of `python -m tests.search.scripted_run`: the command's whole front end.
COMMAND_MAIN = "tests.search.scripted_run"


def _report_modules(connection: Connection) -> None:
    """In the child: which of the parent's modules its start-up imported."""
    imported = ("search.run", "tests.search.scripted_worker")
    connection.send([name in sys.modules for name in imported])
    connection.close()


def _child_imported(start: object) -> list[bool]:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe(duplex=False)
    process = context.Process(target=_report_modules, args=(theirs,), daemon=True)
    start(process)  # type: ignore[operator]
    theirs.close()
    try:
        assert ours.poll(60), "the child sent nothing"
        reported: list[bool] = ours.recv()
        return reported
    finally:
        process.join(timeout=30)


@pytest.fixture
def command_main(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Make this process's main module the scripted command's, as under `python -m`."""
    spec = importlib.util.find_spec(COMMAND_MAIN)
    assert spec is not None and spec.origin is not None
    main = types.ModuleType("__main__")
    main.__spec__ = spec
    main.__file__ = spec.origin
    monkeypatch.setitem(sys.modules, "__main__", main)
    return main


def test_a_plain_spawn_re_imports_the_command_but_a_lean_start_does_not(
    command_main: types.ModuleType,
) -> None:
    # The cost being avoided: multiprocessing's own start runs the command's module again.
    assert _child_imported(lambda process: process.start()) == [True, True]
    assert _child_imported(start_without_main) == [False, False]
    # The parent's main module is whole again afterwards.
    assert command_main.__spec__ is not None and command_main.__spec__.name == COMMAND_MAIN
    assert command_main.__file__.endswith("scripted_run.py")
