"""Servers the tests start and stop themselves: a free port, a process group, a ready check.

`mlflow server` and `optuna-dashboard` run as subprocesses in their own process group (the
MLflow server's uvicorn worker goes with it) and are always stopped, SIGTERM then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for

SERVER_START_SECONDS = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.HTTPError):
        return False


def mlflow_server_command(folder: Path, port: int) -> list[str]:
    """`mlflow server` on `folder`'s SQLite store, with proxied artifacts, at `port`."""
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop the server and its children; SIGKILL if `sig` does not end it in 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@contextlib.contextmanager
def started(command: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` (a server) until the block ends; it is always stopped, with its children."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # MLflow 3's background job runner is not needed here and costs CPU.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        try:
            yield process
        finally:
            stop(process)


def wait_until_ready(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    """Poll until `url` answers 200; fail with the server's log if it exits or never does."""
    ready = wait_for(lambda: process.poll() is not None or answers(url), SERVER_START_SECONDS)
    if not ready or process.poll() is not None:
        pytest.fail(f"{process.args!r} did not start:\n{log_path.read_text()[-3000:]}")
