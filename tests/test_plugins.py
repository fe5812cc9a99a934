"""Plugins named in a config: a user's reward (``module:function``), task (``module:Class``) and prompt formats
defined in YAML (core/plugins.py, docs/plugins.md). The worked example in docs/examples/my_plugins.py
is the one exercised end to end."""

from __future__ import annotations

import json
import sys

import pytest

from core.config import ConfigError, load_config

from .conftest import CACHE, CONFIGS, ROOT

EXAMPLES = ROOT / "docs" / "examples"
SQUAD = ROOT / "orchestrator" / "data" / "squad" / "edits_qwen2.5-7b_train.json"


@pytest.fixture
def plugin_path(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("my_plugins", "broken_plugin"):
        sys.modules.pop(name, None)


def load(*overrides: str):
    return load_config(CONFIGS / "smoke.yaml", [f"run.cache_dir={CACHE}", *overrides])


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "reward.name=not_installed_pkg.rewards:fn",
            "reward.name: cannot import module 'not_installed_pkg.rewards'",
        ),
        (
            "reward.name=my_plugins:no_such_fn",
            "reward.name: module 'my_plugins' has no attribute 'no_such_fn'",
        ),
        ("reward.name=my_plugins:ShortAnswerSquad", "must accept (baseline, adapted, score)"),
        ("reward.name=my_plugins:clipped logprob", "is not a plugin name"),
        ("reward.name=broken_plugin:f", "reward.name: importing 'broken_plugin' raised ZeroDivisionError"),
        (
            "task.name=my_plugins:clipped_logprob_gain",
            "task.name: 'my_plugins:clipped_logprob_gain' is a function, not a class",
        ),
        ("task.name=no_such_module:Task", "task.name: cannot import module 'no_such_module'"),
        ("task.name=collections:OrderedDict", "task.name: 'collections:OrderedDict' is not a core.task.Task"),
        (
            "task.name=core.task:Task",  # the abstract base: none of the required methods
            "does not implement ['heldout_contexts', 'qa_prompt', 'train_contexts', 'training_items']",
        ),
    ],
)
def test_a_plugin_that_cannot_load_is_a_config_error_naming_the_field(plugin_path, override, message):
    (plugin_path / "broken_plugin.py").write_text("x = 1 / 0\n")
    with pytest.raises(ConfigError) as err:
        load(override)
    assert message in str(err.value)


def test_combo_weights_may_name_a_plugin_reward(plugin_path):
    import my_plugins

    from orchestrator.rewards import REWARDS, reward_fn

    cfg = load(
        "reward.name=combo", "reward.weights={accuracy_gain: 1.0, 'my_plugins:clipped_logprob_gain': 0.5}"
    )
    assert "combo" == cfg.reward.name
    assert reward_fn("my_plugins:clipped_logprob_gain") is my_plugins.clipped_logprob_gain
    assert "my_plugins:clipped_logprob_gain" in REWARDS  # registered on first use


@pytest.mark.parametrize(
    "template, message",
    [
        ("Passage: {context.__class__}", "only {context} and {title} are allowed"),
        ("Passage: {0} {context}", "only {context} and {title} are allowed"),
        ("Passage: {context!r}", "only {context} and {title} are allowed"),
        ("Passage: {context:>10}", "only {context} and {title} are allowed"),
        ("Passage: {title}", "must contain '{context}'"),
        ("Passage: {context", "literal braces"),
    ],
)
def test_prompt_formats_from_yaml_allow_only_the_two_placeholders(template, message):
    with pytest.raises(ConfigError) as err:
        load(f"teacher.prompt_formats={{bad: {json.dumps(template)}}}", "teacher.prompt_format=bad")
    assert "teacher.prompt_formats" in str(err.value) and message in str(err.value)
    from core.prompts import PROMPT_FORMATS

    assert "bad" not in PROMPT_FORMATS


def test_a_builtin_prompt_format_cannot_be_redefined():
    with pytest.raises(ConfigError, match="built-in prompt format"):
        load("teacher.prompt_formats={implications: 'Say: {context}'}")


def test_worked_example_runs_end_to_end(plugin_path, tmp_path):
    """`teachedit run` with the example's task and reward and a YAML prompt format: the teacher is asked with
    the YAML template, students are asked with the plugin task's prompt, and every reward is the plugin's
    clipped log-prob gain of the recorded scores, averaged over the pool."""
    from orchestrator.cli import main

    rc = main([
        "run", str(CONFIGS / "smoke.yaml"), f"run.output_dir={tmp_path}", f"run.cache_dir={CACHE}",
        "run.name=plug", "task.name=my_plugins:ShortAnswerSquad", f"task.path={SQUAD}",
        "task.max_questions=2", "reward.name=my_plugins:clipped_logprob_gain", "reward.score=logprob",
        "teacher.prompt_formats={facts: \"Facts about {title}:\\n{context}\\nList them:\\n\"}",
        "teacher.prompt_format=facts", "teacher.train.max_length=4096",
    ])  # fmt: skip
    assert rc == 0
    records = [
        json.loads(x) for x in (tmp_path / "plug" / "edits" / "round_0.jsonl").read_text().splitlines()
    ]
    assert records
    for r in records:
        assert r["edit"]["prompt"].startswith("Facts about ") and "\nList them:\n" in r["edit"]["prompt"]
        assert r["edit"]["format"] == "facts"
        gains = [
            max(-1.0, min(1.0, o["adapted"]["logprob"] - o["baseline"]["logprob"]))
            for o in r["per_student"].values()
        ]
        assert r["reward"] == pytest.approx(sum(gains) / len(gains), abs=1e-9)
    saved = (tmp_path / "plug" / "config.yaml").read_text()
    assert "my_plugins:ShortAnswerSquad" in saved and "my_plugins:clipped_logprob_gain" in saved


def test_plugin_task_asks_with_its_own_prompt(plugin_path):
    from orchestrator.tasks import build_task

    cfg = load("task.name=my_plugins:ShortAnswerSquad", f"task.path={SQUAD}")
    task = build_task(cfg.task)
    c = task.heldout_contexts()[0]
    assert (
        task.qa_prompt(c.questions[0].question, c)
        == f"Q: {c.title}: {c.questions[0].question}\nShort answer:"
    )
