"""Multi-passage continued pretraining (SEAL's CPT study): one update on the training data of n passages
together (LoRA or full fine-tuning, per the student's adapt config), evaluated on all their questions.

The passages are cut into consecutive groups of ``n`` (a last, smaller group is kept); each group is one
update from the unchanged student, and a source's score averages over the groups' questions. A LoRA student's
groups are adapted ``edit_batch_size`` at a time (:mod:`orchestrator.protocols.batched`)."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from core.records import Context
from orchestrator.protocols.batched import Update, run_updates
from orchestrator.protocols.common import BaseAnswers, Settings, UpdateResult
from orchestrator.protocols.data import Source


def groups(contexts: list[Context], n: int) -> list[list[Context]]:
    """Consecutive groups of ``n`` passages (``n`` <= 0: one group of all)."""
    n = n if n > 0 else len(contexts)
    return [contexts[i : i + n] for i in range(0, len(contexts), n)]


def run_cpt(
    student: Any, source: Source, contexts: list[Context], settings: Settings, base: BaseAnswers
) -> list[UpdateResult]:
    parts = groups(contexts, settings.n)
    plan = [Update(g, _pairs(source, group, settings.k), group) for g, group in enumerate(parts)]
    desc = f"cpt {source.name} → {student.name}"
    with tqdm(total=len(plan), desc=desc, disable=not settings.progress, unit="group") as bar:
        return run_updates(student, source, plan, settings, base, bar)


def _pairs(source: Source, group: list[Context], k: int) -> list[tuple[str, Context]] | None:
    """The texts of one group's update (``None`` for the ``base`` source: no update)."""
    return None if source.kind == "base" else [(t, c) for c in group for t in source.texts(c, k)]
