"""SIGTERM and SIGINT as a clean stop: how clusters preempt a job (SIGTERM, then SIGKILL after a grace period).

Inside :func:`graceful`, the first SIGTERM or SIGINT raises :class:`Preempted` in the main thread at the next
bytecode, so the record in flight is abandoned (never half-written: a resume computes it again), ``finally``
blocks run and the caller writes its resume marker. A signal that arrives while a record is being written
(:func:`deferred`, used by :class:`orchestrator.rundir.RunDir`) waits until the write and its fsync are done.
A second signal while the first is being handled exits at once (code 128 + signal number): every record
already written is complete and fsynced, so even that loses nothing a resume needs.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

HANDLED = (signal.SIGTERM, signal.SIGINT)


class Preempted(BaseException):
    """Raised by SIGTERM/SIGINT inside :func:`graceful`. A ``BaseException`` (like ``KeyboardInterrupt``), so
    ``except Exception`` blocks that turn a failed edit into a recorded zero do not swallow it."""

    def __init__(self, signum: int):
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_state: dict[str, Any] = {"depth": 0, "pending": None, "raised": False, "active": False}


def _handler(signum: int, frame: Any) -> None:
    if _state["raised"]:  # a second signal while stopping: leave now
        os._exit(128 + signum)
    if _state["depth"] > 0:  # a record is being written: finish it first
        _state["pending"] = signum
        return
    _state["raised"] = True
    raise Preempted(signum)


@contextmanager
def graceful() -> Iterator[None]:
    """Turn SIGTERM/SIGINT into :class:`Preempted` for the duration. Only the main thread can install signal
    handlers; elsewhere (a test's worker thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread() or _state["active"]:
        yield
        return
    previous = {s: signal.getsignal(s) for s in HANDLED}
    _state.update(depth=0, pending=None, raised=False, active=True)
    for s in HANDLED:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state.update(active=False)


@contextmanager
def deferred() -> Iterator[None]:
    """A signal that arrives inside waits until the block is done (a record's write and fsync)."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        pending = _state["pending"]
        if _state["depth"] == 0 and pending is not None:
            _state["pending"] = None
            _state["raised"] = True
            raise Preempted(pending)
