"""A local yes/no grader of no-context answers, in the manner of SEAL's grader (SEAL used GPT-4.1; here any
causal LM named in config, loaded locally — never a paid API).

The judge is shown (question, gold answer, student answer) and asked whether the student's answer is
correct. Its verdict is read from its log-probabilities: "yes" wins when the continuations ``yes``/``Yes``
are together more likely than ``no``/``No``. Nothing is generated, parsed or executed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

# SEAL's grading instructions, in our words: judge against the gold answer only; extra detail is fine, a
# missing or contradicted gold answer is not; style does not matter; answer with one word.
GRADER_PROMPT = (
    "You are a grading assistant. Decide whether the student's answer correctly answers the question, "
    "judging only against the gold answer and using no outside knowledge. The student's answer may add "
    "information, but it must convey the gold answer in full and must not contradict it. Ignore style, "
    "phrasing and details that do not change correctness. Respond with only 'yes' or 'no'.\n\n"
    "Question: {question}\nGold answer: {gold}\nStudent answer: {prediction}\n\n"
    "Is the student's answer correct? Respond 'yes' or 'no'."
)
PLAIN_SUFFIX = "\nAnswer:"  # without a chat template the verdict continues this line
YES, NO = ("yes", "Yes"), ("no", "No")


@dataclass(frozen=True)
class Verdict:
    """One graded answer: ``correct`` is ``logprob_yes > logprob_no``."""

    correct: bool
    logprob_yes: float  # log P(yes) + P(Yes) of the continuation
    logprob_no: float


class Judge:
    def __init__(self, model: Any, tokenizer: Any, use_chat_template: str = "auto", batch_size: int = 16):
        self.model = model.eval()
        self.tok = tokenizer
        self.batch_size = batch_size
        self.chat = use_chat_template == "always" or (
            use_chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))
        )

    def prompt(self, question: str, gold: str, prediction: str) -> str:
        """The grading prompt (values are inserted as plain text; nothing in them is interpreted)."""
        text = GRADER_PROMPT.format(question=question, gold=gold, prediction=prediction)
        if self.chat:
            return self.tok.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return text + PLAIN_SUFFIX

    def candidates(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The continuations read as yes and as no (after a chat header the reply starts without a space)."""
        space = "" if self.chat else " "
        return tuple(space + w for w in YES), tuple(space + w for w in NO)

    @torch.no_grad()
    def grade(self, triples: Sequence[tuple[str, str, str]]) -> list[Verdict]:
        """Grade ``(question, gold, prediction)`` triples."""
        yes, no = self.candidates()
        out: list[Verdict] = []
        for i in range(0, len(triples), self.batch_size):
            prompts = [self.prompt(*t) for t in triples[i : i + self.batch_size]]
            lp = self._continuation_logprobs(prompts, list(yes + no))  # (B, len(yes) + len(no))
            lp_yes = torch.logsumexp(lp[:, : len(yes)], dim=-1)
            lp_no = torch.logsumexp(lp[:, len(yes) :], dim=-1)
            out += [Verdict(bool(y > n), float(y), float(n)) for y, n in zip(lp_yes, lp_no)]
        return out

    def _continuation_logprobs(self, prompts: list[str], conts: list[str]) -> torch.Tensor:
        """(len(prompts), len(conts)) summed log-probabilities of each continuation after each prompt."""
        device = next(self.model.parameters()).device
        special = not self.chat  # a rendered chat template already holds its special tokens
        limit = _context_length(self.model)
        seqs, spans = [], []
        for p in prompts:
            pi = self.tok(p, add_special_tokens=special)["input_ids"]
            for c in conts:
                ci = self.tok(c, add_special_tokens=False)["input_ids"]
                seq = (pi + ci)[-limit:]  # too long for the model: keep the end (answer and verdict)
                seqs.append(seq)
                spans.append((len(seq) - len(ci), len(seq)))
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, s in enumerate(seqs):  # right padding: positions of real tokens are unchanged
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
        logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits, dim=-1).cpu()
        sums = [
            float(logp[j, a - 1 : b - 1].gather(-1, ids[j, a:b, None]).sum()) if b > a else -math.inf
            for j, (a, b) in enumerate(spans)
        ]
        return torch.tensor(sums).view(len(prompts), len(conts))


def _context_length(model: Any) -> int:
    cfg = model.config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 1 << 30)


def judge_accuracy(verdicts: Sequence[Verdict]) -> float:
    """Fraction of answers the judge calls correct."""
    return sum(v.correct for v in verdicts) / len(verdicts) if verdicts else 0.0
