"""Continual edits (SEAL's forgetting study): the training data of passages 1..n is applied one passage after
another and kept (a LoRA is merged into the weights after each step, or the weights are fine-tuned in place);
after step i every passage j <= i is evaluated. The result is a forgetting matrix per (source, student):
``matrix[i][j]`` = score on passage j after step i (None above the diagonal). The student is restored
bit-exactly afterwards. Steps go one at a time: each trains on the student the previous steps left, so
they cannot be adapted together as the single and cpt protocols' updates are."""

from __future__ import annotations

import time
from pathlib import Path
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
    answer_questions,
    update_items,
)
from orchestrator.protocols.data import Source
from student.lifecycle import EditError, free_memory, merge_update, update_seed

METRICS = {"em": "em", "f1": "f1", "gold_logprob": "logprob"}  # matrix name -> Answer attr


def _step(student: Any, items: list[TrainingItem], seed: int) -> tuple[float | None, str | None]:
    try:
        return merge_update(student, items, seed), None
    except EditError as exc:
        return None, str(exc)
    except torch.OutOfMemoryError:
        free_memory()
        return None, "out of memory while adapting; lower adapt.batch_size or adapt.max_length"


def run_continual(
    student: Any, source: Source, contexts: list[Context], settings: Settings, base: BaseAnswers
) -> list[UpdateResult]:
    """Steps over the first ``settings.n`` passages (all if 0), each with its first ``settings.k`` edits (1 if
    0). Only the last step counts toward the eval table: the student after every update, on every passage."""
    steps = contexts[: settings.n] if settings.n > 0 else list(contexts)
    if source.kind == "base":
        r = UpdateResult(source.name, student.name, 0, [], base.get(student, steps))
        settings.emit(r)
        return [r]
    k = settings.k if settings.k > 0 else 1
    snapshot = {name: t.detach().to("cpu", copy=True) for name, t in student.model.state_dict().items()}
    results: list[UpdateResult] = []
    try:
        bar = tqdm(steps, desc=f"continual {source.name} → {student.name}", disable=not settings.progress)
        for i, c in enumerate(bar):
            started = time.time()
            pairs = [(t, c) for t in source.texts(c, k)]
            items, note, error = update_items(student, source.kind, pairs, settings.include_context)
            loss = None
            if error is None:  # a failed step leaves the student as it was
                seed = update_seed(settings.run_seed, source.name, student.name, i, [c.id])
                loss, error = _step(student, items, seed)
            r = UpdateResult(
                source=source.name,
                student=student.name,
                step=i,
                context_ids=[c.id],
                answers=answer_questions(student, steps[: i + 1]),
                train_loss=loss,
                error=error,
                seconds=time.time() - started,
                counted=i == len(steps) - 1,
                n_items=len(items),
                note=note,
            )
            settings.emit(r)
            results.append(r)
    finally:
        student.model.load_state_dict(snapshot)  # copies of the original tensors: bit-exact
        student.model.eval()
    return results


def _mean(answers: list[Answer], attr: str) -> float:
    return sum(getattr(a, attr) for a in answers) / len(answers)


def forgetting_matrix(
    results: list[UpdateResult], passages: list[str]
) -> dict[str, list[list[float | None]]]:
    """``{metric: matrix}`` with ``matrix[i][j]`` the mean score on passage j after step i, None if j > i."""
    steps = sorted((r for r in results if r.context_ids), key=lambda r: r.step)
    out: dict[str, list[list[float | None]]] = {}
    for name, attr in METRICS.items():
        rows = []
        for r in steps:
            by = {pid: [a for a in r.answers if a.context_id == pid] for pid in passages}
            rows.append([_mean(by[pid], attr) if by[pid] else None for pid in passages])
        out[name] = rows
    return out


def baseline_scores(answers: list[Answer], passages: list[str]) -> dict[str, list[float | None]]:
    out = {}
    for name, attr in METRICS.items():
        by = {pid: [a for a in answers if a.context_id == pid] for pid in passages}
        out[name] = [_mean(by[pid], attr) if by[pid] else None for pid in passages]
    return out


def plot_forgetting(entries: list[dict[str, Any]], metric: str, path: Path) -> None:
    """One heatmap per (student row, source column): score on each passage (x) after each step (y), as a
    change from the unchanged student's score when the base was evaluated (gain and forgetting read
    directly), else raw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    students = list(dict.fromkeys(e["student"] for e in entries))
    sources = list(dict.fromkeys(e["source"] for e in entries))
    fig, axes = plt.subplots(
        len(students), len(sources), figsize=(3.2 * len(sources), 2.9 * len(students)), dpi=110, squeeze=False
    )
    relative = all("baseline" in e for e in entries)
    for e in entries:
        ax = axes[students.index(e["student"])][sources.index(e["source"])]
        m = np.array([[np.nan if v is None else v for v in row] for row in e["matrix"][metric]], dtype=float)
        if relative:
            m = (
                m
                - np.array([np.nan if v is None else v for v in e["baseline"][metric]], dtype=float)[None, :]
            )
        span = float(np.nanmax(np.abs(m))) if relative and np.isfinite(m).any() else None
        im = ax.imshow(
            np.ma.masked_invalid(m),
            cmap="RdBu" if relative else "viridis",
            vmin=-span if span else None,
            vmax=span if span else None,
            aspect="auto",
        )
        ax.set_title(f"{e['source']} → {e['student']}", fontsize=8)
        ax.set_xlabel("passage evaluated", fontsize=7)
        ax.set_ylabel("after step", fontsize=7)
        ax.tick_params(labelsize=6)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
    what = f"{metric} change from the base student" if relative else metric
    fig.suptitle(f"continual edits: {what}, per passage after each step", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
