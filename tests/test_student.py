from __future__ import annotations

import pytest
import torch

from core.task import TrainingItem, qa_training_items, split_edit
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
    from core.records import Context

    ctx = Context("c", "The passage.", ())
    items = qa_training_items(text, ctx, include_context=True)
    assert items[0] == TrainingItem("", "The passage.")
    assert items[2] == TrainingItem(
        "Q: What colour is the sky? A:", " blue", question="What colour is the sky?"
    )


def _reference_gold_logprobs(model, tok, prompts, answers):
    """The gold-answer log-probs from full-vocabulary logits at every position (scoring.py before head.py)."""
    out = []
    for p, a in zip(prompts, answers):
        pi = tok(p, add_special_tokens=True)["input_ids"]
        ai = tok(" " + a.strip(), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([pi + ai])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
        lp = logp[0, len(pi) - 1 : len(ids[0]) - 1].gather(-1, ids[0, len(pi) :, None])
        out.append(float(lp.mean()))
    return out


@pytest.mark.parametrize("name", ["llama-t", "gpt2-t"])
def test_head_only_scores_and_loss_equal_full_logits(make_student, task, name):
    """Gold-answer log-probs (padded batches, logits at answer tokens only) and the sequential loop's loss
    (logits at label positions only) equal the full-logits computations, on the base and a peft-wrapped model."""
    from student.head import mean_loss, split_model
    from student.scoring import gold_logprobs

    s = make_student(name, learning_rate=3e-2)
    ctxs = task.train_contexts()[:2]
    qs = [q for c in ctxs for q in c.questions]
    prompts, golds = [task.qa_prompt(q.question) for q in qs], [q.answer for q in qs]
    batch = collate(s.tok, [TrainingItem(p, " " + g) for p, g in zip(prompts, golds)], 64)
    with s.adapted(task.training_items(_qa_edit(ctxs[0]), ctxs[0], include_context=False), seed=0):
        for model in (s.model, s.model.get_base_model()):  # peft-wrapped (LoRA trained), then its base
            assert split_model(model) is not None, "the fast path is taken"
            fast = gold_logprobs(model, s.tok, prompts, golds, batch_size=3)
            ref = _reference_gold_logprobs(model, s.tok, prompts, golds)
            assert fast == pytest.approx(ref, abs=1e-5, rel=0)
            with torch.no_grad():
                ref_loss = model(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels
                )
                assert abs(float(mean_loss(model, batch)) - float(ref_loss.loss)) <= 1e-5


def test_other_architectures_head_matches_forward():
    """logits_at equals the forward's logits for the other listed architectures, Gemma 3's final logit
    soft-capping included; for an unlisted one (Granite: its forward's logits_to_keep mask, which applies its
    own scaling); and for a head with a hook that is not DeepSpeed's (the full forward, then gathered)."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, GraniteConfig, Qwen2Config

    from student.head import head_path, logits_at

    small = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    small.update(num_attention_heads=2, num_key_value_heads=1, pad_token_id=0)
    configs = [
        Gemma3TextConfig(**small, head_dim=16, final_logit_softcapping=2.0, sliding_window=4),
        Qwen2Config(**small),
        GraniteConfig(**small, logits_scaling=4.0),  # not listed: runs the full forward
    ]
    torch.manual_seed(0)
    ids = torch.randint(1, 97, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    rows, cols = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 8, 5, 3, 7])
    for config in configs:
        model = AutoModelForCausalLM.from_config(config).eval()
        assert head_path(model) == ("keep" if config.model_type == "granite" else "split")
        with torch.no_grad():
            ref = model(input_ids=ids, attention_mask=mask).logits[rows, cols]
            fast = logits_at(model, ids, mask, rows, cols)
            # requested out of row-major order, one position twice: the keep path maps each back
            order = torch.tensor([4, 0, 2, 0])
            again = logits_at(model, ids, mask, rows[order], cols[order])
        assert torch.allclose(fast, ref, atol=1e-5, rtol=0), config.model_type
        assert torch.allclose(again, ref[order], atol=1e-5, rtol=0), config.model_type
        if config.model_type == "gemma3_text":
            assert ref.abs().max() < 2.0, "soft-capping applied"
        if config.model_type == "granite":
            assert not torch.allclose(
                ref, model.lm_head(model.model(ids, attention_mask=mask)[0])[rows, cols]
            )
        seen = []
        hook = model.get_output_embeddings().register_forward_hook(
            lambda m, i, o, seen=seen: seen.append(i[0].shape)
        )
        assert head_path(model) == "full"  # a hook of unknown kind on the head: the whole forward
        with torch.no_grad():
            assert torch.allclose(logits_at(model, ids, mask, rows, cols), ref, atol=1e-5, rtol=0)
        assert seen == [(3, 9, 32)]
        hook.remove()


def test_greedy_answers_stop_at_first_newline(make_student, task):
    """Rows stop generating at their first newline, with the same first lines as unstopped generation."""
    from student.scoring import greedy_answers, greedy_completions, newline_tokens

    s = make_student("gpt2-t")
    (nl,) = newline_tokens(s.tok, torch.device("cpu")).nonzero()[:, 0].tolist()
    with torch.no_grad():  # make the newline likelier: some rows emit it early, others never
        s.model.get_output_embeddings().weight[nl] *= 2
    prompts = [task.qa_prompt(q.question) for c in task.train_contexts() for q in c.questions]
    full = greedy_completions(s.model, s.tok, prompts, 12, 8)
    stopped = greedy_completions(s.model, s.tok, prompts, 12, 8, stop_at_newline=True)
    answers = greedy_answers(s.model, s.tok, prompts, 12, 8)
    assert any(t.split("\n", 1)[-1] != "" for t in full if "\n" in t), "text after a newline, unstopped"
    assert any("\n" not in t for t in full), "a row without a newline keeps its batch going"
    assert answers == [t.split("\n")[0].strip() for t in full]
    assert [t.split("\n")[0] for t in stopped] == [t.split("\n")[0] for t in full]
    assert all(t.split("\n", 1)[1] == "" for t in stopped if "\n" in t), "nothing generated after a newline"
    assert [t for t in stopped if "\n" not in t] == [t for t in full if "\n" not in t]


def test_lora_dropout_goes_one_at_a_time(make_student, task, caplog):
    """With adapt.lora_dropout > 0, evaluate_edits adapts one edit at a time (batched edits would share one
    dropout RNG stream) and equals evaluate_edit exactly; it says so once."""
    import logging

    s = make_student("llama-t", lora_dropout=0.1, edit_batch_size=8, epochs=2, learning_rate=1e-2)
    ref = make_student("llama-t", lora_dropout=0.1, edit_batch_size=1, epochs=2, learning_rate=1e-2)
    ctxs = task.train_contexts()[:3]
    texts, seeds = [_qa_edit(c) for c in ctxs], [11, 12, 13]
    with caplog.at_level(logging.INFO, logger="student.student"):
        outs = s.evaluate_edits(texts, list(ctxs), seeds)
        outs += s.evaluate_edits(texts[:1], list(ctxs[:1]), seeds[:1])
    assert sum("lora_dropout" in r.getMessage() for r in caplog.records) == 1
    singles = [
        ref.evaluate_edit(t, c, sd)
        for t, c, sd in zip(texts + texts[:1], list(ctxs) + [ctxs[0]], seeds + seeds[:1])
    ]
    assert all(o.error is None for o in outs)
    assert outs == singles
