"""No-context QA scoring: greedy answers (exact match, token F1) and gold-answer log-probability."""

from __future__ import annotations

import re
import string
import weakref
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from core.records import Context, StudentScore
from student.head import logits_at
from student.prompting import answer_continuation, qa_prompt


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    """SQuAD's exact match; with several gold answers, the best over them (its ``metric_max_over_ground_truths``)."""
    if not isinstance(gold, str):
        return max(exact_match(prediction, g) for g in gold)
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str | Sequence[str]) -> float:
    """SQuAD's token F1; with several gold answers, the best over them."""
    if not isinstance(gold, str):
        return max(token_f1(prediction, g) for g in gold)
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


@torch.no_grad()
def zero3_partitioned(model: Any) -> bool:
    """Whether ``model``'s parameters are ZeRO-3 partitions (DeepSpeed tags each with ``ds_id``) that are not
    all gathered now: a forward pass then gathers layers, a collective every rank must join. Inside
    ``GatheredParameters`` over the whole model a rank computes alone."""
    params = list(model.parameters())
    if not hasattr(params[0], "ds_id"):
        return False
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    return any(getattr(p, "ds_status", None) != ZeroParamStatus.AVAILABLE for p in params)


def greedy_completions(
    model: Any,
    tok: Any,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    position_limit: int | None = None,
    add_special_tokens: bool = True,
    stop_at_newline: bool = False,
) -> list[str]:
    """Greedy, KV-cached continuations of each prompt (left-padded batches; a row ends at EOS, a batch when
    all its rows have). With ``position_limit``, a batch never generates past that many positions (an empty
    text if it has no room). With ``stop_at_newline``, a row also ends with its first token that holds a
    newline: the text's first line is the same, and nothing after it is generated.
    ``add_special_tokens=False`` for prompts that already hold them (a rendered chat template)."""
    device = next(model.parameters()).device
    stop = [FirstLineDone(newline_tokens(tok, device))] if stop_at_newline else None
    # Ranks step together only for a model partitioned across them (ZeRO-3). transformers would decide from
    # the process-wide DeepSpeed config, which a ZeRO-3 teacher's GRPOConfig sets while unsharded students
    # score different edits on each rank: stepping together there would deadlock on unequal call counts.
    synced = zero3_partitioned(model)
    texts: list[str] = []
    for i in range(0, len(prompts), batch_size):
        enc = tok(
            prompts[i : i + batch_size],
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=add_special_tokens,
        ).to(device)
        width = enc["input_ids"].shape[1]
        new = max_new_tokens if position_limit is None else min(max_new_tokens, position_limit - width)
        if new <= 0:
            texts += [""] * enc["input_ids"].shape[0]
            continue
        out = model.generate(
            **enc,
            synced_gpus=synced,
            max_new_tokens=new,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
            stopping_criteria=stop,
        )
        texts += tok.batch_decode(out[:, width:], skip_special_tokens=True)
    return texts


def greedy_answers(
    model: Any,
    tok: Any,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    add_special_tokens: bool = True,
) -> list[str]:
    """Greedy answers to QA prompts: the continuation's first line, stripped (special tokens such as an
    end-of-turn token are never part of it)."""
    texts = greedy_completions(
        model,
        tok,
        prompts,
        max_new_tokens,
        batch_size,
        add_special_tokens=add_special_tokens,
        stop_at_newline=True,
    )
    return [t.split("\n")[0].strip() for t in texts]


_NEWLINE_TOKENS: weakref.WeakKeyDictionary[Any, torch.Tensor] = weakref.WeakKeyDictionary()


def newline_tokens(tok: Any, device: torch.device) -> torch.Tensor:
    """``(len(tok),)`` bool: which token ids decode (alone, as ``greedy_completions`` decodes) to text with a
    newline. Once per tokenizer (a 262k vocabulary takes about a second)."""
    if tok not in _NEWLINE_TOKENS:
        texts = tok.batch_decode([[i] for i in range(len(tok))], skip_special_tokens=True)
        _NEWLINE_TOKENS[tok] = torch.tensor(["\n" in t for t in texts], dtype=torch.bool)
    return _NEWLINE_TOKENS[tok].to(device)


class FirstLineDone:
    """A ``generate()`` stopping criterion: a row is done once its last token holds a newline (per row, on
    the device, no host sync). transformers then pads the row and stops when every row is done."""

    def __init__(self, newline: torch.Tensor):
        self.newline = newline

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        last, n = input_ids[:, -1], self.newline.shape[0]
        return (last < n) & self.newline[last.clamp(max=n - 1)]


@torch.no_grad()
def gold_logprobs(
    model: Any,
    tok: Any,
    prompts: list[str],
    answers: list[str],
    batch_size: int,
    add_special_tokens: bool = True,
) -> list[float]:
    """Mean per-token log-probability of each gold answer's tokens after its prompt (the answer follows the
    prompt as :func:`student.prompting.answer_continuation` says: directly after whitespace, else after a
    space). Teacher-forced, one forward pass per batch, the LM head on the answer tokens only: no decoding."""
    device = next(model.parameters()).device
    out: list[float] = []
    for i in range(0, len(prompts), batch_size):
        seqs, spans = [], []
        for p, a in zip(prompts[i : i + batch_size], answers[i : i + batch_size]):
            pi = tok(p, add_special_tokens=add_special_tokens)["input_ids"]
            ai = tok(answer_continuation(p, a), add_special_tokens=False)["input_ids"]
            seqs.append(pi + ai)
            spans.append((len(pi), len(pi) + len(ai)))
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, s in enumerate(seqs):
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
        # logits only where they predict an answer token: position t predicts token t + 1
        rows = torch.tensor([j for j, (a, b) in enumerate(spans) for _ in range(a, b)], dtype=torch.long)
        cols = torch.tensor([t for a, b in spans for t in range(a - 1, b - 1)], dtype=torch.long)
        logits = logits_at(model, ids.to(device), mask.to(device), rows.to(device), cols.to(device))
        lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[rows, cols + 1].to(device)[:, None])
        out += [float(part.mean()) for part in lp.squeeze(-1).split([b - a for a, b in spans])]
    return out


def score_context(
    model: Any,
    tok: Any,
    task: Any,
    context: Context,
    max_new_tokens: int,
    batch_size: int,
    chat: bool = False,
) -> StudentScore:
    """Score a student on a context's questions without the context in the prompt (``chat``: asked through
    its chat template, :mod:`student.prompting`)."""
    if not context.questions:
        return StudentScore(0.0, 0.0, 0.0, 0)
    prompts = [qa_prompt(task, tok, chat, q.question, context) for q in context.questions]
    answers = [q.answer for q in context.questions]
    preds = greedy_answers(model, tok, prompts, max_new_tokens, batch_size, add_special_tokens=not chat)
    lps = gold_logprobs(model, tok, prompts, answers, batch_size, add_special_tokens=not chat)
    return aggregate_score(preds, [q.golds for q in context.questions], lps)


def aggregate_score(preds: list[str], golds: Sequence[str | Sequence[str]], lps: list[float]) -> StudentScore:
    """One context's score from its questions' greedy answers (EM / F1 against each question's gold answers,
    the best of several) and reference-answer log-probabilities."""
    n = len(golds)
    return StudentScore(
        em=sum(exact_match(p, g) for p, g in zip(preds, golds)) / n,
        f1=sum(token_f1(p, g) for p, g in zip(preds, golds)) / n,
        logprob=sum(lps) / n,
        n_questions=n,
    )
