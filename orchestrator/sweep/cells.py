"""A sweep cell's identity and its cache: the key hashes everything the cell depends on (source content,
student spec, protocol settings, passages, seed), and a computed cell is stored as ``cells/<key>.json``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.records import Context, json_safe
from orchestrator.protocols.common import Answer, UpdateResult
from orchestrator.rundir import RunDir

log = logging.getLogger(__name__)

SWEEP_VERSION = 1  # bump when a cell's computation changes, so cached cells are recomputed


@dataclass(frozen=True)
class Cell:
    protocol: str  # "base" for the unchanged student (protocol-independent)
    source: str  # source name ("base" for the base cell)
    student: str
    key: str


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(json_safe(obj), sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: str | Path, large: int = 256 << 20) -> str:
    """Content hash of a file, or of a folder's files (a model checkpoint). Files over ``large`` bytes count by
    name, size and modification time instead, so a 7B checkpoint is not read just to name it."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        st = f.stat()
        if st.st_size > large:
            h.update(f"{st.st_size}/{st.st_mtime_ns}".encode())
        else:
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def contexts_digest(contexts: list[Context]) -> str:
    return digest([dataclasses.asdict(c) for c in contexts])


class CellCache:
    """Computed cells of one sweep directory, by key. An unreadable file is recomputed, never trusted."""

    def __init__(self, rd: RunDir):
        self.rd = rd

    def file(self, cell: Cell) -> Path:
        return self.rd.path / "cells" / f"{cell.key}.json"

    def read(self, cell: Cell) -> list[UpdateResult] | None:
        path = self.file(cell)
        if not path.is_file():
            return None
        try:
            return [_update_from_dict(d) for d in json.loads(path.read_text())["results"]]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("cached cell %s is unreadable (%s); recomputing it", path, exc)
            return None

    def write(self, cell: Cell, results: list[UpdateResult]) -> None:
        (self.rd.path / "cells").mkdir(exist_ok=True)
        record = {**dataclasses.asdict(cell), "results": [r.to_dict() for r in results]}
        self.rd.write_json(f"cells/{cell.key}.json", json_safe(record))


def _update_from_dict(d: dict[str, Any]) -> UpdateResult:
    answers = [
        Answer(**{**a, "logprob": a["logprob"] if a["logprob"] is not None else float("-inf")})
        for a in d["answers"]
    ]
    return UpdateResult(**{**d, "answers": answers})
