"""What every protocol shares: per-question answers, one update's record, and "update, score, restore"."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from core.records import Context, json_safe
from core.task import TrainingItem
from orchestrator.protocols.data import Source
from student.lifecycle import OOM_ADAPT, EditError, free_memory, repeat_seed, update_seed
from student.scoring import exact_match, gold_logprobs, greedy_answers, token_f1


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
    note: str | None = None  # what was cut or skipped to fit the inner loop (see student.sequences.fit_items)

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


def answer_questions(student: Any, contexts: list[Context]) -> list[Answer]:
    """Greedy no-context answers (EM, F1) and gold log-probabilities for every question of ``contexts``,
    batched across passages."""
    qs = [(q, c) for c in contexts for q in c.questions]
    if not qs:
        return []
    prompts = [student.qa_prompt(q.question, c) for q, c in qs]
    golds = [q.answer for q, _ in qs]
    bs, special = student.cfg.eval_batch_size, not student.chat
    preds = greedy_answers(student.model, student.tok, prompts, student.cfg.max_new_tokens, bs, special)
    lps = gold_logprobs(student.model, student.tok, prompts, golds, bs, special)
    return make_answers(contexts, preds, lps)


def make_answers(contexts: list[Context], preds: list[str], lps: list[float]) -> list[Answer]:
    """The :class:`Answer` of every question of ``contexts`` (passage by passage, question by question) from
    its greedy prediction and gold log-prob, in that order."""
    qs = [(c.id, i, q) for c in contexts for i, q in enumerate(c.questions)]
    return [
        Answer(cid, i, q.question, q.answer, p, exact_match(p, q.golds), token_f1(p, q.golds), lp)
        for (cid, i, q), p, lp in zip(qs, preds, lps, strict=True)
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


def edit_items(
    student: Any, kind: str, text: str, context: Context, include_context: bool
) -> tuple[list[TrainingItem], str | None, str | None]:
    """One text's training sequences for ``student``, prepared as the loop prepares an edit
    (:meth:`student.student.Student.prepare`). Returns ``(items, note, error)``; no items means unusable."""
    items, _, error, note = student.prepare(
        text, context, passage=kind == "passage", include_context=include_context
    )
    return items, note, error


def update_items(
    student: Any, kind: str, pairs: list[tuple[str, Context]], include_context: bool
) -> tuple[list[TrainingItem], str | None, str | None]:
    """The union of several texts' sequences (one update on the edits of several passages). Unusable texts
    are skipped and noted; the update fails only when none is usable."""
    items: list[TrainingItem] = []
    notes, errors = [], []
    for text, context in pairs:
        its, note, error = edit_items(student, kind, text, context, include_context)
        items += its
        notes += [note] if note else []
        errors += [error] if error else []
    if not items:
        return [], None, errors[0] if errors else "no training data for this update"
    if errors:
        notes.append(f"skipped {len(errors)} of {len(pairs)} unusable texts ({errors[0]})")
    return items, "; ".join(notes) or None, None


def adapt_and_score(
    student: Any, items: list[TrainingItem], eval_contexts: list[Context], seed: int, base: BaseAnswers
) -> tuple[list[Answer], float | None, str | None]:
    """Adapt ``student`` to ``items`` (its adapt config: LoRA or full), answer ``eval_contexts``' questions,
    restore it. Returns ``(answers, train_loss, error)``; on failure the answers are the base student's.

    With ``adapt.eval_times`` = t > 1 (SEAL's ``eval_times``) the update is made t times from independent
    seeds and each question's EM, F1 and log-prob are averaged over the t updates (the prediction shown is the
    first update's); the loss is the mean of the t final losses."""
    times = student.cfg.adapt.eval_times
    try:
        runs, losses = [], []
        for r in range(times):
            seed_r = repeat_seed(seed, r)
            with student.adapted(items, seed_r) as loss:
                runs.append(answer_questions(student, eval_contexts))
                losses.append(loss)
        return average_answers(runs), sum(losses) / len(losses), None
    except EditError as exc:
        error = str(exc)
    except torch.OutOfMemoryError:
        free_memory()
        error = OOM_ADAPT
    return base.get(student, eval_contexts), None, error


def average_answers(runs: list[list[Answer]]) -> list[Answer]:
    """Per question, the mean EM, F1 and log-prob over several updates' answers (same questions, same
    order); the first update's prediction text."""
    if len(runs) == 1:
        return runs[0]
    n = len(runs)
    return [
        dataclasses.replace(
            first,
            em=sum(r[j].em for r in runs) / n,
            f1=sum(r[j].f1 for r in runs) / n,
            logprob=sum(r[j].logprob for r in runs) / n,
        )
        for j, first in enumerate(runs[0])
    ]


def timed_update(
    student: Any,
    source: Source,
    step: int,
    pairs: list[tuple[str, Context]] | None,
    contexts: list[Context],
    settings: Settings,
    base: BaseAnswers,
) -> UpdateResult:
    """One record: one update on the texts of ``pairs`` (``None``: the unchanged student, the ``base``
    source), scored on ``contexts``. A failed update is scored as the unchanged student, with its reason."""
    started = time.time()
    ids = [c.id for c in contexts]
    items, note, error, loss = [], None, None, None
    if pairs is None:
        answers = base.get(student, contexts)
    else:
        items, note, error = update_items(student, source.kind, pairs, settings.include_context)
        if error is not None:
            answers = base.get(student, contexts)
        else:
            seed = update_seed(settings.run_seed, source.name, student.name, step, ids)
            answers, loss, error = adapt_and_score(student, items, contexts, seed, base)
    result = UpdateResult(
        source=source.name,
        student=student.name,
        step=step,
        context_ids=ids,
        answers=answers,
        train_loss=loss,
        error=error,
        seconds=time.time() - started,
        n_items=len(items),
        note=note,
    )
    settings.emit(result)
    return result
