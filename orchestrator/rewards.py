"""Rewards: small pure functions, registered by name, that turn (baseline, adapted) scores into a number.

A *reward* maps one student's scores before and after an edit to a float; an *aggregate* combines the
students' rewards into the pool's reward for the edit. Both registries are open: decorate a function with
:func:`register_reward` or :func:`register_aggregate` and name it in the config.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from orchestrator.records import EditResult, StudentScore

RewardFn = Callable[[StudentScore, StudentScore, str], float]
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


def assign_rewards(
    result: EditResult, reward: str, score: str, aggregate: str, weights: dict[str, float]
) -> None:
    """Fill ``result``'s per-student rewards and the pool reward. A student the edit could not be applied to
    (``adapted is None``, reason in ``error``) gets reward 0."""
    fn, agg = REWARDS[reward], AGGREGATES[aggregate]
    values, ws = [], []
    for name, outcome in result.per_student.items():
        outcome.reward = (
            0.0 if outcome.adapted is None else float(fn(outcome.baseline, outcome.adapted, score))
        )
        values.append(outcome.reward)
        ws.append(weights.get(name, 1.0))
    result.reward = float(agg(values, ws))
