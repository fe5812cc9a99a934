"""What every role needs, below them all: the records that flow through the loop (:mod:`core.records`), the
config schema and its validation (:mod:`core.config`), model loading (:mod:`core.models`), the task contract
(:mod:`core.task`), the teacher's prompt formats (:mod:`core.prompts`), plugins (:mod:`core.plugins`), TRL
argument assembly (:mod:`core.trl_args`), the launcher helpers (:mod:`core.distributed`) and fault injection
(:mod:`core.faults`). Nothing here imports ``teacher``, ``student`` or ``orchestrator`` (tests/test_layers.py).
"""
