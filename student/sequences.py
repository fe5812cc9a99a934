"""Tokenising inner-loop training items into padded batches whose labels mask prompt and padding."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from orchestrator.tasks.base import TrainingItem

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
    """``(input_ids, labels)`` for one item: prompt ids (with the tokenizer's own special prefix, e.g. BOS),
    completion ids, then EOS. Prompt tokens get IGNORE labels unless ``loss_on == "all"``."""
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
