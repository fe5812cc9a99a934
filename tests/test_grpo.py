"""GRPO through TRL's GRPOTrainer on the smoke config; degenerate edits in the shared scoring path."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from core.config import load_config

from .conftest import CACHE, CONFIGS

GRPO_SMOKE = [
    f"run.cache_dir={CACHE}",
    "algorithm.name=grpo",
    "algorithm.rounds=1",
    "algorithm.grpo.steps_per_round=2",
    "algorithm.grpo.prompts_per_step=2",
    "algorithm.grpo.num_generations=2",
    "algorithm.grpo.learning_rate=1e-3",
    "algorithm.grpo.max_edit_tokens=24",
    "teacher.generation.max_new_tokens=24",
    "task.num_heldout_contexts=1",
    # Dense: the smoke students' exact match barely moves, so accuracy rewards would all be 0 (no advantage).
    "reward.name=logprob_gain",
]


def _context(tmp_path, overrides):
    from orchestrator.algorithms import RunContext
    from orchestrator.models import build_pool, build_teacher
    from orchestrator.rundir import RunDir
    from orchestrator.tasks import build_task

    cfg = load_config(CONFIGS / "smoke.yaml", overrides)
    task = build_task(cfg.task)
    teacher, path = build_teacher(cfg, task, torch.device("cpu"))
    rundir = RunDir.create(tmp_path / "run")
    return RunContext(cfg, task, teacher, build_pool(cfg, task, torch.device("cpu")), rundir, False, path)


# full + KL: TRL loads the reference from the round-start teacher; LoRA: the reference is the adapter-free model.
@pytest.mark.parametrize("method, beta", [("full", 0.04), ("lora", 0.0)])
def test_grpo_round_changes_the_teacher_and_logs_per_student_rewards(tmp_path, method, beta):
    from orchestrator.algorithms import ALGORITHMS

    ctx = _context(tmp_path, [*GRPO_SMOKE, f"algorithm.grpo.method={method}", f"algorithm.grpo.beta={beta}"])
    name_or_path = ctx.teacher.model.config._name_or_path
    before = {k: v.clone() for k, v in ctx.teacher.model.state_dict().items()}
    algo = ALGORITHMS["grpo"]()
    algo.setup(ctx)
    report = algo.train(0)

    model = ctx.teacher.model
    after = model.state_dict()
    assert set(after) == set(before), "a plain model again: LoRA merged, no adapter keys"
    assert "forward" not in model.__dict__, "TRL's fused-head patch is removed"
    assert model.config._name_or_path == name_or_path
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "GRPO steps must change the teacher's weights"
    assert (ctx.rundir.teacher_dir(1) / "model.safetensors").is_file()
    adapter = ctx.rundir.teacher_dir(1) / "adapter" / "adapter_config.json"
    assert adapter.is_file() == (method == "lora"), "a LoRA update is also kept as its adapter"
    if method == "lora":
        assert json.loads(adapter.read_text())["base_model_name_or_path"] == ctx.initial_teacher

    # 2 steps x 2 contexts x 2 generations scored on the training contexts, 1 held-out context x 2 edits.
    records = ctx.rundir.edits(0)
    train = [r for r in records if not r.heldout]
    assert len(train) == 8 and sum(r.heldout for r in records) == 2
    assert len({r.edit.key for r in train}) == 8, "every sampled edit has its own key"
    by_id = {c.id: c for c in ctx.task.train_contexts()}
    for r in train:
        assert set(r.per_student) == {"llama-t", "gpt2-t"}
        assert r.edit.teacher.startswith("round_0+grpo_step_")
        assert r.edit.prompt == ctx.teacher.prompt(by_id[r.edit.context_id])
    assert len({r.reward for r in train}) > 1, "logprob_gain differs between edits"
    assert report.train_student_evals == 8 * 2 - 2 * sum(r.penalty is not None for r in train)
    assert report.student_evals == report.train_student_evals + 2 * 2
    assert report.kept == 8 and report.heldout_mean_reward is not None

    steps = ctx.rundir.read_jsonl("grpo/train_log.jsonl")
    assert [s["step"] for s in steps] == [1, 2]
    for s in steps:
        assert {"students/llama-t/reward", "students/gpt2-t/reward", "reward"} <= set(s)
    assert ("kl" in steps[-1]) == (beta > 0)


def test_degenerate_edits_are_penalized_without_a_student_pass(tmp_path, monkeypatch):
    from core.records import Edit
    from orchestrator.algorithms.base import score_batch
    from orchestrator.algorithms.grpo import PoolReward

    ctx = _context(
        tmp_path,
        [f"run.cache_dir={CACHE}", "reward.penalty=-0.5", "reward.max_edit_chars=200"],
    )
    ctx.task = copy.copy(ctx.task)
    ctx.task.validate_edit = lambda text: "no 'Q:' line" if "Q:" not in text else None
    calls = []
    evaluate = ctx.pool.evaluate

    def counting(edits, *args, **kwargs):
        calls.append(len(edits))
        return evaluate(edits, *args, **kwargs)

    monkeypatch.setattr(ctx.pool, "evaluate", counting)

    c = ctx.task.train_contexts()[0]
    good = "\n".join(f"Q: {q.question} A: {q.answer}" for q in c.questions)
    texts = ["", "Q: a? A: b " * 30, "a rewrite without questions", good]
    edits = [Edit(c.id, "notes", i, t, "round_0", round=0) for i, t in enumerate(texts)]
    ctx.pool.baselines([c])
    results = score_batch(ctx, edits, {c.id: c}, 0, heldout=False)

    assert calls == [1], "one pool call, with only the valid edit"
    reasons = [r.penalty for r in results]
    assert reasons[0] == "empty edit"
    assert reasons[1].startswith("over-long edit")
    assert reasons[2] == "unparsable edit: no 'Q:' line"
    assert reasons[3] is None and results[3].per_student["llama-t"].adapted is not None
    for r in results[:3]:
        assert r.reward == -0.5
        for o in r.per_student.values():
            assert o.adapted is None and o.error == r.penalty and o.reward == -0.5
    persisted = {r.edit.key: r for r in ctx.rundir.edits(0)}
    assert [persisted[e.key].penalty for e in edits] == reasons

    # The GRPO reward function calls the pool once per batch, even when every completion is degenerate.
    calls.clear()
    reward = PoolReward(ctx, 0, [c], rank=0, world=1)
    assert reward(prompts=["p", "p"], completions=[" ", ""], context_id=[c.id, c.id]) == [-0.5, -0.5]
    assert calls == [0]
    assert reward(prompts=["p"], completions=[[{"role": "assistant", "content": good}]], context_id=[c.id])
    assert calls == [0, 1]
    # Sample indices continue after the 4 training records already in round 0 (what a resumed round sees).
    assert [r.edit.sample_index for r in reward.results] == [4, 5, 6]


def _summary(algorithm, held):
    rounds = [
        {
            "round": k,
            "mean_reward": 0.0,
            "heldout_mean_reward": h,
            "heldout_sem": 0.01,
            "kept": 0,
            "seconds": 1.0,
            "student_evals": 20,
            "train_student_evals": 12,
        }  # fmt: skip
        for k, h in enumerate(held)
    ]
    return {"algorithm": algorithm, "rounds": rounds, "students": [], "wall_seconds": 3.0}


def test_compare_prints_both_curves_with_budgets_and_plots(tmp_path, capsys):
    import json

    from orchestrator.cli import main

    runs = []
    for name, algo, held in [("a", "rest_em", [0.1, 0.3]), ("b", "grpo", [0.1, 0.25])]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(_summary(algo, held)))
        runs.append(str(tmp_path / name))
    out = tmp_path / "cmp.png"
    assert main(["compare", *runs, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| a | rest_em | 1 | +0.300 ± 0.010 | 12 | 20 |" in text
    assert "| b | grpo | 1 | +0.250 ± 0.010 | 12 | 20 |" in text
    assert "a: 40 student evaluations in all" in text
    assert out.stat().st_size > 10_000

    assert main(["compare", runs[0], str(tmp_path / "missing")]) == 2
    assert "has no summary.json" in capsys.readouterr().err
