"""Test-only fault injection: kill the process with SIGKILL at the n-th pass through a named point.

The resume tests set ``TEACHEDIT_FAULT`` and start a real run in a subprocess, e.g.::

    TEACHEDIT_FAULT=adapt:5 teachedit run --resume runs/x   # SIGKILL at the 5th inner-loop optimizer step

Points (where :func:`point` is called):

=============  ================================================================================
``generate``   after each ``generate()`` call of :meth:`teacher.model.Teacher.propose`
``adapt``      after each inner-loop optimizer step (the student holds a LoRA adapter / new weights)
``score``      after a student's no-context scoring, before its result is recorded
``train``      after each optimizer step of the teacher's SFT (a TRL ``TrainerCallback``)
``checkpoint`` inside :meth:`teacher.model.Teacher.save`: weights written, tokenizer not, not renamed
``write``      inside :meth:`orchestrator.rundir.RunDir.append_jsonl`: half of the line written (torn)
=============  ================================================================================

Several faults may be given, comma-separated (``adapt:3,write:7``); the first one reached kills. With the
variable unset, :func:`point` costs one dictionary lookup.

``TEACHEDIT_PAUSE=POINT:SECONDS`` sleeps at every pass through POINT instead (a slow run, so a test can signal
it, or start a second writer, while it is surely still working).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

ENV = "TEACHEDIT_FAULT"
PAUSE_ENV = "TEACHEDIT_PAUSE"
POINTS = ("generate", "adapt", "score", "train", "checkpoint", "write")

_counts: dict[str, int] = {}
_parsed: tuple[str, dict[str, int]] = ("", {})


class FaultSpecError(ValueError):
    """``TEACHEDIT_FAULT`` is malformed."""


def parse(spec: str) -> dict[str, int]:
    """``"adapt:5,write:2"`` → ``{"adapt": 5, "write": 2}``. Raises :class:`FaultSpecError`."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, n = part.partition(":")
        if name not in POINTS or not n.isdigit() or int(n) < 1:
            raise FaultSpecError(
                f"{ENV}={spec!r}: each fault is POINT:N with POINT in {', '.join(POINTS)} and N >= 1"
            )
        out[name] = int(n)
    return out


def _active() -> dict[str, int]:
    """The faults of the current environment (re-read when it changes, so tests can set it)."""
    global _parsed
    spec = os.environ.get(ENV, "")
    if spec != _parsed[0]:
        _parsed = (spec, parse(spec))
        _counts.clear()
    return _parsed[1]


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def point(name: str, before_kill: Callable[[], Any] | None = None) -> None:
    """Count a pass through ``name``; at the configured pass run ``before_kill`` (e.g. write half a line)
    and SIGKILL this process: no cleanup, no ``finally``, no flushing, like a node that loses power."""
    if PAUSE_ENV in os.environ:
        _pause(name, os.environ[PAUSE_ENV])
    if ENV not in os.environ:
        return
    faults = _active()
    if name not in faults:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == faults[name]:
        if before_kill is not None:
            before_kill()
        os.kill(os.getpid(), signal.SIGKILL)


def _pause(name: str, spec: str) -> None:
    where, _, seconds = spec.partition(":")
    if where not in POINTS:
        raise FaultSpecError(f"{PAUSE_ENV}={spec!r}: POINT:SECONDS with POINT in {', '.join(POINTS)}")
    if where == name:
        time.sleep(float(seconds))


def trainer_callbacks() -> list[Any]:
    """A ``TrainerCallback`` that calls ``point("train")`` after each optimizer step, or none when unset."""
    if not enabled():
        return []
    from transformers import TrainerCallback

    class _FaultCallback(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            point("train")

    return [_FaultCallback()]
