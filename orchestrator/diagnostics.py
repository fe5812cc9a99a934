"""Diagnostics that explain a run: how much each edit style is worth to each student."""

from __future__ import annotations

import logging
from typing import Any

from core.records import Edit, EditResult
from core.stats import mean_sem
from core.task import overrides
from orchestrator.rewards import assign_configured_rewards

log = logging.getLogger(__name__)


def style_values(cfg: Any, task: Any, pool: Any, progress: bool = False) -> dict[str, dict[str, Any]]:
    """Score the task's reference edits of every style (and the raw passage) on the held-out contexts.

    Returns ``{style: {"reward": (mean, sem), "<student>": mean reward}}``. Needs a task with
    ``reference_edits(context)`` (the synthetic task); these edits are a yardstick, never a training signal."""
    if not overrides(task, "reference_edits"):
        raise ValueError(
            f"task {task.name!r} has no reference edits; style values exist for the synthetic task"
        )
    contexts = task.heldout_contexts()
    by_id = {c.id: c for c in contexts}
    edits: dict[str, list[Edit]] = {}
    for i, c in enumerate(contexts):
        for style, text in task.reference_edits(c, seed=i).items():
            edits.setdefault(style, []).append(Edit(c.id, style, 0, text, teacher=f"reference:{style}"))
    weights = {s.name: s.weight for s in cfg.students}
    pool.baselines(contexts, progress=progress)
    out: dict[str, dict[str, Any]] = {}
    for style, es in edits.items():
        results: list[EditResult] = pool.evaluate(
            es, by_id, cfg.run.seed, progress=progress, desc=f"style {style}"
        )
        for r in results:
            assign_configured_rewards(r, cfg.reward, weights)  # combo weights and penalty, as in a run
        row: dict[str, Any] = {"reward": mean_sem([r.reward for r in results])}
        for name in pool.names:
            row[name] = sum(r.per_student[name].reward for r in results) / len(results)
        out[style] = row
        log.info("style %-10s reward %+.3f ± %.3f", style, *row["reward"])
    return out
