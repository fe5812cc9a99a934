"""SEAL's knowledge-incorporation experiments as protocols (``teachedit eval``).

- ``single``: one update per edit per passage, no-context QA on that passage (SEAL's main table);
- ``cpt``: one update on the training data of n passages together, QA on all their questions;
- ``continual``: passages' edits applied one after another and kept; a forgetting matrix per student.

Each protocol is a function ``(student, source, contexts, settings, base_answers) -> [UpdateResult]``
registered in :data:`PROTOCOLS`; :func:`run_eval` runs one over every student and source.
"""

from orchestrator.protocols.common import Answer, BaseAnswers, Settings, UpdateResult
from orchestrator.protocols.data import Source, load_eval_data
from orchestrator.protocols.evaluate import (
    PROTOCOLS,
    EvalOutcome,
    EvalPlan,
    EvalRequest,
    create_eval_dir,
    discard_if_empty,
    plan_eval,
    run_eval,
)
from orchestrator.protocols.table import Row, markdown_table, summarize

__all__ = [
    "PROTOCOLS",
    "Answer",
    "BaseAnswers",
    "EvalOutcome",
    "EvalPlan",
    "EvalRequest",
    "Row",
    "Settings",
    "Source",
    "UpdateResult",
    "create_eval_dir",
    "discard_if_empty",
    "load_eval_data",
    "markdown_table",
    "plan_eval",
    "run_eval",
    "summarize",
]
