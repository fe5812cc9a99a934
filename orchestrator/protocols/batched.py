"""A protocol's independent updates, several adapted and scored together (LoRA students).

Each update is one adapter of :class:`student.batched.MultiLoRA`: up to ``student.edit_batch_size`` adapters
are trained together (:func:`student.batched.train_adapters`) and answer their own passages' questions in
shared routed passes (:func:`student.batched.adapter_answers`). The records equal :func:`timed_update`'s one
at a time (same items, seeds, ``eval_times`` repeats and averaging, failures, order of ``settings.emit``;
tested), except ``seconds``. Students that go one at a time (``edit_batch_size`` 1, full fine-tuning,
``adapt.lora_dropout`` > 0) and the ``base`` source take :func:`timed_update` itself.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from core.records import Context
from core.task import TrainingItem
from orchestrator.protocols.common import (
    Answer,
    BaseAnswers,
    Settings,
    UpdateResult,
    average_answers,
    make_answers,
    timed_update,
    update_items,
)
from orchestrator.protocols.data import Source
from student.lifecycle import OOM_BATCH, free_memory, repeat_seed, update_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Update:
    """One update of a protocol: the texts it trains on (``None``: none, the ``base`` source) and the
    passages whose questions score it."""

    step: int
    pairs: list[tuple[str, Context]] | None
    contexts: list[Context]


def run_updates(
    student: Any, source: Source, updates: list[Update], settings: Settings, base: BaseAnswers, bar: tqdm
) -> list[UpdateResult]:
    """:func:`timed_update` for each update in order, several at a time for a student with
    ``edit_batch_size`` > 1. ``bar`` advances by one per update."""
    n = student.edit_batch_size
    out: list[UpdateResult] = []
    if n <= 1 or source.kind == "base":
        for u in updates:
            out.append(timed_update(student, source, u.step, u.pairs, u.contexts, settings, base))
            bar.update(1)
        return out
    per_chunk = max(1, n // student.cfg.adapt.eval_times)  # updates whose eval_times adapters fit one batch
    for i in range(0, len(updates), per_chunk):
        for r in _chunk(student, source, updates[i : i + per_chunk], settings, base):
            out.append(r)
            bar.update(1)
    return out


def _chunk(
    student: Any, source: Source, chunk: list[Update], settings: Settings, base: BaseAnswers
) -> list[UpdateResult]:
    started = time.time()
    times = student.cfg.adapt.eval_times
    prepared = [update_items(student, source.kind, u.pairs or [], settings.include_context) for u in chunk]
    live = [j for j, (_, _, error) in enumerate(prepared) if error is None]
    seeds = {j: _seed(student, source, chunk[j], settings) for j in live}
    # one adapter per (update j, repeat r), with the seeds adapt_and_score uses
    adapters = [(j, repeat_seed(seeds[j], r)) for j in live for r in range(times)]
    try:
        trained = _train_and_answer(student, adapters, prepared, chunk)
    except torch.OutOfMemoryError:
        free_memory()
        log.warning(OOM_BATCH, len(chunk))
        return [timed_update(student, source, u.step, u.pairs, u.contexts, settings, base) for u in chunk]
    results = []
    for j, u in enumerate(chunk):
        items, note, error = prepared[j]
        # (answers, loss, error) of each repeat
        runs = [trained[a] for a, (k, _) in enumerate(adapters) if k == j]
        failed = next((e for _, _, e in runs if e is not None), None)
        error = error or failed
        answers = base.get(student, u.contexts) if error else average_answers([a for a, _, _ in runs])
        losses = [loss for _, loss, _ in runs if loss is not None]
        results.append(
            UpdateResult(
                source=source.name,
                student=student.name,
                step=u.step,
                context_ids=[c.id for c in u.contexts],
                answers=answers,
                train_loss=None if error else sum(losses) / len(losses),
                error=error,
                n_items=len(items),
                note=note,
            )
        )
    seconds = (time.time() - started) / len(chunk)
    for r in results:
        r.seconds = seconds  # the updates were made together: each gets an equal share of the chunk's time
        settings.emit(r)
    return results


def _seed(student: Any, source: Source, u: Update, settings: Settings) -> int:
    return update_seed(settings.run_seed, source.name, student.name, u.step, [c.id for c in u.contexts])


def _train_and_answer(
    student: Any,
    adapters: list[tuple[int, int]],
    prepared: list[tuple[list[TrainingItem], str | None, str | None]],
    chunk: list[Update],
) -> list[tuple[list[Answer], float | None, str | None]]:
    """Per adapter ``(update j, seed)``: its answers on update j's passages, last-epoch loss, error. Trained
    and scored together, at most ``edit_batch_size`` adapters at a time."""
    from student.batched import MultiLoRA, adapter_answers, train_adapters

    out: list[tuple[list[Answer], float | None, str | None]] = []
    n = student.edit_batch_size
    for i in range(0, len(adapters), n):
        part = adapters[i : i + n]
        with MultiLoRA(student, [seed for _, seed in part]) as ml:
            trained = train_adapters(ml, [prepared[j][0] for j, _ in part])
            ok = {g: chunk[j].contexts for g, (j, _) in enumerate(part) if trained[g][1] is None}
            answers = adapter_answers(ml, ok)
        for g, (j, _) in enumerate(part):
            loss, error = trained[g]
            got = make_answers(chunk[j].contexts, *answers[g]) if g in answers else []
            out.append((got, loss, error))
    return out
