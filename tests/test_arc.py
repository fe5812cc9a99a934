"""The ARC few-shot protocol: directives rejected with reasons, the inner loop on a tiny student, voting
over views, the token budget, and one arc_tiny round end to end."""

from __future__ import annotations

import json
import logging
import random

import pytest
import torch

from core.config import load_config
from core.records import EditResult
from orchestrator.rewards import assign_rewards
from orchestrator.tasks.arc import (
    ArcFewShotTask,
    classify_edit,
    episode_item,
    inner_loop_items,
    random_directive,
    view_prompts,
    vote_views,
)
from orchestrator.tasks.arc_grids import (
    Directive,
    apply_augmentation,
    grid_to_text,
    invert_augmentation,
    parse_directive,
    text_to_grid,
)
from student.sequences import IGNORE, collate

from .conftest import CACHE, CONFIGS

# Tiny enough to build in seconds; still a real BPE, a real Llama and real TRL pretraining (student).
SMALL_STUDENT = ["pretrain_steps=20", "hidden_size=32", "num_layers=1", "num_heads=2", "vocab_size=300"]
SMALL = [
    f"run.cache_dir={CACHE}",
    "run.progress=false",
    "task.arc.max_tokens=300",
    "task.arc.max_items=8",
    "task.arc.max_epochs=2",
    "task.arc.views=[identity,transpose,rotate180]",
    "teacher.model.tiny.pretrain=none",  # an untrained teacher: its directives are invalid, rewards 0
    "teacher.model.tiny.hidden_size=32",
    "teacher.model.tiny.num_layers=1",
    "teacher.model.tiny.num_heads=2",
    "teacher.generation.num_edits=2",
    "students.0.max_new_tokens=24",
    "students.0.model.tiny.max_position=384",
    "students.0.adapt.max_length=384",
    *[f"students.0.model.tiny.{o}" for o in SMALL_STUDENT],
]


def _directive(
    lr: float = 1e-2, epochs: int = 2, basic: bool = True, strategy: str = "train_using_output_tokens"
):
    return Directive(basic, False, False, False, strategy, lr, epochs).to_json()


@pytest.fixture(scope="module")
def arc_cfg():
    return load_config(CONFIGS / "arc_tiny.yaml", SMALL)


@pytest.fixture(scope="module")
def arc_task(arc_cfg):
    from orchestrator.tasks import build_task

    return build_task(arc_cfg.task)


@pytest.fixture(scope="module")
def arc_student_path(arc_cfg, arc_task):
    from orchestrator.models import resolve_model_path

    return resolve_model_path(arc_cfg.students[0].model, "student", arc_task, arc_cfg.run.cache_dir)


@pytest.fixture
def arc_student(arc_cfg, arc_task, arc_student_path):
    from core.models import load_causal_lm, load_tokenizer
    from student.student import Student

    sc = arc_cfg.students[0]
    model = load_causal_lm(arc_student_path, sc.model, torch.device("cpu"))
    return Student(sc, model, load_tokenizer(arc_student_path, sc.model), arc_task)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- directives -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, reason",
    [
        ('{"data_generation": {"use_basic_augmentations": true', "invalid JSON"),
        ("use rotations and lr 1e-3", "invalid JSON"),
        (_directive(lr=0.5), "learning_rate=0.5 is out of range"),
        (_directive(epochs=50), "num_train_epochs=50 is out of range"),
        (_directive(strategy="train_using_input_tokens"), "training.strategy must be one of"),
        ('{"data_generation": {}, "training": {}, "exec": "import os"}', "unknown key 'exec'"),
    ],
)
def test_bad_directive_gets_zero_reward_with_the_reason_recorded(arc_student, arc_task, text, reason):
    ctx = arc_task.train_contexts()[0]
    arc_student.baseline(ctx)
    before = _state(arc_student.model)
    from core.records import Edit

    result = EditResult(Edit(ctx.id, "arc-directive", 0, text, "round_0"))
    result.per_student[arc_student.name] = arc_student.evaluate_edit(text, ctx, seed=0)
    assign_rewards(result, "accuracy_gain", "logprob", "mean", {})
    out = result.per_student[arc_student.name]
    assert out.adapted is None and result.reward == 0.0 and out.reward == 0.0
    assert reason in out.error
    again = EditResult.from_dict(json.loads(json.dumps(result.to_dict())))  # the record keeps the reason
    assert reason in again.per_student[arc_student.name].error
    after = _state(arc_student.model)
    assert all(torch.equal(before[k], after[k]) for k in before), "a rejected edit never touches the model"


