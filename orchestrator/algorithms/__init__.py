"""Outer-loop algorithms, registered by name."""

from __future__ import annotations

from collections.abc import Callable

from core.config import ALGORITHM_NAMES, check_registry
from orchestrator.algorithms.base import Algorithm, RoundReport, RunContext
from orchestrator.algorithms.grpo import GRPO
from orchestrator.algorithms.rest_em import RestEM

ALGORITHMS: dict[str, Callable[[], Algorithm]] = {"rest_em": RestEM, "grpo": GRPO}
check_registry(ALGORITHMS, ALGORITHM_NAMES, "orchestrator.algorithms.ALGORITHMS")

__all__ = ["ALGORITHMS", "Algorithm", "RoundReport", "RunContext"]
