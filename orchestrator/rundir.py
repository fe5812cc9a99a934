"""The run directory: append-only JSONL records written as they complete, JSON files written atomically.

Layout under ``runs/<name>/``::

    config.yaml            resolved config
    metrics.jsonl          one line per completed round
    edits/round_<k>.jsonl  every edit with per-student scores and reward, appended as each completes
    teacher/round_<k>/     teacher after k updates (safetensors)
    summary.json           the run's summary (rewritten atomically after each round)
    reward_curve.png       mean and held-out reward per round
    .lock                  while a process writes the run: its pid, host and command (one writer per run)
    interrupted.json       after a SIGTERM/SIGINT: the signal, the records kept, the command that resumes it
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core import faults
from core.records import EditResult
from orchestrator import signals

log = logging.getLogger(__name__)


class RunDirError(RuntimeError):
    """The run directory cannot be used (exists already, not writable, disk full)."""


class RunDir:
    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path)
        # Under a launcher only rank 0 writes; on the other ranks every write is skipped.
        self.writer = writer

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> RunDir:
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise RunDirError(
                    f"run directory {path} already exists. Resume it with `teachedit run --resume {path}`, "
                    f"choose another run.name, or set run.overwrite=true to replace it."
                )
            holder = _read_lock(path / LOCK)
            if holder is not None and not _stale(holder):
                raise RunDirError(
                    f"run.overwrite=true would delete {path} while process {holder.get('pid')} on "
                    f"{holder.get('host')} writes it ({holder.get('command')}). Stop it first, or choose another "
                    f"run.name."
                )
            if not _is_run_dir(path):
                # overwrite deletes a folder: only ever one that a run wrote, never a user's own folder.
                raise RunDirError(
                    f"run.overwrite=true would delete {path}, which is not a teachedit run directory "
                    f"(no config.yaml). Choose another run.name or run.output_dir."
                )
            shutil.rmtree(path)
        try:
            (path / "edits").mkdir(parents=True, exist_ok=True)
            (path / "teacher").mkdir(exist_ok=True)
            probe = path / ".write_test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise RunDirError(
                f"cannot write to run directory {path}: {exc.strerror or exc}. "
                f"Choose a writable run.output_dir (and check free space)."
            ) from None
        return cls(path)

    # -- writing ---------------------------------------------------------------------------------------------
    def write_text(self, name: str, text: str) -> None:
        """Atomic: write a temp file, fsync, rename over the target."""
        if not self.writer:
            return
        target = self.path / name
        tmp = target.with_name(target.name + ".tmp")
        with signals.deferred(), _disk_errors(self.path, target):
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)

    def write_json(self, name: str, obj: Any) -> None:
        self.write_text(name, json.dumps(obj, indent=2) + "\n")

    def append_jsonl(self, name: str, obj: dict[str, Any]) -> None:
        """Append one complete line and fsync, so a killed run leaves every record complete or absent."""
        if not self.writer:
            return
        line = (json.dumps(obj) + "\n").encode()
        path = self.path / name
        with signals.deferred(), _disk_errors(self.path, path), open(path, "ab+") as f:
            _drop_torn_tail(f)
            faults.point("write", before_kill=lambda: _write_synced(f, line[: len(line) // 2]))
            _write_synced(f, line)

    def append_edit(self, round_index: int, result: EditResult) -> None:
        self.append_jsonl(f"edits/round_{round_index}.jsonl", result.to_dict())

    # -- one writer ----------------------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.path / LOCK

    def acquire_lock(self) -> None:
        """Take the run's lock (``.lock``: pid, host, start time, command) or refuse, naming the process that
        holds it. A lock left by a process that no longer runs on this host is stale and taken over."""
        if not self.writer:
            return
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(), "command": _command()}
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(self.lock_path)
                if holder is None and _age(self.lock_path) < 10:
                    holder = {"pid": "?", "host": "?", "since": "just now", "command": "?"}  # being written
                if holder is not None and not _stale(holder):
                    raise RunDirError(
                        f"{self.path} is being written by process {holder.get('pid')} on "
                        f"{holder.get('host')} (since {holder.get('since')}: {holder.get('command')}). Two "
                        f"writers would duplicate records: wait for it to finish or stop it; if that process is "
                        f"gone (another host), delete {self.lock_path}."
                    ) from None
                log.warning("taking over a stale lock of %s: %s", self.path, holder)
                self.lock_path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me) + "\n")
                f.flush()
                os.fsync(f.fileno())
            return
        raise RunDirError(f"cannot take the lock {self.lock_path}: another process keeps taking it")

    def release_lock(self) -> None:
        if not self.writer:
            return
        holder = _read_lock(self.lock_path)
        if (
            holder is not None
            and holder.get("pid") == os.getpid()
            and holder.get("host") == socket.gethostname()
        ):
            self.lock_path.unlink(missing_ok=True)

    # -- reading ---------------------------------------------------------------------------------------------
    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        """Records of a JSONL file; a torn last line (killed mid-write) is dropped."""
        path = self.path / name
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def edits(self, round_index: int) -> list[EditResult]:
        return [EditResult.from_dict(d) for d in self.read_jsonl(f"edits/round_{round_index}.jsonl")]

    def teacher_dir(self, round_index: int) -> Path:
        return self.path / "teacher" / f"round_{round_index}"

    # -- after a crash ---------------------------------------------------------------------------------------
    def remove_partial_writes(self) -> list[Path]:
        """Delete what a killed run left half-written: ``*.tmp`` files of atomic writes and ``*.tmp`` teacher
        checkpoint folders (the complete ones were renamed into place). Returns what was removed."""
        removed = []
        for p in sorted(self.path.rglob("*.tmp")):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
            else:
                continue  # inside a folder removed just before
            removed.append(p)
            log.info("removed a partial write left by an interrupted run: %s", p)
        return removed


LOCK = ".lock"
INTERRUPTED = "interrupted.json"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _command() -> str:
    return " ".join(shlex.quote(a) for a in sys.argv)


def _read_lock(path: Path) -> dict[str, Any] | None:
    """The lock's holder; None when the file is unreadable (a writer killed between create and write)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


