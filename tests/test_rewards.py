from __future__ import annotations

import re

import pytest

from core.records import Edit, EditResult, StudentOutcome, StudentScore
from orchestrator.rewards import AGGREGATES, REWARDS, assign_rewards, edit_penalty


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


def test_combo_is_the_weighted_sum_of_registered_rewards():
    base, adapted = _score(0.25, lp=-3.0), _score(0.75, lp=-1.0)
    weights = {"accuracy_gain": 1.0, "logprob_gain": 0.1}
    assert REWARDS["combo"](base, adapted, "em", weights=weights) == pytest.approx(0.5 + 0.1 * 2.0)
    assert REWARDS["combo"](base, adapted, "em", weights={"accuracy_gain": -2.0}) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="reward.weights"):
        REWARDS["combo"](base, adapted, "em", weights={})
    with pytest.raises(ValueError, match="unknown rewards"):
        REWARDS["combo"](base, adapted, "em", weights={"combo": 1.0})


def test_assign_rewards_combo_with_per_student_weights():
    r = _result({"a": (_score(0.0, lp=-2.0), _score(1.0, lp=-1.0)), "b": (_score(0.5), _score(0.5))})
    weights = {"accuracy_gain": 1.0, "logprob_gain": 0.5}
    assign_rewards(r, "combo", "em", "weighted", {"a": 3.0, "b": 1.0}, reward_weights=weights)
    assert r.per_student["a"].reward == pytest.approx(1.0 + 0.5 * 1.0)
    assert r.per_student["b"].reward == pytest.approx(0.0)
    assert r.reward == pytest.approx(3 * 1.5 / 4)


def test_a_penalized_edit_gets_the_penalty_and_its_reason():
    r = _result({"a": (_score(0.0), None), "b": (_score(0.5), None)})
    r.penalty = "empty edit"
    assign_rewards(r, "accuracy_gain", "em", "mean", {"a": 1.0, "b": 1.0}, penalty=-0.5)
    assert r.reward == -0.5
    assert all(o.reward == -0.5 and o.error == "empty edit" for o in r.per_student.values())


def test_edit_penalty_names_empty_overlong_and_unparsable_edits():
    assert edit_penalty("Q: a? A: b") is None
    assert edit_penalty("  \n ") == "empty edit"
    assert edit_penalty("x" * 101, max_chars=100).startswith("over-long edit: 101 characters")
    assert edit_penalty("x" * 100, max_chars=100) is None

    def grid_only(text):
        return None if text.startswith("[[") else "no grid found"

    assert edit_penalty("[[1, 2]]", validate=grid_only) is None
    assert edit_penalty("a grid", validate=grid_only) == "unparsable edit: no grid found"

    def crashes(text):
        raise IndexError("list index out of range")

    assert edit_penalty("text", validate=crashes) == (
        "unparsable edit: validate_edit raised IndexError: list index out of range"
    )


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["reward.name=combo"], "needs reward.weights"),
        (["reward.name=combo", "reward.weights.nope=1.0"], "unknown rewards ['nope']"),
        (["reward.weights.logprob_gain=0.1"], "only by reward.name=combo"),
        (["reward.max_edit_chars=-1"], "max_edit_chars"),
    ],
)
def test_reward_config_errors_name_the_fix(overrides, needle):
    from core.config import ConfigError, load_config

    from .conftest import CONFIGS

    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(CONFIGS / "smoke.yaml", overrides)


def test_combo_config_loads():
    from core.config import load_config

    from .conftest import CONFIGS

    cfg = load_config(
        CONFIGS / "smoke.yaml",
        ["reward.name=combo", "reward.weights.accuracy_gain=1.0", "reward.weights.logprob_gain=0.1"],
    )
    assert cfg.reward.weights == {"accuracy_gain": 1.0, "logprob_gain": 0.1}


def test_style_values_use_the_configured_combo_reward(smoke_cfg, task, make_student):
    """`teachedit styles` with reward.name=combo: every style's reward is the combo of its students' gains
    (it used to call the reward without the combo's weights and fail)."""
    import copy

    from orchestrator.diagnostics import style_values
    from orchestrator.rewards import REWARDS
    from student.pool import StudentPool

    cfg = copy.deepcopy(smoke_cfg)
    cfg.reward.name, cfg.reward.weights = "combo", {"accuracy_gain": 1.0, "logprob_gain": 0.5}
    pool = StudentPool([make_student("llama-t", epochs=1)])
    captured = []
    real_evaluate = pool.evaluate

    def evaluate(*a, **k):
        results = real_evaluate(*a, **k)
        captured.extend(results)
        return results

    pool.evaluate = evaluate
    values = style_values(cfg, task, pool)
    assert set(values) >= {"qa", "passage"}
    for r in captured:
        o = r.per_student["llama-t"]
        want = REWARDS["accuracy_gain"](o.baseline, o.adapted, cfg.reward.score) + 0.5 * REWARDS[
            "logprob_gain"
        ](o.baseline, o.adapted, cfg.reward.score)
        assert o.reward == pytest.approx(want)
    assert any(r.per_student["llama-t"].reward != 0 for r in captured)
