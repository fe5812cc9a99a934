"""Rewards: small pure functions, registered by name, that turn (baseline, adapted) scores into a number.

A *reward* maps one student's scores before and after an edit to a float; an *aggregate* combines the
students' rewards into the pool's reward for the edit. Both registries are open: decorate a function with
:func:`register_reward` or :func:`register_aggregate` and name it in the config. A *degenerate* edit (empty,
over-long, or rejected by the task's ``validate_edit``) is not trained on: :func:`edit_penalty` names the reason,
and :func:`assign_rewards` gives it the configured penalty and records the reason. ReST-EM and GRPO both score
through :func:`assign_rewards`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from core.config import AGGREGATE_NAMES, REWARD_NAMES, check_registry
from core.plugins import is_plugin, load_reward_plugin
from core.records import EditResult, StudentScore

# (baseline, adapted, score, **params) -> float; ``combo`` takes ``weights``.
RewardFn = Callable[..., float]
AggregateFn = Callable[[Sequence[float], Sequence[float]], float]

REWARDS: dict[str, RewardFn] = {}
AGGREGATES: dict[str, AggregateFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    def wrap(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn

    return wrap


def register_aggregate(name: str) -> Callable[[AggregateFn], AggregateFn]:
    def wrap(fn: AggregateFn) -> AggregateFn:
        AGGREGATES[name] = fn
        return fn

    return wrap


@register_reward("accuracy_gain")
def accuracy_gain(baseline: StudentScore, adapted: StudentScore, score: str = "em") -> float:
    """Score after the edit minus before (``score``: em | f1 | logprob)."""
    return adapted.get(score) - baseline.get(score)


@register_reward("logprob_gain")
def logprob_gain(baseline: StudentScore, adapted: StudentScore, score: str = "logprob") -> float:
    """Mean per-token log-probability of the gold answers after minus before: dense, needs no decoding."""
    return adapted.logprob - baseline.logprob


@register_reward("combo")
def combo(
    baseline: StudentScore,
    adapted: StudentScore,
    score: str = "em",
    weights: Mapping[str, float] | None = None,
) -> float:
    """A weighted sum of other registered rewards, e.g. ``{accuracy_gain: 1.0, logprob_gain: 0.1}``: sparse
    accuracy plus a dense log-probability term that separates edits of equal accuracy."""
    problem = _combo_problem(weights)
    if problem is not None or weights is None:
        raise ValueError(problem)
    return float(sum(w * reward_fn(n)(baseline, adapted, score) for n, w in weights.items()))


def _combo_problem(weights: Mapping[str, float] | None) -> str | None:
    from core.config import RewardConfig, check_reward_config

    return check_reward_config(RewardConfig(name="combo", weights=dict(weights or {})))


@register_aggregate("mean")
def mean(values: Sequence[float], weights: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


@register_aggregate("min")
def minimum(values: Sequence[float], weights: Sequence[float]) -> float:
    """The worst student's reward: edits must help every student."""
    return min(values) if values else 0.0


@register_aggregate("weighted")
def weighted(values: Sequence[float], weights: Sequence[float]) -> float:
    total = sum(weights)
    return sum(v * w for v, w in zip(values, weights)) / total if total else 0.0


def edit_penalty(
    text: str, max_chars: int = 0, validate: Callable[[str], str | None] | None = None
) -> str | None:
    """Why an edit is degenerate, or None if it is not: empty, longer than ``max_chars`` (0: no limit), or
    rejected by ``validate`` (a task's ``validate_edit(text) -> reason | None``, for tasks that need structure).
    A validator that raises on odd model text is reported as a rejection, not propagated."""
    if not text.strip():
        return "empty edit"
    if max_chars > 0 and len(text) > max_chars:
        return f"over-long edit: {len(text)} characters > reward.max_edit_chars={max_chars}"
    if validate is not None:
        try:
            reason = validate(text)
        except Exception as exc:  # the text is model output; a validator's crash is a verdict on it
            reason = f"validate_edit raised {type(exc).__name__}: {exc}"
        if reason:
            return f"unparsable edit: {reason}"
    return None


def assign_rewards(
    result: EditResult,
    reward: str,
    score: str,
    aggregate: str,
    weights: dict[str, float],
    reward_weights: Mapping[str, float] | None = None,
    penalty: float = 0.0,
) -> None:
    """Fill ``result``'s per-student rewards and the pool reward. A student the edit could not be applied to
    (``adapted is None``, reason in ``error``) gets reward 0. A degenerate edit (``result.penalty`` holds the
    reason) gets ``penalty`` for every student and the pool, and the reason in each student's ``error``.
    ``reward_weights`` are the weights of ``combo``."""
    if result.penalty is not None:
        for outcome in result.per_student.values():
            outcome.reward = float(penalty)
            outcome.error = outcome.error or result.penalty
        result.reward = float(penalty)
        return
    fn, agg = reward_fn(reward), AGGREGATES[aggregate]
    params = {"weights": reward_weights} if reward_weights else {}
    values, ws = [], []
    for name, outcome in result.per_student.items():
        outcome.reward = (
            0.0 if outcome.adapted is None else float(fn(outcome.baseline, outcome.adapted, score, **params))
        )
        values.append(outcome.reward)
        ws.append(weights.get(name, 1.0))
    result.reward = float(agg(values, ws))


def assign_configured_rewards(result: EditResult, cfg: Any, student_weights: dict[str, float]) -> None:
    """:func:`assign_rewards` with the run's ``reward`` section (an :class:`core.config.RewardConfig`)."""
    assign_rewards(
        result,
        cfg.name,
        cfg.score,
        cfg.aggregate,
        student_weights,
        reward_weights=dict(cfg.weights) if cfg.weights else None,
        penalty=cfg.penalty,
    )


def reward_fn(name: str) -> RewardFn:
    """The reward registered as ``name``; a plugin (``module:function``) is loaded, checked and registered
    on first use (:mod:`core.plugins`)."""
    if name not in REWARDS and is_plugin(name):
        REWARDS[name] = load_reward_plugin(name)
    if name not in REWARDS:
        raise KeyError(
            f"unknown reward {name!r}; choose from {sorted(REWARDS)} or a plugin (module:function)"
        )
    return REWARDS[name]


check_registry(REWARDS, REWARD_NAMES, "orchestrator.rewards.REWARDS")
check_registry(AGGREGATES, AGGREGATE_NAMES, "orchestrator.rewards.AGGREGATES")
