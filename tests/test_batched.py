"""Batched multi-edit adaptation equals adapting to the edits one by one (student/batched.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.records import Edit
from student.batched import MultiLoRA, edit_losses, evaluate_batch, length_groups, train_adapters
from student.head import split_model, token_losses
from student.lifecycle import edit_seed
from student.pool import StudentPool
from student.sequences import IGNORE, encode_item, pad_batch

TOL = 1e-4


def _qa(ctx, k=None):
    return "\n".join(f"Q: {q.question} A: {q.answer}" for q in ctx.questions[:k])


def _edits(task):
    """Edits of different lengths (so different numbers of batches) and one with no usable text."""
    c0, c1, c2 = task.train_contexts()[:3]
    return [
        (_qa(c0), c0),  # 4 QA lines: 2 batches an epoch
        ("**Implications:**\n", c1),  # no usable text: a recorded zero
        (c1.text.replace(". ", ".\n"), c1),  # narrative lines, no prompt: 3 batches an epoch
        (_qa(c2, 1), c2),  # one line: 1 batch an epoch, done while the others go on
        (_qa(c0, 2) + "\nThe weather was mild that year.", c0),
    ]


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _lora_state(model):
    from peft import get_peft_model_state_dict

    sd = get_peft_model_state_dict(model)
    return {k: v.detach().clone() for k, v in sd.items()}


def _sequential_adapter(s, items, seed):
    with s.adapted(items, seed):
        return _lora_state(s.model)


def _peft_init(s, seed):
    """The adapter peft creates under torch.manual_seed(seed), untrained."""
    from peft import get_peft_model

    from student.lifecycle import lora_config

    torch.manual_seed(seed)
    model = get_peft_model(s.model, lora_config(s.cfg.adapt, s.model_type))
    try:
        return _lora_state(model)
    finally:
        s.model = model.unload()


def _assert_same_outcome(a, b, what):
    assert a.error == b.error, what
    assert (a.adapted is None) == (b.adapted is None), what
    if a.adapted is not None:
        for score in ("em", "f1", "logprob"):
            assert abs(a.adapted.get(score) - b.adapted.get(score)) <= TOL, f"{what}: {score}"
            # the reward is adapted - baseline; baselines are the same cached scores
            assert a.baseline.get(score) == b.baseline.get(score)
        assert abs(a.train_loss - b.train_loss) <= TOL, what


@pytest.mark.parametrize("name", ["llama-t", "gpt2-t"])
def test_batched_equals_sequential(make_student, task, name):
    # lr 3e-3 moves the adapters well away from their init; much larger rates let Adam amplify float rounding
    # (a batch of other shapes sums in another order) towards the 1e-4 tolerance.
    s = make_student(name, epochs=3, batch_size=2, learning_rate=3e-3, edit_batch_size=8)
    edits = _edits(task)
    seeds = [edit_seed(0, Edit(c.id, "notes", i, t, "t"), name) for i, (t, c) in enumerate(edits)]
    before = _state(s.model)

    # Same adapters: train the usable edits together, compare each with its own sequential adapter.
    live = [i for i, (t, c) in enumerate(edits) if s.usable_items(t, c)[1] is None]
    assert live == [0, 2, 3, 4]
    items = [s.usable_items(*edits[i])[0] for i in live]
    assert len({len(it) for it in items}) >= 3, "edits have different numbers of sequences"
    with MultiLoRA(s, [seeds[i] for i in live]) as ml:
        initial = [{k: v.clone() for k, v in ml.adapter_state(k).items()} for k in range(len(live))]
        trained = train_adapters(ml, items)
        batched = [ml.adapter_state(k) for k in range(len(live))]
    assert all(err is None for _, err in trained)
    for k, i in enumerate(live):
        init = _peft_init(s, seeds[i])
        assert initial[k].keys() == init.keys() and all(torch.equal(initial[k][x], init[x]) for x in init)
        seq = _sequential_adapter(s, items[k], seeds[i])
        assert batched[k].keys() == seq.keys() and len(seq) > 0
        for key in seq:
            assert torch.allclose(batched[k][key], seq[key], atol=TOL, rtol=0), f"edit {i}: {key}"
        assert any(v.abs().sum() > 0 for key, v in seq.items() if "lora_B" in key), "the adapter trained"
    first_b = next(k for k in batched[0] if "lora_B" in k)
    assert not torch.allclose(batched[0][first_b], batched[1][first_b]), "each adapter saw only its own edit"

    # Same outcomes (scores, rewards, losses, errors) through the whole batched path.
    outs = evaluate_batch(s, [t for t, _ in edits], [c for _, c in edits], seeds)
    for i, ((text, ctx), out) in enumerate(zip(edits, outs)):
        _assert_same_outcome(out, s.evaluate_edit(text, ctx, seeds[i]), f"{name} edit {i}")
    assert outs[1].adapted is None and outs[1].reward == 0.0 and "no usable text" in outs[1].error

    after = _state(s.model)
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_length_groups_equal_one_padded_pass(make_student, task, monkeypatch):
    """With the passage among the training sequences (include_context) a step's rows go through the model in
    two length groups; the adapters still equal the sequential ones."""
    import student.batched as batched

    splits = []

    def spy(lengths, *args):
        out = length_groups(lengths, *args)
        splits.append(len(out) > 1)
        return out

    monkeypatch.setattr(batched, "length_groups", spy)
    s = make_student("llama-t", epochs=2, batch_size=4, learning_rate=3e-3, include_context=True)
    ctxs = task.train_contexts()[:3]
    items = [s.usable_items(_qa(c), c)[0] for c in ctxs]
    seeds = [5, 6, 7]
    with MultiLoRA(s, seeds) as ml:
        trained = train_adapters(ml, items)
        batched_states = [ml.adapter_state(k) for k in range(len(items))]
    assert any(splits), "some step ran in two length groups"
    for k in range(len(items)):
        with s.adapted(items[k], seeds[k]) as loss:
            seq = _lora_state(s.model)
        assert trained[k][1] is None and abs(trained[k][0] - loss) <= TOL, f"edit {k}: loss"
        for key in seq:
            assert torch.allclose(batched_states[k][key], seq[key], atol=TOL, rtol=0), f"edit {k}: {key}"


def test_length_groups():
    assert length_groups([10, 12, 11]) == [[0, 1, 2]]  # little padding: one pass
    assert length_groups([100, 10, 12, 9, 11, 10]) == [[1, 2, 3, 4, 5], [0]]
    assert length_groups([5]) == [[0]]


def _full_logits_edit_losses(logits, labels, rows):
    """Reference: the per-edit loss from full-vocabulary logits at every position (the loop before head.py)."""
    shift = F.pad(labels, (0, 1), value=IGNORE)[:, 1:]
    per_token = F.cross_entropy(
        logits.float().flatten(0, 1), shift.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(shift.shape)
    sums = torch.stack([part.sum() for part in per_token.split(rows)])
    counts = torch.stack([(part != IGNORE).sum() for part in shift.split(rows)])
    return sums / counts


@pytest.mark.parametrize("name", ["llama-t", "gpt2-t"])
def test_head_only_loss_equals_full_logits(make_student, task, name):
    """The loss from logits at labelled positions only equals the one from full logits, per edit, values and
    gradients, with rows of no label token (one inside an edit, one making up an edit: NaN both ways)."""
    from core.task import TrainingItem

    s = make_student(name, learning_rate=3e-2)
    assert split_model(s.model) is not None, "the fast path is taken"
    c0, c1 = task.train_contexts()[:2]
    items = [TrainingItem(task.qa_prompt(q.question), " " + q.answer) for q in c0.questions + c1.questions]
    encoded = [encode_item(s.tok, it, 64) for it in items]
    unlabelled = (encoded[0][0], [IGNORE] * len(encoded[0][0]))
    encoded = encoded[:2] + [unlabelled] + encoded[2:5] + [unlabelled] + encoded[5:7]
    rows = [3, 3, 1, 2]  # edit 2 is the one unlabelled row
    batch = pad_batch(encoded, s.tok.pad_token_id)
    with MultiLoRA(s, [1, 2, 3, 4]) as ml:
        with torch.no_grad():  # move B off zero so the adapters change the logits
            for w in ml.weights:
                for _, b in w:
                    b.normal_(0, 0.05)
        results = []
        for fast in (True, False):
            with ml.route([0, 1, 2, 3], rows, training=True):
                if fast:
                    per_edit = edit_losses(*token_losses(ml.model, batch), rows)
                else:
                    out = ml.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
                    per_edit = _full_logits_edit_losses(out.logits, batch.labels, rows)
            finite = torch.isfinite(per_edit)
            grads = torch.autograd.grad(per_edit[finite].sum(), [p for ps in ml.params for p in ps])
            results.append((per_edit.detach(), finite, grads))
    (fast, fast_ok, fast_g), (ref, ref_ok, ref_g) = results
    assert fast_ok.tolist() == ref_ok.tolist() == [True, True, False, True]
    assert torch.allclose(fast[fast_ok], ref[ref_ok], atol=1e-5, rtol=0)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=0) for a, b in zip(fast_g, ref_g))
    assert any(g.abs().sum() > 0 for g in fast_g)


def test_non_finite_loss_fails_one_edit_only(make_student, task):
    """With max_length below the QA prompts' length a QA edit has no label token (its loss would be NaN): it
    gets a recorded error before training, as in the sequential path, and the other edits in its batch are
    unaffected."""
    s = make_student("llama-t", epochs=2, batch_size=2, max_length=6)
    c0, c1 = task.train_contexts()[:2]
    texts, ctxs, seeds = [_qa(c0), c1.text.replace(". ", ".\n")], [c0, c1], [3, 4]
    outs = evaluate_batch(s, texts, ctxs, seeds)
    assert outs[0].adapted is None and "no trainable token" in outs[0].error
    assert outs[1].error is None and outs[1].adapted is not None
    for i in range(2):
        _assert_same_outcome(outs[i], s.evaluate_edit(texts[i], ctxs[i], seeds[i]), f"edit {i}")


def test_pool_chunks_and_persists_per_edit(make_student, task):
    """The pool evaluates chunks of edit_batch_size and hands each edit to on_result as its chunk completes."""
    a = make_student("llama-t", epochs=1, edit_batch_size=2)
    b = make_student("gpt2-t", epochs=1, method="full", edit_batch_size=2)  # full FT: one at a time
    assert (a.edit_batch_size, b.edit_batch_size) == (2, 1)
    events = []
    for st in (a, b):
        inner = st.evaluate_edits

        def spy(texts, ctxs, seeds, _inner=inner, _name=st.name):
            events.append((_name, len(texts)))
            return _inner(texts, ctxs, seeds)

        st.evaluate_edits = spy
    ctxs = task.train_contexts()[:3]
    edits = [Edit(c.id, "notes", 0, _qa(c, 2), "t") for c in ctxs]
    pool = StudentPool([a, b])
    results = pool.evaluate(edits, {c.id: c for c in ctxs}, 0, on_result=lambda r: events.append(r.edit.key))
    keys = [e.key for e in edits]
    assert events == [("llama-t", 2), ("gpt2-t", 2), keys[0], keys[1], ("llama-t", 1), ("gpt2-t", 1), keys[2]]
    assert [r.edit.key for r in results] == keys
    assert all(r.per_student[n].adapted is not None for r in results for n in ("llama-t", "gpt2-t"))


@pytest.mark.slow
def test_inner_loop_benchmark_quick(tmp_path, capsys):
    """benchmarks/inner_loop.py --quick runs end to end, writes its JSON and ends with the speedup line."""
    import importlib.util
    import json

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("inner_loop", ROOT / "benchmarks" / "inner_loop.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "inner_loop.json"
    bench.main(["--quick", "--repeats", "1", "--out", str(out)])
    results = json.loads(out.read_text())
    row = results["students"]["~5M"]["E"]["8"]
    assert row["teachedit_flops"] > 0 and row["seal_style_edits_per_s"] > 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"speedup_vs_sequential@8: {results['speedup_vs_sequential@8']:.2f}"
