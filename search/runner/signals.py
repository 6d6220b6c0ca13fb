"""Ctrl-C and SIGTERM as a flag the coordinator's loop reads at a safe point.

A study must never stop inside a database write, so the handlers only set `requested`; the
loop sees it and stops the running trials itself. A second Ctrl-C raises KeyboardInterrupt at
once. Python retries a wait that a signal interrupts, so the handlers alone would let the loop
sleep until the next worker message; a wake-up pipe (`signal.set_wakeup_fd`) that the loop
waits on too ends the wait at once, before a trial the user meant to stop can finish.
"""

from __future__ import annotations

import contextlib
import os
import signal
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager: catches the stop signals while the study runs (main thread only;
    elsewhere it changes nothing and `wakeup_fd` is None)."""

    def __init__(self) -> None:
        self.requested = False
        #: Readable whenever a signal arrived; wait on it beside the workers.
        self.wakeup_fd: int | None = None
        self._writer: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._previous_wakeup_fd = -1

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            try:
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread: leave signals alone
                return self
        reader, writer = os.pipe()
        os.set_blocking(reader, False)
        os.set_blocking(writer, False)
        self._previous_wakeup_fd = signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
        self.wakeup_fd, self._writer = reader, writer
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()
        if self.wakeup_fd is not None and self._writer is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            os.close(self.wakeup_fd)
            os.close(self._writer)
            self.wakeup_fd = self._writer = None

    def clear_wakeups(self) -> None:
        """Empty the wake-up pipe after a wait, so the next wait blocks again."""
        if self.wakeup_fd is None:
            return
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wakeup_fd, 512):
                pass

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        # Only a flag: printing here could land inside a print of the main thread, which
        # Python refuses (reentrant call); the main loop says it is stopping.
        self.requested = True