def test_classify_edit_and_the_teacher_corpus_mix(arc_task):
    assert classify_edit(_directive()) == "valid"
    assert classify_edit("{") == "invalid_json"
    assert classify_edit(_directive(lr=1.0)) == "out_of_range"
    assert classify_edit('{"data_generation": {}, "training": {}}') == "invalid_schema"
    kinds = [classify_edit(d) for _, d in arc_task.teacher_corpus(400, seed=1)]
    valid = kinds.count("valid") / len(kinds)
    assert 0.65 < valid < 0.85, "about a quarter of the initial teacher's corpus is invalid"
    assert {"invalid_json", "out_of_range", "invalid_schema"} <= set(kinds)


# -- the inner loop ---------------------------------------------------------------------------------------
def test_directive_sets_items_and_clamped_settings(arc_cfg, arc_task):
    ctx = arc_task.train_contexts()[0]
    adapt = arc_cfg.students[0].adapt
    n = len(arc_task.arc_task(ctx).train)
    plain, a = arc_task.training_items_for(_directive(lr=1e-2, epochs=20, basic=False), ctx, adapt, seed=0)
    assert len(plain) == n, "no family: the n leave-one-out episodes only"
    assert (a.learning_rate, a.epochs, a.loss_on) == (arc_cfg.task.arc.max_learning_rate, 2, "completion")
    assert a.lora_r == adapt.lora_r and adapt.epochs != 2, "a copy: the student's own settings are untouched"
    more, a2 = arc_task.training_items_for(
        _directive(lr=1e-4, strategy="train_using_all_tokens"), ctx, adapt, seed=0
    )
    assert (a2.learning_rate, a2.loss_on) == (1e-4, "all")
    assert len(more) == arc_cfg.task.arc.max_items > len(plain) and more[:n] == plain
    for it in more:  # every sequence is a well-formed episode whose answer is a grid
        assert it.prompt.endswith("output:\n") and text_to_grid(it.completion) is not None
        assert len(it.prompt) + len(it.completion) <= adapt.max_length


def test_loss_on_outputs_masks_the_demonstrations(arc_student, arc_task):
    task = arc_task.arc_task(arc_task.train_contexts()[0])
    item = episode_item(task.train[1:], task.train[0])
    batch = collate(arc_student.tok, [item], 10_000, loss_on="completion")
    target = arc_student.tok.decode(batch.labels[0][batch.labels[0] != IGNORE], skip_special_tokens=True)
    assert target == grid_to_text(task.train[0]["output"])
    batch_all = collate(arc_student.tok, [item], 10_000, loss_on="all")
    assert (batch_all.labels[0] != IGNORE).all()


def test_inner_loop_runs_end_to_end_and_restores_the_base(arc_student, arc_task):
    ctx = arc_task.train_contexts()[0]
    base_score = arc_student.baseline(ctx)
    before = _state(arc_student.model)
    probe = arc_student.tok(ctx.text, return_tensors="pt")["input_ids"][:, :32]
    base_logits = arc_student.model(probe).logits
    items, adapt = arc_student.training_plan(_directive(lr=1e-2, epochs=2), ctx, seed=0)
    with arc_student.adapted(items, 0, adapt) as loss:
        assert loss == loss and loss > 0
        assert not torch.allclose(arc_student.model(probe).logits, base_logits), "the LoRA changed outputs"
    out = arc_student.evaluate_edit(_directive(lr=1e-2, epochs=2), ctx, seed=0)
    assert out.error is None and out.adapted is not None and out.train_loss is not None
    assert out.adapted.n_questions == len(ctx.questions) and 0.0 <= out.adapted.f1 <= 1.0
    assert out.adapted.logprob != base_score.logprob
    assert out.adapted.logprob > base_score.logprob, (
        "training on the task's episodes raises the gold's log-prob"
    )
    after = _state(arc_student.model)
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert arc_student.score(ctx) == base_score, "the restored student scores exactly as before"


