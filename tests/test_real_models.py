"""The real SmolLM2-135M-Instruct (installed from the package registry by `make venv`, converted once from
GGUF into .cache/teachedit/gguf): it loads, answers through its chat template, and one edit is adapted, scored
and removed bit-exactly through the batched and the one-at-a-time paths.

Settings are cut to the bone (a few sequences, one epoch) so the file runs in about a minute on 2 cores after
the one-time conversion (~30 s). No skip when the model package is missing: `make test` installs it, and a
missing install must fail loudly rather than silently drop the only real-model coverage."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import CACHE, CONFIGS


@pytest.fixture(scope="module")
def real_cfg():
    from core.config import load_config

    return load_config(CONFIGS / "real_cpu.yaml", [f"run.cache_dir={CACHE}"])


@pytest.fixture(scope="module")
def smol(real_cfg):
    """The SmolLM2 student of configs/real_cpu.yaml, with a tiny inner loop."""
    from core.models import load_causal_lm, load_tokenizer
    from orchestrator.models import resolve_model_path
    from orchestrator.tasks import build_task
    from student.student import Student

    task = build_task(real_cfg.task)
    sc = copy.deepcopy(real_cfg.students[0])
    assert sc.model.gguf == "smollm2-135m-instruct"
    sc.adapt.epochs, sc.adapt.max_sequences, sc.adapt.max_length, sc.adapt.edit_batch_size = 1, 3, 48, 2
    sc.max_new_tokens = 8
    path = resolve_model_path(sc.model, "student", task, real_cfg.run.cache_dir)
    return Student(
        sc, load_causal_lm(path, sc.model, torch.device("cpu")), load_tokenizer(path, sc.model), task
    )


def test_loads_as_a_real_llama(smol):
    assert smol.model_type == "llama"
    assert 130e6 < smol.num_parameters < 140e6
    assert len(smol.tok) == 49152
    assert smol.chat  # instruct model: auto picks its chat template


def test_chat_template_prompt_answers_a_trivial_question(smol):
    from student.scoring import greedy_answers

    prompt = smol.qa_prompt("What is the capital of France?")
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    [answer] = greedy_answers(smol.model, smol.tok, [prompt], 12, 1, add_special_tokens=False)
    assert "Paris" in answer
    assert "<|im_end|>" not in answer  # the scored answer is the text, never the end-of-turn token


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_one_edit_adapted_scored_restored_batched_and_sequential(smol):
    ctx = smol.task.train_contexts()[0]
    edit = (
        f"{ctx.title} is the subject of this passage.\n{ctx.questions[0].question} {ctx.questions[0].answer}."
    )
    before = _state(smol.model)
    base = smol.baseline(ctx)
    one = smol.evaluate_once(edit, ctx, seed=5)  # peft adapter, removed with unload()
    assert one.error is None and one.adapted is not None and one.train_loss is not None
    after_one = _state(smol.model)
    assert all(torch.equal(before[k], after_one[k]) for k in before)  # base restored bit for bit
    [batched] = smol.evaluate_edits([edit], [ctx], [5])  # hand-written batched LoRA hooks, removed on exit
    after_batched = _state(smol.model)
    assert all(torch.equal(before[k], after_batched[k]) for k in before)
    assert batched.error is None
    assert batched.adapted.logprob == pytest.approx(one.adapted.logprob, abs=1e-4)
    assert batched.train_loss == pytest.approx(one.train_loss, abs=1e-4)
    assert one.adapted.logprob != base.logprob  # the update really changed the student's answers
    assert smol.score(ctx) == base  # and scoring the restored student gives the baseline again


def test_two_edits_batched_equal_one_at_a_time(smol):
    """E = 2 edits of different lengths on two passages in one batched inner loop (length-grouped steps,
    LM head at labelled positions only) give each edit's one-at-a-time result within 1e-4."""
    ctxs = smol.task.train_contexts()[:2]
    edits = [
        f"{ctxs[0].title}: {ctxs[0].questions[0].question} {ctxs[0].questions[0].answer}.",
        f"{ctxs[1].title} facts.\n{ctxs[1].text[:200]}\n{ctxs[1].questions[0].answer} is the answer.",
    ]
    seeds = [3, 4]
    for c in ctxs:
        smol.baseline(c)
    before = _state(smol.model)
    batched = smol.evaluate_edits(edits, ctxs, seeds)
    assert all(torch.equal(before[k], v) for k, v in _state(smol.model).items())
    ones = [smol.evaluate_once(e, c, seed=s) for e, c, s in zip(edits, ctxs, seeds)]
    for b, one in zip(batched, ones):
        assert b.error is None and one.error is None
        assert b.train_loss == pytest.approx(one.train_loss, abs=1e-4)
        assert b.adapted.logprob == pytest.approx(one.adapted.logprob, abs=1e-4)
        assert b.adapted.f1 == pytest.approx(one.adapted.f1, abs=1e-6)
    assert batched[0].train_loss != batched[1].train_loss  # two different updates, not one shared
