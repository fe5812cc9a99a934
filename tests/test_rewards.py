from __future__ import annotations

import pytest

from orchestrator.records import Edit, EditResult, StudentOutcome, StudentScore
from orchestrator.rewards import AGGREGATES, REWARDS, assign_rewards


def _score(em, f1=0.0, lp=-2.0):
    return StudentScore(em=em, f1=f1, logprob=lp, n_questions=4)


def _result(pairs):
    r = EditResult(edit=Edit("c0", "notes", 0, "text", "round_0"))
    for name, (base, adapted) in pairs.items():
        r.per_student[name] = StudentOutcome(base, adapted)
    return r


def test_accuracy_gain_is_the_score_delta():
    f = REWARDS["accuracy_gain"]
    assert f(_score(0.25, 0.5), _score(0.75, 0.8), "em") == pytest.approx(0.5)
    assert f(_score(0.25, 0.5), _score(0.75, 0.8), "f1") == pytest.approx(0.3)
    assert f(_score(0.25, lp=-3.0), _score(0.25, lp=-1.5), "logprob") == pytest.approx(1.5)
    assert f(_score(0.5), _score(0.25), "em") == pytest.approx(-0.25)


def test_logprob_gain():
    assert REWARDS["logprob_gain"](_score(0, lp=-4.0), _score(0, lp=-1.0), "logprob") == pytest.approx(3.0)


def test_aggregates():
    assert AGGREGATES["mean"]([0.2, 0.6], [1, 1]) == pytest.approx(0.4)
    assert AGGREGATES["min"]([0.2, 0.6], [1, 1]) == pytest.approx(0.2)
    assert AGGREGATES["weighted"]([0.2, 0.6], [3, 1]) == pytest.approx(0.3)


def test_assign_rewards_pool_mean_and_failed_student_gets_zero():
    r = _result({"a": (_score(0.0), _score(1.0)), "b": (_score(0.5), None)})
    r.per_student["b"].error = "edit has no usable text"
    assign_rewards(r, "accuracy_gain", "em", "mean", {"a": 1.0, "b": 1.0})
    assert r.per_student["a"].reward == pytest.approx(1.0)
    assert r.per_student["b"].reward == 0.0
    assert r.reward == pytest.approx(0.5)


def test_weighted_pool_reward_uses_student_weights():
    r = _result({"a": (_score(0.0), _score(1.0)), "b": (_score(0.0), _score(0.0))})
    assign_rewards(r, "accuracy_gain", "em", "weighted", {"a": 1.0, "b": 3.0})
    assert r.reward == pytest.approx(0.25)