def test_inner_loop_items_are_deduplicated_and_capped():
    from core.config import ArcTaskConfig

    pairs = [{"input": [[1, 0], [0, 0]], "output": [[0, 1], [0, 0]]}, {"input": [[2]], "output": [[2]]}]
    d = parse_directive(_directive())
    items = inner_loop_items(pairs, d, ArcTaskConfig(max_items=1000), 10_000, random.Random(0))
    assert len(items) == len(set(items)), "symmetric grids give equal views, kept once"
    assert len(inner_loop_items(pairs, d, ArcTaskConfig(max_items=3), 10_000, random.Random(0))) == 3
    with pytest.raises(ValueError, match="leave-one-out needs at least 2"):
        inner_loop_items(pairs[:1], d, ArcTaskConfig(), 10_000, random.Random(0))
    with pytest.raises(ValueError, match="fits in 5 characters"):
        inner_loop_items(pairs, d, ArcTaskConfig(), 5, random.Random(0))


# -- voting over views ------------------------------------------------------------------------------------
def test_voting_over_views_inverts_each_view():
    rng = random.Random(3)
    train = [{"input": [[rng.randint(0, 9) for _ in range(3)] for _ in range(2)], "output": [[1, 2]]}]
    test_input = [[1, 2, 3], [4, 5, 6]]
    gold = [[7, 8, 9], [0, 1, 2]]  # 2x3, not symmetric: every view changes it
    views = [
        "identity",
        "transpose",
        "rotate90",
        "rotate180",
        "rotate270",
        "flip_horizontal",
        "flip_vertical",
    ]
    prompts = view_prompts(train, test_input, views)
    assert [v for v, _ in prompts] == views
    for v, p in prompts:  # each prompt shows the query under that view
        assert p.endswith(f"input:\n{grid_to_text(apply_augmentation(v, test_input))}\noutput:\n")
    # A model right under every view writes the transformed gold; inverting each gives the gold back.
    right = [grid_to_text(apply_augmentation(v, gold)) + "\n\ninput:\n12" for v in views]
    assert all(invert_augmentation(v, apply_augmentation(v, gold)) == gold for v in views)
    assert vote_views(views, right) == gold
    # Each answer is mapped back by its own view's inverse: an answer not transformed is read as wrong.
    assert vote_views(["rotate90"], [grid_to_text(gold)]) == apply_augmentation("rotate270", gold) != gold
    # A wrong answer given consistently under 4 views outvotes the right one under 3.
    other = [[7, 8, 9], [0, 1, 3]]
    votes = [grid_to_text(apply_augmentation(v, other)) for v in views[:4]] + right[4:]
    assert vote_views(views, votes) == other
    # Unparsable answers and views that cannot be inverted (wrong shape for the inverse) cast no vote.
    assert vote_views(views, right[:2] + ["no grid here", "", "1a", "12\n3", "x"]) == gold
    assert vote_views(["identity", "upscale2"], ["", "12\n34"]) is None  # not a 2x upscaled grid
    assert vote_views(views, ["", "x"] + [""] * 5) is None


def test_score_of_a_student_right_under_every_view_is_exact(arc_task, monkeypatch):
    """score() wires views, decoding, inversion and voting: a model right under every view gets em = f1 = 1,
    one that always writes the untransformed test input gets a partial cell accuracy at most."""
    import orchestrator.tasks.arc as arc

    ctx = arc_task.train_contexts()[0]
    task = arc_task.arc_task(ctx)
    answers = {
        p: (grid_to_text(apply_augmentation(v, y)), grid_to_text(x))
        for x, y in zip(task.test_inputs, task.test_outputs)
        for v, p in view_prompts(task.train, x, arc_task.settings.views)
    }
    monkeypatch.setattr(arc, "completion_logprobs", lambda model, tok, items, b: [-0.5] * len(items))
    monkeypatch.setattr(
        arc, "greedy_texts", lambda model, tok, prompts, n, b: [answers[p][0] for p in prompts]
    )
    s = arc_task.score(None, None, ctx, 32, 8)
    assert (s.em, s.f1, s.logprob, s.n_questions) == (1.0, 1.0, -0.5, len(task.test_inputs))
    monkeypatch.setattr(
        arc, "greedy_texts", lambda model, tok, prompts, n, b: [answers[p][1] for p in prompts]
    )
    s = arc_task.score(None, None, ctx, 32, 8)
    assert s.em == 0.0 and s.f1 < 1.0


