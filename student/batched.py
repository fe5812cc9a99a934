"""Batched multi-edit adaptation: the LoRA adapters of E edits trained and scored together on one frozen base.

The result equals adapting to the edits one by one (:meth:`Student.evaluate_edit`; tested to 1e-4 in fp32):
each edit has its own peft adapter, initialised by peft under ``torch.manual_seed(seed)`` as the sequential
path does; its own batches (:func:`student.sequences.batch_schedule`); its own loss, normalised over its own
tokens; its own gradient clipping; and AdamW updates it only on steps where it has a batch, so an edit with
fewer batches is left untouched (optimizer state included) while the others go on.

Why rows are routed by hand: peft keeps several named adapters on one model and can *evaluate* a batch whose
rows use different adapters (``adapter_names=``), but it refuses that in training mode, and it runs one
sub-batch per adapter. So the adapters stay peft's own (``lora_A[name]``, ``lora_B[name]``, removed by
``unload()``), peft's own LoRA path is switched off, and a forward hook on each LoRA layer adds every row's
own adapter update with two batched matmuls. Rows are laid out edit-major in equal groups (group g = rows
``g*b .. g*b+b-1``), so group g gets ``x_g @ A_gᵀ @ B_gᵀ * scaling``, in training, in the gold-answer
forward pass and in KV-cached ``generate()`` alike.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from orchestrator.records import Context, StudentOutcome, StudentScore
from orchestrator.tasks.base import TrainingItem
from student.scoring import aggregate_score, gold_logprobs, greedy_answers
from student.sequences import IGNORE, Batch, batch_schedule, collate
from student.student import NO_USABLE_TEXT, Student, free_memory, lora_config, non_finite_loss, set_train_mode

log = logging.getLogger(__name__)


class MultiLoRA:
    """Context manager: inside, ``student.model`` is a peft model with one adapter per seed (``edit0``, ...),
    and forward passes run under :meth:`route`; on exit the adapters are unloaded (base weights bit-exact)."""

    def __init__(self, student: Student, seeds: list[int]):
        self.student = student
        self.seeds = list(seeds)
        self.names = [f"edit{i}" for i in range(len(seeds))]
        self.config = lora_config(student.cfg.adapt, student.model_type)
        self.model: Any = None
        self.layers: list[Any] = []
        self.params: list[list[torch.nn.Parameter]] = []  # [edit] -> its adapter's parameters
        self._hooks: list[Any] = []
        self._route: list[int] | None = None
        self._training = False
        self._stacked: dict[Any, tuple[torch.Tensor, torch.Tensor]] | None = None

    def __enter__(self) -> MultiLoRA:
        from peft import get_peft_model

        torch.manual_seed(self.seeds[0])
        self.model = self.student.model = get_peft_model(self.student.model, self.config, self.names[0])
        try:
            self._add_adapters()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _add_adapters(self) -> None:
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import LoraLayer

        self.layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
        odd = sorted({type(m).__name__ for m in self.layers if not isinstance(m, LoraLinear)})
        if odd:
            raise ValueError(
                f"batched adaptation routes LoRA on linear layers only, not {odd}: set "
                "adapt.edit_batch_size=1 or leave embeddings out of adapt.target_modules"
            )
        for name, seed in zip(self.names[1:], self.seeds[1:]):
            # peft's own per-layer init, visiting the layers in the order get_peft_model did, so adapter i
            # equals the sequential path's (torch.manual_seed(seed); get_peft_model). It is what add_adapter
            # does for already-wrapped layers, without re-matching every module name (~7x faster).
            torch.manual_seed(seed)
            self.model.peft_config[name] = self.config  # a full peft adapter: save_pretrained, state dicts
            for layer in self.layers:
                layer.update_layer(name, self.config.r, lora_alpha=self.config.lora_alpha, config=self.config)
        for layer in self.layers:
            layer.enable_adapters(
                False
            )  # peft's forward computes the base only; _hook adds the routed update
            self._hooks.append(layer.register_forward_hook(self._hook))
        self.params = [
            [p for layer in self.layers for p in (layer.lora_A[n].weight, layer.lora_B[n].weight)]
            for n in self.names
        ]
        for p in (p for ps in self.params for p in ps):
            p.requires_grad_(True)

    def __exit__(self, *exc: object) -> None:
        from peft import PeftModel

        for h in self._hooks:
            h.remove()
        self._hooks, self.layers, self.params = [], [], []
        if isinstance(self.student.model, PeftModel):
            self.student.model = self.student.model.unload()  # drops every adapter; base weights untouched
        self.student.model.eval()
        self.model = None

    @contextmanager
    def route(self, adapters: list[int], training: bool = False) -> Iterator[None]:
        """Forward passes inside take ``len(adapters)`` equal groups of rows, group g using adapter
        ``adapters[g]``. Outside training the stacked adapter weights are built once for all passes."""
        self._route, self._training = list(adapters), training
        if not training:
            with torch.no_grad():
                self._stacked = {layer: self._stack(layer) for layer in self.layers}
        try:
            yield
        finally:
            self._route, self._training, self._stacked = None, False, None

    def _stack(self, layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
        names = [self.names[g] for g in self._route or []]
        a = torch.stack([layer.lora_A[n].weight for n in names])  # (G, r, in)
        b = torch.stack([layer.lora_B[n].weight for n in names])  # (G, out, r)
        return a, b

    def _hook(self, layer: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        if self._route is None:
            raise RuntimeError("a MultiLoRA model ran outside route(...): rows have no adapter")
        a, b = self._stacked[layer] if self._stacked is not None else self._stack(layer)
        x = args[0]
        xs = x.reshape(a.shape[0], -1, x.shape[-1]).to(a.dtype)  # (G, rows*len, in)
        if self._training and self.config.lora_dropout > 0:
            xs = F.dropout(xs, self.config.lora_dropout)
        delta = torch.bmm(torch.bmm(xs, a.transpose(1, 2)), b.transpose(1, 2)) * layer.scaling[self.names[0]]
        return output + delta.reshape(output.shape).to(output.dtype)


def stack_groups(batches: list[Batch], pad_id: int) -> Batch:
    """One batch per edit laid out edit-major as equal groups of rows: each is right-padded to the widest and
    filled up to the most rows with copies of its first row whose labels are all IGNORE (compute, no loss)."""
    rows = max(b.input_ids.shape[0] for b in batches)
    width = max(b.input_ids.shape[1] for b in batches)
    ids, att, lab = [], [], []
    for b in batches:
        n, w = b.input_ids.shape
        extra = rows - n
        ids.append(_fill(F.pad(b.input_ids, (0, width - w), value=pad_id), extra))
        att.append(_fill(F.pad(b.attention_mask, (0, width - w), value=0), extra))
        labels = F.pad(b.labels, (0, width - w), value=IGNORE)
        lab.append(torch.cat([labels, labels.new_full((extra, width), IGNORE)]))
    return Batch(torch.cat(ids), torch.cat(att), torch.cat(lab))


def _fill(t: torch.Tensor, extra: int) -> torch.Tensor:
    return torch.cat([t, t[:1].expand(extra, -1)]) if extra else t


def edit_losses(logits: torch.Tensor, labels: torch.Tensor, groups: int) -> torch.Tensor:
    """``(G,)`` each edit's mean next-token loss over its own label tokens. transformers' built-in loss
    averages over every label token of the batch, which would weight edits by their token counts and couple
    them; the shift and the fp32 upcast are the same as its ``ForCausalLMLoss``."""
    shift = F.pad(labels, (0, 1), value=IGNORE)[:, 1:]
    per_token = F.cross_entropy(
        logits.float().flatten(0, 1), shift.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(groups, -1)
    return per_token.sum(1) / (shift != IGNORE).view(groups, -1).sum(1)


def train_adapters(ml: MultiLoRA, items: list[list[TrainingItem]]) -> list[tuple[float | None, str | None]]:
    """Train adapter i on ``items[i]``, all together. Per edit: (mean loss of its last epoch, error or None)."""
    s = ml.student
    a = s.cfg.adapt
    device = next(ml.model.parameters()).device
    plans = [_plan(len(it), a.epochs, a.batch_size, seed) for it, seed in zip(items, ml.seeds)]
    opt = torch.optim.AdamW([p for ps in ml.params for p in ps], lr=a.learning_rate, weight_decay=0.0)
    losses: list[dict[int, list[float]]] = [{} for _ in items]
    errors: list[str | None] = [None] * len(items)
    set_train_mode(ml.model, "lora")
    for step in range(max(len(p) for p in plans)):
        active = [e for e in range(len(items)) if errors[e] is None and step < len(plans[e])]
        if not active:
            break
        parts = [
            collate(s.tok, [items[e][j] for j in plans[e][step][1]], a.max_length, a.loss_on) for e in active
        ]
        batch = stack_groups(parts, s.tok.pad_token_id).to(device)
        with ml.route(active, training=True):
            out = ml.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        per_edit = edit_losses(out.logits, batch.labels, len(active))
        finite = torch.isfinite(per_edit)
        opt.zero_grad(set_to_none=True)
        if finite.any():
            per_edit[finite].sum().backward()  # edit e's parameters get exactly the gradient of its own loss
        for g, e in enumerate(active):
            value = float(per_edit[g].detach())
            if not finite[g]:
                errors[e] = non_finite_loss(value)
                for p in ml.params[e]:
                    p.grad = None  # AdamW skips parameters without a gradient
                continue
            if a.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(ml.params[e], a.max_grad_norm)
            losses[e].setdefault(plans[e][step][0], []).append(value)
        opt.step()
    ml.model.eval()
    return [
        (None, err) if err is not None else (_mean(losses[e][a.epochs - 1]), None)
        for e, err in enumerate(errors)
    ]


def _plan(n_items: int, epochs: int, batch_size: int, seed: int) -> list[tuple[int, list[int]]]:
    """The edit's steps in order, as (epoch, item indices)."""
    schedule = batch_schedule(n_items, epochs, batch_size, seed)
    return [(epoch, idx) for epoch, steps in enumerate(schedule) for idx in steps]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def score_adapters(ml: MultiLoRA, contexts: list[Context], which: list[int]) -> dict[int, StudentScore]:
    """Score adapter i (for i in ``which``) on ``contexts[i]``'s questions without the context: greedy
    KV-cached answers and gold-answer log-probs, every adapter's questions in the same batched passes."""
    s = ml.student
    out = {i: StudentScore(0.0, 0.0, 0.0, 0) for i in which if not contexts[i].questions}
    todo = [i for i in which if contexts[i].questions]
    if not todo:
        return out
    rows = max(len(contexts[i].questions) for i in todo)
    per_pass = max(1, s.cfg.eval_batch_size // rows)
    for k in range(0, len(todo), per_pass):
        part = todo[k : k + per_pass]
        prompts, golds = [], []
        for i in part:
            qs = list(contexts[i].questions)
            qs += [qs[-1]] * (rows - len(qs))  # filler rows repeat the last question; dropped below
            prompts += [s.task.qa_prompt(q.question) for q in qs]
            golds += [q.answer for q in qs]
        with ml.route(part):
            preds = greedy_answers(ml.model, s.tok, prompts, s.cfg.max_new_tokens, len(prompts))
            lps = gold_logprobs(ml.model, s.tok, prompts, golds, len(prompts))
        for j, i in enumerate(part):
            sl = slice(j * rows, j * rows + len(contexts[i].questions))
            out[i] = aggregate_score(preds[sl], golds[sl], lps[sl])
    return out


def evaluate_batch(
    student: Student, edit_texts: list[str], contexts: list[Context], seeds: list[int]
) -> list[StudentOutcome]:
    """:meth:`Student.evaluate_edit` for several edits at once, with the same outcomes (errors included)."""
    bases = [student.baseline(c) for c in contexts]
    items = [student.usable_items(t, c) for t, c in zip(edit_texts, contexts)]
    out = [StudentOutcome(b, None, 0.0, error=NO_USABLE_TEXT) for b in bases]  # usable edits replaced below
    live = [i for i, it in enumerate(items) if it is not None]
    if not live:
        return out
    try:
        with MultiLoRA(student, [seeds[i] for i in live]) as ml:
            trained = train_adapters(ml, [items[i] for i in live])  # type: ignore[misc]
            scores = score_adapters(
                ml, [contexts[i] for i in live], [g for g, t in enumerate(trained) if not t[1]]
            )
    except torch.OutOfMemoryError:
        free_memory()
        log.warning(
            "out of memory adapting %d edits together: retrying one at a time; lower adapt.edit_batch_size",
            len(live),
        )
        return [student.evaluate_edit(t, c, s) for t, c, s in zip(edit_texts, contexts, seeds)]
    for g, i in enumerate(live):
        loss, error = trained[g]
        out[i] = StudentOutcome(bases[i], scores.get(g), 0.0, error=error, train_loss=loss)
    return out
