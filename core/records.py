"""The typed objects that flow between roles: task → teacher → student pool → reward → algorithm.

Everything here is plain data with ``to_dict`` / ``from_dict`` for JSONL persistence. The teacher and student
packages import only this module and :mod:`core.task` from the orchestrator.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Question:
    """A held-out question. ``answer`` is the reference answer (its log-probability is scored);
    ``alternatives`` are further accepted answers (SQuAD lists several): EM and F1 take the best over
    :attr:`golds`, as SQuAD's official script does."""

    question: str
    answer: str
    alternatives: tuple[str, ...] = ()

    @property
    def golds(self) -> tuple[str, ...]:
        return (self.answer, *self.alternatives)


@dataclass(frozen=True)
class Context:
    """A passage the teacher writes edits for, and the questions that test whether a student learned it."""

    id: str
    text: str
    questions: tuple[Question, ...]
    title: str = ""


@dataclass(frozen=True)
class Edit:
    """One piece of fine-tuning data the teacher wrote for one context."""

    context_id: str
    format: str  # prompt format the teacher was given (implications, self-qa, ...)
    sample_index: int  # 0..k-1 among the k samples for this context
    text: str
    teacher: str  # checkpoint that wrote it, e.g. "round_0" or "file:gpt4_1"
    prompt: str = ""  # the exact teacher prompt (what ReST-EM trains on)
    round: int = 0

    @property
    def key(self) -> str:
        """Stable identity of an edit within a run (used for resume and seeding)."""
        return f"r{self.round}/{self.context_id}/{self.sample_index}"


@dataclass(frozen=True)
class StudentScore:
    """A student's no-context QA scores on one context's questions (means over questions)."""

    em: float
    f1: float
    logprob: float  # mean per-token log-probability of the gold answer tokens
    n_questions: int

    def get(self, name: str) -> float:
        return float(getattr(self, name))

    @staticmethod
    def mean(scores: list[StudentScore]) -> StudentScore:
        n = sum(s.n_questions for s in scores)
        if n == 0:
            return StudentScore(0.0, 0.0, 0.0, 0)
        w = [s.n_questions / n for s in scores]
        return StudentScore(
            em=sum(wi * s.em for wi, s in zip(w, scores)),
            f1=sum(wi * s.f1 for wi, s in zip(w, scores)),
            logprob=sum(wi * s.logprob for wi, s in zip(w, scores)),
            n_questions=n,
        )


@dataclass
class StudentOutcome:
    """What one edit did to one student."""

    baseline: StudentScore
    adapted: StudentScore | None  # None when the edit could not be applied (see error)
    reward: float = 0.0
    error: str | None = None  # recorded reason for a zero reward (empty edit, NaN loss, OOM, ...)
    train_loss: float | None = None
    note: str | None = None  # what was cut to fit the inner loop (over-long edit), if anything


@dataclass
class EditResult:
    """One edit, its outcome on every student, and the pool's reward."""

    edit: Edit
    per_student: dict[str, StudentOutcome] = field(default_factory=dict)
    reward: float = 0.0
    heldout: bool = False
    penalty: str | None = None  # reason a reward penalty applied (degenerate edit)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    @staticmethod
    def from_dict(d: dict[str, Any]) -> EditResult:
        per = {}
        for name, o in d["per_student"].items():
            per[name] = StudentOutcome(
                baseline=StudentScore(**o["baseline"]),
                adapted=StudentScore(**o["adapted"]) if o["adapted"] is not None else None,
                reward=o["reward"],
                error=o.get("error"),
                train_loss=o.get("train_loss"),
                note=o.get("note"),
            )
        return EditResult(
            edit=Edit(**d["edit"]),
            per_student=per,
            reward=d["reward"],
            heldout=d.get("heldout", False),
            penalty=d.get("penalty"),
        )


def json_safe(obj: Any) -> Any:
    """JSON has no NaN/inf: store them as None so every line stays valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
