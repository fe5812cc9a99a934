"""The run directory: append-only JSONL records written as they complete, JSON files written atomically.

Layout under ``runs/<name>/``::

    config.yaml            resolved config
    metrics.jsonl          one line per completed round
    edits/round_<k>.jsonl  every edit with per-student scores and reward, appended as each completes
    teacher/round_<k>/     teacher after k updates (safetensors)
    summary.json           the run's summary (rewritten atomically after each round)
    reward_curve.png       mean and held-out reward per round
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from orchestrator.records import EditResult


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
            import shutil

            shutil.rmtree(path)
        try:
            (path / "edits").mkdir(parents=True, exist_ok=True)
            (path / "teacher").mkdir(exist_ok=True)
            probe = path / ".write_test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise RunDirError(f"cannot write to run directory {path}: {exc.strerror or exc}") from None
        return cls(path)

    # -- writing ---------------------------------------------------------------------------------------------
    def write_text(self, name: str, text: str) -> None:
        """Atomic: write a temp file, fsync, rename over the target."""
        if not self.writer:
            return
        target = self.path / name
        tmp = target.with_name(target.name + ".tmp")
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
        line = json.dumps(obj) + "\n"
        with open(self.path / name, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def append_edit(self, round_index: int, result: EditResult) -> None:
        self.append_jsonl(f"edits/round_{round_index}.jsonl", result.to_dict())

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
