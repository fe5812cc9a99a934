"""Tokenising inner-loop training items into padded batches whose labels mask prompt and padding."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from core.task import TrainingItem

IGNORE = -100  # label value the loss skips


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L) right-padded
    attention_mask: torch.Tensor  # (B, L) 1 on real tokens
    labels: torch.Tensor  # (B, L) IGNORE on prompt and padding tokens

    def to(self, device: torch.device) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))


def encode_item(
    tok: Any, item: TrainingItem, max_length: int, loss_on: str = "completion"
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for one item: prompt ids (with the tokenizer's own special prefix, e.g. BOS,
    unless the prompt is a rendered chat template that holds it), completion ids, then EOS. Prompt tokens get IGNORE labels unless ``loss_on == "all"``."""
    if item.rendered:  # a rendered chat template already holds its special tokens
        prompt_ids = tok(item.prompt, add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tok(item.prompt, add_special_tokens=True)["input_ids"] if item.prompt else _prefix(tok)
    completion_ids = tok(item.completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = (prompt_ids + completion_ids)[:max_length]
    n_prompt = min(len(prompt_ids), len(ids))
    labels = list(ids)
    if loss_on == "completion":
        labels[:n_prompt] = [IGNORE] * n_prompt
    return ids, labels


def _prefix(tok: Any) -> list[int]:
    """What the tokenizer puts before any text (BOS for Llama-style tokenizers, nothing for GPT-2 style)."""
    return tok("", add_special_tokens=True)["input_ids"]


def collate(tok: Any, items: list[TrainingItem], max_length: int, loss_on: str = "completion") -> Batch:
    """Right-pad a list of items; padding gets attention 0 and label IGNORE."""
    return pad_batch([encode_item(tok, it, max_length, loss_on) for it in items], tok.pad_token_id)


def pad_batch(encoded: list[tuple[list[int], list[int]]], pad: int) -> Batch:
    """Right-pad ``(input_ids, labels)`` pairs from :func:`encode_item` into a :class:`Batch`."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    for i, (ids, lab) in enumerate(encoded):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels[i, : len(lab)] = torch.tensor(lab)
    return Batch(input_ids, attention, labels)


def clean_text(text: str) -> str:
    """Make any string tokenizable: lone surrogates (binary junk decoded with ``surrogateescape``, or a bad
    ``\\ud800`` escape in a JSON file) are replaced, since tokenizers reject them with a cryptic TypeError."""
    return text.encode("utf-8", "replace").decode("utf-8")


def fit_items(
    tok: Any, items: list[TrainingItem], max_length: int, max_sequences: int, loss_on: str = "completion"
) -> tuple[list[TrainingItem], str | None]:
    """Bound an edit's inner-loop work: keep the first ``max_sequences`` items; count the items that
    :func:`encode_item` will cut at ``max_length`` tokens, and drop those left without a trained token
    (prompt as long as the limit, ``loss_on=completion``), whose loss would be NaN. Returns the items
    and a note of what was cut (``None`` when nothing was)."""
    notes = []
    if len(items) > max_sequences:
        notes.append(f"kept the first {max_sequences} of {len(items)} sequences (adapt.max_sequences)")
        items = items[:max_sequences]
    kept, cut, empty = [], 0, 0
    for it in items:
        ids, labels = encode_item(tok, it, max_length + 1, loss_on)  # one more token tells if it is cut
        if len(ids) > max_length:
            cut += 1
        if all(label == IGNORE for label in labels[:max_length]):
            empty += 1
            continue
        kept.append(it)
    if cut:
        notes.append(f"cut {cut} sequence(s) to {max_length} tokens (adapt.max_length)")
    if empty:
        notes.append(f"dropped {empty} sequence(s) with no trained token within adapt.max_length")
    return kept, "; ".join(notes) or None


def batch_schedule(n_items: int, epochs: int, batch_size: int, seed: int) -> list[list[list[int]]]:
    """The inner loop's data order, ``[epoch][step] -> item indices``: each epoch shuffles the indices with
    ``random.Random(seed)`` (the same list, shuffled again) and cuts them into batches of ``batch_size``.
    Sequential and batched adaptation both follow it, so an edit sees the same batches in both."""
    rng = random.Random(seed)
    order = list(range(n_items))
    schedule = []
    for _ in range(epochs):
        rng.shuffle(order)
        schedule.append([order[i : i + batch_size] for i in range(0, n_items, batch_size)])
    return schedule