# -- the task set -----------------------------------------------------------------------------------------
def test_token_budget_drops_long_tasks_and_says_so(caplog):
    from core.config import ArcTaskConfig

    with caplog.at_level(logging.INFO, logger="orchestrator.tasks.arc"):
        small = ArcFewShotTask(ArcTaskConfig(max_tokens=300), 12, 10)
    full = ArcFewShotTask(ArcTaskConfig(), 12, 10)
    assert (len(full.train_contexts()), len(full.heldout_contexts())) == (12, 10)
    assert 0 < len(small.train_contexts()) < 12 and len(small.heldout_contexts()) < 10
    assert all(small.task_chars(small.arc_task(c)) <= 300 for c in small.train_contexts())
    assert "dropped" in caplog.text and "8e1813be" in caplog.text
    held_ids = {c.title for c in full.heldout_contexts()}
    assert not held_ids & {c.title for c in full.train_contexts()}, "training and held-out tasks are disjoint"
    corpus = "".join(p + c for p, c in full.student_corpus(300, seed=0))
    for c in full.heldout_contexts():  # held-out test outputs never appear in the student's pretraining
        for q in c.questions:
            assert f"output:\n{q.answer}\n" not in corpus


@pytest.mark.parametrize(
    "override, field",
    [
        ("task.arc.views=[spin]", "task.arc.views"),
        ("task.arc.max_epochs=0", "task.arc.max_epochs"),
        ("task.arc.max_learning_rate=0", "task.arc.max_learning_rate"),
        ("task.arc.eval_challenges=/nonexistent.json", "task.arc.eval_challenges"),
    ],
)
def test_bad_arc_settings_name_the_field(override, field):
    from core.config import ConfigError

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(CONFIGS / "arc_tiny.yaml", [override])


def test_random_directives_are_valid_and_uniform():
    rng = random.Random(0)
    ds = [random_directive(rng) for _ in range(400)]
    assert all(parse_directive(d.to_json()) == d for d in ds)
    assert 0.4 < sum(d.use_basic_augmentations for d in ds) / len(ds) < 0.6
    assert {d.strategy for d in ds} == {"train_using_all_tokens", "train_using_output_tokens"}


# -- end to end -------------------------------------------------------------------------------------------
def test_arc_tiny_round_end_to_end(tmp_path, capsys):
    from orchestrator.cli import main

    args = [
        "run",
        str(CONFIGS / "arc_tiny.yaml"),
        *SMALL,
        f"run.output_dir={tmp_path}",
        "run.name=arc",
        "task.num_train_contexts=2",
        "task.num_heldout_contexts=1",
        "algorithm.rounds=1",
    ]
    assert main(args) == 0
    run = tmp_path / "arc"
    rounds = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1]
    assert (run / "teacher" / "round_1" / "model.safetensors").is_file()
    for k, r in enumerate(rounds):
        records = [json.loads(x) for x in (run / "edits" / f"round_{k}.jsonl").read_text().splitlines()]
        assert len(records) == (2 + 1) * 2
        assert sum(r["edit_styles"].values()) == len(records)
        for rec in records:
            o = rec["per_student"]["llama-arc"]
            kind = classify_edit(rec["edit"]["text"])
            if kind != "valid":  # every invalid directive: zero reward, its reason recorded
                assert o["adapted"] is None and o["reward"] == 0.0 and rec["reward"] == 0.0 and o["error"]
            elif o["adapted"] is not None:
                assert o["reward"] == pytest.approx(o["adapted"]["logprob"] - o["baseline"]["logprob"])
    assert "| round |" in capsys.readouterr().out
