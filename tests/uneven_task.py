"""A plugin task for the 2-rank GRPO test: the synthetic task, except that every edit of its first training
passage has no usable text, so the rank whose share holds that passage's completions adapts fewer edits than
the other (the students record the reason and a zero reward). Named in a config as
``task.name: tests.uneven_task:FirstPassageUnusable``."""

from __future__ import annotations

from typing import Any

from core.records import Context
from core.task import TrainingItem
from orchestrator.tasks.synthetic import SyntheticTask


class FirstPassageUnusable(SyntheticTask):
    name = "synthetic"  # the same tiny models as the built-in task

    def __init__(self, cfg: Any):
        super().__init__(cfg.num_train_contexts, cfg.num_heldout_contexts, cfg.seed, cfg.max_questions)
        self.unusable = self.train_contexts()[0].id

    def training_items(self, edit_text: str, context: Context, include_context: bool) -> list[TrainingItem]:
        if context.id == self.unusable:
            return []
        return super().training_items(edit_text, context, include_context)
