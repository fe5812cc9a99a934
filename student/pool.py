"""The student pool: every student is adapted to every edit, scored without the context, and restored.

The orchestrator sees the pool through :meth:`StudentPool.evaluate` (a batch of edits in, one
:class:`EditResult` per edit out) and :meth:`StudentPool.describe`; placement and batching stay inside.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from tqdm.auto import tqdm

from core.records import Context, Edit, EditResult, StudentOutcome
from student.lifecycle import edit_seed
from student.student import Student

log = logging.getLogger(__name__)


class StudentPool:
    def __init__(self, students: list[Student]):
        if not students:
            raise ValueError("the student pool is empty: configure at least one student")
        self.students = students

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.students]

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "model_type": s.model_type, "num_parameters": s.num_parameters}
            for s in self.students
        ]

    def baselines(self, contexts: Iterable[Context], progress: bool = False) -> None:
        """Score every unadapted student on every context once (cached inside each student)."""
        contexts = list(contexts)
        for s in self.students:
            for c in tqdm(contexts, desc=f"baseline {s.name}", disable=not progress, unit="ctx"):
                s.baseline(c)

    def unadapted(self, edit: Edit, context: Context, reason: str) -> EditResult:
        """The record of an edit no student is trained on (a degenerate edit): every student's cached baseline,
        no adapted score, ``reason`` as the error. Costs no student pass once baselines are cached."""
        return unadapted_result(self.students, edit, context, reason)

    def evaluate(
        self,
        edits: list[Edit],
        contexts: dict[str, Context],
        run_seed: int,
        on_result: Callable[[EditResult], None] | None = None,
        progress: bool = False,
        desc: str = "adapting students",
    ) -> list[EditResult]:
        """Adapt each student to each edit, score, restore. Edits go in chunks of the largest
        ``adapt.edit_batch_size`` (each student batches LoRA edits up to its own size); ``on_result`` is called
        for each edit as its chunk completes (the orchestrator persists it there). Rewards are left at 0 for
        the reward function to fill."""
        results = []
        size = max(s.edit_batch_size for s in self.students)
        with tqdm(total=len(edits), desc=desc, disable=not progress, unit="edit") as bar:
            for start in range(0, len(edits), size):
                chunk = edits[start : start + size]
                texts, ctxs = [e.text for e in chunk], [contexts[e.context_id] for e in chunk]
                per_student = {
                    s.name: s.evaluate_edits(texts, ctxs, [edit_seed(run_seed, e, s.name) for e in chunk])
                    for s in self.students
                }
                for i, edit in enumerate(chunk):
                    result = EditResult(edit=edit, per_student={n: o[i] for n, o in per_student.items()})
                    if on_result is not None:
                        on_result(result)
                    results.append(result)
                bar.update(len(chunk))
        return results


def unadapted_result(students: list[Any], edit: Edit, context: Context, reason: str) -> EditResult:
    """An edit's record with every student's cached baseline, no adapted score and ``reason`` as the error."""
    per = {s.name: StudentOutcome(s.baseline(context), None, 0.0, error=reason) for s in students}
    return EditResult(edit=edit, per_student=per, penalty=reason)
