"""Single-passage knowledge incorporation (SEAL's main table): for each passage, one update per edit of the
student, then no-context QA on that passage's questions; a source's score averages over its edits. A LoRA
student's updates are adapted ``edit_batch_size`` at a time (:mod:`orchestrator.protocols.batched`)."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from core.records import Context
from orchestrator.protocols.batched import Update, run_updates
from orchestrator.protocols.common import BaseAnswers, Settings, UpdateResult, timed_update
from orchestrator.protocols.data import Source


def run_single(
    student: Any, source: Source, contexts: list[Context], settings: Settings, base: BaseAnswers
) -> list[UpdateResult]:
    """Every (passage, edit) of ``source`` on ``student``: adapt, score on the passage, restore."""
    if source.kind == "base":
        return [timed_update(student, source, 0, None, [c], settings, base) for c in contexts]
    # a passage without edits gets one empty update: a recorded failure, scored as the unchanged student
    plan = [
        Update(i, [(text, c)], [c])
        for c in contexts
        for i, text in enumerate(source.texts(c, settings.k) or [""])
    ]
    desc = f"single {source.name} → {student.name}"
    with tqdm(total=len(plan), desc=desc, disable=not settings.progress, unit="upd") as bar:
        return run_updates(student, source, plan, settings, base, bar)
