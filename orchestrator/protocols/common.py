"""What every protocol shares: per-question answers, one update's record, and "update, score, restore"."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from orchestrator.records import Context, json_safe
from orchestrator.tasks.base import TrainingItem
from student.scoring import exact_match, gold_logprobs, greedy_answers, token_f1
from student.student import EditError


@dataclass(frozen=True)
class Answer:
    """A student's no-context answer to one question."""

    context_id: str
    question_index: int
    question: str
    gold: str
    prediction: str
    em: float
    f1: float
    logprob: float  # mean per-token log-probability of the gold answer


@dataclass
class UpdateResult:
    """One update of one student (or none, for ``base``) and its answers afterwards.

    ``step`` numbers the updates of a (source, student): the edit index (single), the passage group (cpt) or
    the passage (continual). ``counted`` is False for records that are not part of the eval table (the
    intermediate steps of a continual run). A failed update leaves the student unchanged: its answers are the
    unchanged student's and ``error`` says why."""

    source: str
    student: str
    step: int
    context_ids: list[str]  # passages whose training data made up the update
    answers: list[Answer]
    train_loss: float | None = None
    error: str | None = None
    seconds: float = 0.0
    counted: bool = True
    n_items: int = 0  # training sequences in the update

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


@dataclass
class Settings:
    """Protocol knobs shared by the CLI and tests."""

    run_seed: int = 0
    k: int = 0  # edits per passage used (0: all; continual uses 1 when 0)
    n: int = 0  # cpt: passages per update; continual: steps (0: all passages)
    include_context: bool = False
    progress: bool = False
    on_update: Callable[[UpdateResult], None] | None = field(default=None, repr=False)

    def emit(self, result: UpdateResult) -> None:
        if self.on_update is not None:
            self.on_update(result)


def update_seed(run_seed: int, source: str, student: str, step: int, context_ids: list[str]) -> int:
    """Depends only on what is updated, not on the order updates run in."""
    key = f"{run_seed}/{source}/{student}/{step}/{','.join(context_ids)}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little") & 0x7FFFFFFF


def answer_questions(student: Any, contexts: list[Context]) -> list[Answer]:
    """Greedy no-context answers (EM, F1) and gold log-probabilities for every question of ``contexts``,
    batched across passages."""
    qs = [(c.id, i, q) for c in contexts for i, q in enumerate(c.questions)]
    if not qs:
        return []
    prompts = [student.task.qa_prompt(q.question) for _, _, q in qs]
    golds = [q.answer for _, _, q in qs]
    bs = student.cfg.eval_batch_size
    preds = greedy_answers(student.model, student.tok, prompts, student.cfg.max_new_tokens, bs)
    lps = gold_logprobs(student.model, student.tok, prompts, golds, bs)
    return [
        Answer(cid, i, q.question, q.answer, p, exact_match(p, q.answer), token_f1(p, q.answer), lp)
        for (cid, i, q), p, lp in zip(qs, preds, lps)
    ]


class BaseAnswers:
    """The unchanged student's answers per passage, computed once (the base source and failed updates)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], list[Answer]] = {}

    def get(self, student: Any, contexts: list[Context]) -> list[Answer]:
        todo = [c for c in contexts if (student.name, c.id) not in self._cache]
        fresh = answer_questions(student, todo)
        for c in todo:
            self._cache[(student.name, c.id)] = [a for a in fresh if a.context_id == c.id]
        return [a for c in contexts for a in self._cache[(student.name, c.id)]]


def usable(items: list[TrainingItem]) -> bool:
    return any(it.completion.strip() for it in items)


def update_and_score(
    student: Any,
    items: list[TrainingItem],
    eval_contexts: list[Context],
    seed: int,
    base: BaseAnswers,
) -> tuple[list[Answer], float | None, str | None]:
    """Adapt ``student`` to ``items`` (its adapt config: LoRA or full), answer ``eval_contexts``' questions,
    restore it. Returns ``(answers, train_loss, error)``; on failure the answers are the base student's."""
    if not usable(items):
        return base.get(student, eval_contexts), None, "edit has no usable text"
    try:
        with student.adapted(items, seed) as loss:
            return answer_questions(student, eval_contexts), loss, None
    except EditError as exc:
        error = str(exc)
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        error = "out of memory while adapting; lower adapt.batch_size or adapt.max_length"
    return base.get(student, eval_contexts), None, error


def timed_update(
    student: Any,
    source: str,
    step: int,
    items: list[TrainingItem] | None,
    contexts: list[Context],
    settings: Settings,
    base: BaseAnswers,
) -> UpdateResult:
    """One record: ``items is None`` scores the unchanged student (the ``base`` source)."""
    started = time.time()
    ids = [c.id for c in contexts]
    if items is None:
        answers, loss, error = base.get(student, contexts), None, None
    else:
        seed = update_seed(settings.run_seed, source, student.name, step, ids)
        answers, loss, error = update_and_score(student, items, contexts, seed, base)
    result = UpdateResult(
        source=source,
        student=student.name,
        step=step,
        context_ids=ids,
        answers=answers,
        train_loss=loss,
        error=error,
        seconds=time.time() - started,
        n_items=len(items or []),
    )
    settings.emit(result)
    return result
