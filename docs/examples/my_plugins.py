"""A worked example of teachedit plugins (docs/plugins.md): a reward and a task that live in the user's own
module, named in a config as ``my_plugins:clipped_logprob_gain`` and ``my_plugins:ShortAnswerSquad``.

Put the folder that holds this file on ``PYTHONPATH`` (or install it as a package) and run, e.g.:

    PYTHONPATH=docs/examples teachedit run configs/smoke.yaml task.name=my_plugins:ShortAnswerSquad \\
        reward.name=my_plugins:clipped_logprob_gain reward.score=logprob
"""

from __future__ import annotations

from typing import Any

from core.records import Context, StudentScore
from orchestrator.tasks.squad import SquadTask


def clipped_logprob_gain(baseline: StudentScore, adapted: StudentScore, score: str = "logprob") -> float:
    """The gold-answer log-probability gain clipped to [-1, 1] nats per token: one passage whose answer
    probability jumps cannot dominate a round's ranking of edits. Same signature as the built-in rewards
    (orchestrator/rewards.py); ``score`` is the config's ``reward.score`` and is unused here."""
    return max(-1.0, min(1.0, adapted.logprob - baseline.logprob))


class ShortAnswerSquad(SquadTask):
    """SQuAD (any SEAL-format file, ``task.path``) asked as a terse ``Q: ... Short answer:`` prompt.

    A task plugin is constructed with the run's TaskConfig (``task.*``); everything else it inherits from
    the built-in task (contexts, training sequences, the chat students' messages)."""

    name = "short-answer-squad"

    def __init__(self, cfg: Any):
        super().__init__(
            cfg.path,
            cfg.num_train_contexts,
            cfg.num_heldout_contexts,
            cfg.seed,
            cfg.max_questions,
            cfg.protocol,
        )

    def qa_prompt(self, question: str, context: Context | None = None) -> str:
        title = f"{context.title}: " if context is not None and context.title else ""
        return f"Q: {title}{question}\nShort answer:"