def _stale(holder: dict[str, Any]) -> bool:
    """The holder runs on this host and its process is gone. Another host's process cannot be checked: never
    stale (the message says how to remove the lock by hand)."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def _is_run_dir(path: Path) -> bool:
    """A folder a run wrote: it has config.yaml, or only the empty skeleton of a run killed at its start."""
    if (path / "config.yaml").is_file():
        return True
    entries = list(path.iterdir())
    skeleton = {"edits", "teacher", ".write_test", "config.yaml.tmp"}
    return all(p.name in skeleton and not (p.is_dir() and any(p.iterdir())) for p in entries)


def _write_synced(f: Any, data: bytes) -> None:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def _drop_torn_tail(f: Any) -> None:
    """A run killed mid-append leaves a last line without its newline. Cut it off before appending, or the
    next record would be glued to it and both lost. ``f`` is open in ``ab+`` mode (writes go to the end)."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    block = 1 << 16
    pos = size
    while pos > 0:  # find the last newline, reading backwards
        start = max(0, pos - block)
        f.seek(start)
        i = f.read(pos - start).rfind(b"\n")
        if i >= 0:
            keep = start + i + 1
            break
        pos = start
    else:
        keep = 0
    log.warning("dropping a torn last line (%d bytes) of %s left by an interrupted run", size - keep, f.name)
    f.truncate(keep)
    f.flush()
    os.fsync(f.fileno())


@contextmanager
def _disk_errors(rundir: Path, path: Path) -> Iterator[None]:
    """OS errors while writing the run directory become one actionable :class:`RunDirError`."""
    try:
        yield
    except OSError as exc:
        hint = {
            errno.ENOSPC: "the disk is full: free space",
            errno.EDQUOT: "the disk quota is exceeded: free space",
            errno.EROFS: "the file system is read-only: use a writable run.output_dir",
            errno.EACCES: "permission denied: make the run directory writable",
        }.get(exc.errno or 0, "fix the cause")
        raise RunDirError(
            f"cannot write {path}: {exc.strerror or exc}. Records written so far are kept; {hint}, then "
            f"continue with `teachedit run --resume {rundir}`."
        ) from None
