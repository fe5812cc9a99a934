from __future__ import annotations

import pytest
import torch

from orchestrator.tasks.base import TrainingItem, qa_training_items, split_edit
from student.sequences import IGNORE, collate, encode_item


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _qa_edit(ctx):
    return "\n".join(f"Q: {q.question} A: {q.answer}" for q in ctx.questions)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_restore_is_bit_exact_after_adaptation(make_student, task, method):
    s = make_student("llama-t", method=method, epochs=3, learning_rate=1e-2)
    before = _state(s.model)
    ctx = task.train_contexts()[0]
    items = task.training_items(_qa_edit(ctx), ctx, include_context=False)
    with s.adapted(items, seed=0):
        logits_adapted = s.model(torch.tensor([[1, 2, 3]])).logits
    after = _state(s.model)
    assert set(after) == set(before), "no adapter modules or keys remain"
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} differs after restore"
    logits_base = s.model(torch.tensor([[1, 2, 3]])).logits
    assert not torch.allclose(logits_adapted, logits_base), "adaptation changed the model's outputs"


def test_restore_happens_on_error(make_student, task):
    s = make_student("gpt2-t")
    before = _state(s.model)
    ctx = task.train_contexts()[0]
    items = task.training_items(_qa_edit(ctx), ctx, include_context=False)
    with pytest.raises(RuntimeError, match="boom"):
        with s.adapted(items, seed=0):
            raise RuntimeError("boom")
    after = _state(s.model)
    assert all(torch.equal(before[k], after[k]) for k in before) and set(before) == set(after)


def test_label_masks_cover_prompt_and_padding(make_student):
    s = make_student("llama-t")
    tok = s.tok
    items = [
        TrainingItem("Q: Where does kalomi live? A:", " dunmore"),
        TrainingItem("", "kalomi lives in dunmore."),
    ]
    batch = collate(tok, items, max_length=64, loss_on="completion")
    ids0, lab0 = encode_item(tok, items[0], 64)
    n_prompt = len(tok(items[0].prompt)["input_ids"])
    assert lab0[:n_prompt] == [IGNORE] * n_prompt
    assert lab0[n_prompt:] == ids0[n_prompt:]
    assert ids0[-1] == tok.eos_token_id and lab0[-1] == tok.eos_token_id
    # Padding: every position with attention 0 has an IGNORE label.
    pad_positions = batch.attention_mask == 0
    assert pad_positions.any(), "items differ in length, so one is padded"
    assert (batch.labels[pad_positions] == IGNORE).all()
    # loss_on=all trains on prompt tokens too, never on padding.
    batch_all = collate(tok, items, max_length=64, loss_on="all")
    assert (batch_all.labels[0, :n_prompt] != IGNORE).all()
    assert (batch_all.labels[batch_all.attention_mask == 0] == IGNORE).all()


def test_two_students_with_different_tokenizers_score_the_same_edit(make_student, task):
    a, b = make_student("llama-t"), make_student("gpt2-t")
    assert a.model_type != b.model_type
    text = "Q: Where does kalomiru live? A: dunmore kelby"
    assert a.tok(text)["input_ids"] != b.tok(text)["input_ids"], "the tokenizers differ"
    ctx = task.train_contexts()[0]
    for s in (a, b):
        out = s.evaluate_edit(_qa_edit(ctx), ctx, seed=1)
        assert out.error is None and out.adapted is not None
        assert out.adapted.n_questions == len(ctx.questions)
        assert out.adapted.logprob > out.baseline.logprob, (
            f"{s.name}: training on the answers raises their log-prob"
        )


def test_empty_edit_gets_recorded_zero(make_student, task):
    s = make_student("llama-t")
    ctx = task.train_contexts()[0]
    for text in ["", "   \n\n ", "**Implications:**\n"]:
        out = s.evaluate_edit(text, ctx, seed=0)
        assert out.adapted is None and out.error and "no usable text" in out.error


def test_split_edit_and_qa_items():
    text = "**Implications:**\n1. The sky is blue.\n- Q: What colour is the sky? A: blue\n\n"
    assert split_edit(text) == ["The sky is blue.", "Q: What colour is the sky? A: blue"]
    from orchestrator.records import Context

    ctx = Context("c", "The passage.", ())
    items = qa_training_items(text, ctx, include_context=True)
    assert items[0] == TrainingItem("", "The passage.")
    assert items[2] == TrainingItem(
        "Q: What colour is the sky? A:", " blue", question="What colour is the sky?"
    )
