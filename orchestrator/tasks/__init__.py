"""Task registry: name → constructor taking the TaskConfig."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.config import TASK_NAMES, check_registry
from core.plugins import is_plugin, load_task_plugin
from core.task import Task, TrainingItem
from orchestrator.tasks.arc import ArcFewShotTask
from orchestrator.tasks.squad import SquadTask
from orchestrator.tasks.synthetic import SyntheticTask

TASKS: dict[str, Callable[..., Any]] = {
    "synthetic": lambda c: SyntheticTask(
        c.num_train_contexts, c.num_heldout_contexts, c.seed, c.max_questions
    ),
    "squad": lambda c: SquadTask(
        c.path,
        c.num_train_contexts,
        c.num_heldout_contexts,
        c.seed,
        c.max_questions,
        c.protocol,
        dataset=c.dataset,
        dataset_config=c.dataset_config,
        split=c.split,
        columns=dict(c.columns),
    ),
    "arc": lambda c: ArcFewShotTask(c.arc, c.num_train_contexts, c.num_heldout_contexts),
}


check_registry(TASKS, TASK_NAMES, "orchestrator.tasks.TASKS")


def build_task(cfg: Any) -> Task:
    """Build the task named by ``cfg.name`` (a :class:`core.config.TaskConfig`); a plugin task
    (``module:Class``) is loaded, checked and registered on first use (:mod:`core.plugins`)."""
    if cfg.name not in TASKS and is_plugin(cfg.name):
        TASKS[cfg.name] = load_task_plugin(cfg.name)
    if cfg.name not in TASKS:
        raise ValueError(f"unknown task {cfg.name!r}; choose from {sorted(TASKS)}")
    return TASKS[cfg.name](cfg)


__all__ = ["TASKS", "Task", "TrainingItem", "build_task"]
