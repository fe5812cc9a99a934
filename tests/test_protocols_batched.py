"""The single and cpt protocols adapt a LoRA student's updates edit_batch_size at a time (orchestrator/
protocols/batched.py): the records equal the one-at-a-time protocol's, failures and eval_times included."""

from __future__ import annotations

import copy

import pytest
import torch

import student.batched as sb
from orchestrator.protocols.common import BaseAnswers, Settings
from orchestrator.protocols.cpt import run_cpt
from orchestrator.protocols.data import Source
from orchestrator.protocols.single import run_single

TOL = 1e-4
MARKER = "@"  # an edit holding it gets a NaN loss (see _nan_on_marker)


def _qa(ctx, k=None):
    return "\n".join(f"Q: {q.question} A: {q.answer}" for q in ctx.questions[:k])


def _source(task):
    c0, c1, c2 = task.train_contexts()[:3]
    edits = {
        c0.id: (_qa(c0), "**Implications:**\n", c0.text.replace(". ", ".\n")),  # the second: no usable text
        c1.id: (_qa(c1, 1), f"{MARKER} {c1.text}", _qa(c1, 2) + "\nThe weather was mild that year."),
        c2.id: (c2.text, _qa(c2, 3)),
    }
    return Source("e", "edits", edits), [c0, c1, c2]


def _nan_on_marker(s):
    """A forward hook on the input embeddings: rows holding the marker token become NaN, so that edit's loss
    is NaN in either path (rows of the frozen base are independent, so no other edit is touched)."""
    (marker,) = s.tok(MARKER, add_special_tokens=False)["input_ids"]

    def hook(module, args, out):
        rows = (args[0] == marker).any(-1)
        if not rows.any():
            return out
        out = out.clone()
        out[rows] = float("nan")
        return out

    return s.model.get_input_embeddings().register_forward_hook(hook), marker


def _run(protocol, s, source, contexts):
    emitted = []
    out = protocol(s, source, contexts, Settings(n=2, on_update=emitted.append), BaseAnswers())
    assert emitted == out, "every update emitted once, in order"
    return out


def _both(make_student, task, monkeypatch, name, times, protocol):
    """``protocol``'s records with edit_batch_size 4 and 1 (a copy of the same student), and the sizes of the
    batched path's adapter batches."""
    s = make_student(name, epochs=2, batch_size=2, learning_rate=3e-3, edit_batch_size=4, eval_times=times)
    ref = copy.copy(s)  # same model, one update at a time
    ref.cfg = copy.deepcopy(s.cfg)
    ref.cfg.adapt.edit_batch_size = 1
    assert s.edit_batch_size == 4 and ref.edit_batch_size == 1
    source, contexts = _source(task)
    handle, marker = _nan_on_marker(s)
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    chunks: list[int] = []
    train = sb.train_adapters
    monkeypatch.setattr(sb, "train_adapters", lambda ml, items: chunks.append(len(items)) or train(ml, items))
    try:
        got = _run(protocol, s, source, contexts)
        sizes = list(chunks)
        want = _run(protocol, ref, source, contexts)
        assert chunks == sizes, "the reference went one at a time"
    finally:
        handle.remove()
    assert marker not in s.tok(" ".join(q.question for c in contexts for q in c.questions))["input_ids"]
    after = s.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the student is the base again"
    _assert_same(got, want, name)
    return got, want, sizes, ref, contexts


def _assert_same(got, want, name):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        what = f"{name} {w.context_ids} step {w.step}"
        assert (g.source, g.student, g.step, g.context_ids) == (w.source, w.student, w.step, w.context_ids)
        assert (g.error, g.note, g.n_items) == (w.error, w.note, w.n_items), what
        assert (g.train_loss is None) == (w.train_loss is None), what
        if w.train_loss is not None:
            assert abs(g.train_loss - w.train_loss) <= TOL, what
        assert [(a.context_id, a.question_index, a.gold) for a in g.answers] == [
            (a.context_id, a.question_index, a.gold) for a in w.answers
        ]
        for a, b in zip(g.answers, w.answers):
            assert (a.em, a.f1) == (b.em, b.f1), what
            assert abs(a.logprob - b.logprob) <= TOL, what


@pytest.mark.parametrize("name, times", [("llama-t", 2), ("gpt2-t", 1)])
def test_batched_single_equals_one_at_a_time(make_student, task, monkeypatch, name, times):
    got, want, sizes, ref, contexts = _both(make_student, task, monkeypatch, name, times, run_single)
    assert max(sizes) == 4, f"updates were adapted together: {sizes}"
    assert len(got) == 8
    errors = [w.error or "" for w in want]
    assert "no usable text" in errors[1] and "non-finite" in errors[4]
    assert sum(bool(e) for e in errors) == 2
    base = BaseAnswers().get(ref, [contexts[1]])
    assert [a.logprob for a in got[4].answers] == pytest.approx([a.logprob for a in base], abs=1e-6)
    assert got[0].answers != got[2].answers, "each update was scored with its own adapter"


def test_batched_cpt_equals_one_at_a_time(make_student, task, monkeypatch):
    """Groups of 2 passages: the first group holds the NaN edit (the whole update fails), the second trains."""
    got, want, sizes, _, _ = _both(make_student, task, monkeypatch, "llama-t", 2, run_cpt)
    assert sizes == [4], "both groups' two repeats were adapted together"
    assert [len(r.context_ids) for r in got] == [2, 1]
    assert "non-finite" in want[0].error and "skipped 1 of 6" in want[0].note
    assert want[1].error is None and want[1].train_loss is not None
