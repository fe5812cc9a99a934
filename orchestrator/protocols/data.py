"""What an evaluation runs on: the passages of a SEAL-format data file, and the sources of updates.

A *source* says how a student is updated for a passage: ``base`` (not at all), ``passage`` (on the passage
text alone), or a set of edits per passage (from the config's teacher, or the ``completions`` of a
SEAL-format edits file, matched to the data's passages by their context text).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from core.records import Context
from orchestrator.tasks.squad import DataFormatError, load_seal_json, to_context

log = logging.getLogger(__name__)

RESERVED = ("base", "passage", "teacher")


@dataclass(frozen=True)
class Source:
    """``kind``: base | passage | edits. ``edits`` maps a context id to its edit texts (kind == edits)."""

    name: str
    kind: str
    edits: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def texts(self, context: Context, k: int = 0) -> list[str]:
        """What this source trains on for one passage, one text per update (``k`` > 0 keeps the first k):
        nothing for ``base`` (the student is scored as it is), the passage itself for ``passage``."""
        if self.kind == "base":
            return []
        if self.kind == "passage":
            return [context.text]
        texts = list(self.edits.get(context.id, ()))
        return texts[:k] if k > 0 else texts


def normalize_text(text: str) -> str:
    """Context texts are matched with whitespace collapsed (files differ in trailing spaces and newlines)."""
    return " ".join(text.split())


def load_passages(path: str | Path) -> list[Context]:
    """The passages of a SEAL-format file that have questions, in file order (ids ``squad-<index>``)."""
    records = load_seal_json(path)
    contexts = [to_context(r, i) for i, r in enumerate(records) if r["questions"]]
    if not contexts:
        raise DataFormatError(f"{path}: no passage has questions; nothing to evaluate")
    return contexts


def load_edit_file(path: str | Path) -> dict[str, tuple[str, ...]]:
    """A SEAL-format edits file as ``normalized context text -> completions``."""
    out: dict[str, tuple[str, ...]] = {}
    for i, r in enumerate(load_seal_json(path, need_completions=True)):
        comps = r["completions"]
        if comps is None or not isinstance(comps, list) or not all(isinstance(c, str) for c in comps):
            raise DataFormatError(f"{path}: record {i} 'completions' must be a list of strings")
        key = normalize_text(r["context"])
        if key in out:
            log.warning("%s: record %d repeats an earlier context; its completions are added to it", path, i)
        out[key] = out.get(key, ()) + tuple(comps)
    return out


def source_name(path: Path, taken: set[str]) -> str:
    """A file's source name is its stem (``edits_gpt4_1``), made unique and kept off the reserved names."""
    name, n = path.stem, 2
    while name in taken or name in RESERVED:
        name, n = f"{path.stem}-{n}", n + 1
    return name


def load_eval_data(
    data: str | Path, edit_files: list[str] | list[Path], limit: int = 0, skip: int = 0
) -> tuple[list[Context], list[Source]]:
    """Passages of ``data`` that every edits file covers (``limit`` of them after the first ``skip``), and
    one source per file."""
    contexts = load_passages(data)
    by_file = []
    for p in edit_files:
        table = load_edit_file(p)
        matched = [c for c in contexts if normalize_text(c.text) in table]
        if not matched:
            raise DataFormatError(
                f"{p}: no record matches a passage of {data} by context text; is it an edits file for "
                f"these passages?"
            )
        by_file.append((Path(p), table))
    covered = [c for c in contexts if all(normalize_text(c.text) in t for _, t in by_file)]
    if len(covered) < len(contexts):
        log.warning(
            "%d of %d passages of %s have edits in every --edits file; evaluating those",
            len(covered),
            len(contexts),
            data,
        )
    if not covered:
        raise DataFormatError(f"no passage of {data} is covered by every --edits file; pass matching files")
    if skip > 0:
        if skip >= len(covered):
            raise DataFormatError(f"--skip {skip}: only {len(covered)} passages of {data} to evaluate")
        covered = covered[skip:]
    if limit > 0:
        covered = covered[:limit]
    sources, taken = [], set()
    for path, table in by_file:
        name = source_name(path, taken)
        taken.add(name)
        edits = {c.id: table[normalize_text(c.text)] for c in covered}
        sources.append(Source(name, "edits", edits))
    return covered, sources


def seal_records(
    contexts: list[Context], edits: Mapping[str, tuple[str, ...]], prompts: Mapping[str, str]
) -> list[dict]:
    """Edits in SEAL's file format (reusable with ``--edits``)."""
    return [
        {
            "title": c.title,
            "context": c.text,
            "questions": [
                {
                    "question": q.question,
                    "answer": q.answer,
                    **({"answers": list(q.golds)} if q.alternatives else {}),
                }
                for q in c.questions
            ],
            "completions": list(edits.get(c.id, ())),
            "prompt": prompts.get(c.id, ""),
        }
        for c in contexts
    ]
