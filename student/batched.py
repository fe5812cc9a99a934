"""Batched multi-edit adaptation: the LoRA adapters of E edits trained and scored together on one frozen base.

The result equals adapting to the edits one by one (:meth:`Student.evaluate_edit`; tested to 1e-4 in fp32):
each edit has its own peft adapter, initialised by peft under ``torch.manual_seed(seed)`` as the sequential
path does; its own batches (:func:`student.sequences.batch_schedule`); its own loss, normalised over its own
tokens; its own gradient clipping; and AdamW updates it only on steps where it has a batch, so an edit with
fewer batches is left untouched (optimizer state included) while the others go on.

Why a hand-written batched LoRA: peft keeps several named adapters on one model and can *evaluate* a batch
whose rows use different adapters (``adapter_names=``), but it refuses that in training mode, runs one
sub-batch per adapter, and adding an adapter costs more than the few steps it trains (peft's per-layer setup
was a third of this loop's time on a 5M-parameter student). So peft is used to decide which modules get LoRA
(:func:`lora_targets`, once per model), the adapters' initial weights are peft's own random draws, replayed
(:meth:`MultiLoRA._init`; the equivalence test compares them with peft's), and a forward hook on each target
module adds every row's own adapter update with two batched matmuls, the second fused with the add
(``baddbmm``). Rows are laid out edit-major (each edit's rows consecutive) and row n of edit g gets
``x_n @ A_gᵀ @ (scaling * B_gᵀ)``, in training, in the gold-answer forward pass and in KV-cached
``generate()`` alike. When every edit has the same number of rows the batch is viewed as (edits, rows x
length, features); otherwise each row gets a gathered copy of its edit's (small, rank-r) matrices, so that no
edit is padded with filler rows through the model. The base model is never modified: removing the hooks
restores it. The loss needs logits at label positions only: the LM head runs there alone
(:func:`student.head.token_losses`; the head is not a LoRA target). A step whose rows differ much in length
(a passage among QA lines) runs in two padded passes, short rows and long rows (:func:`length_groups`). With
``adapt.lora_dropout > 0`` the edits' dropout masks come from one RNG stream, so :meth:`Student.evaluate_edits`
goes one at a time then.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from core import faults
from core.config import AdaptConfig
from core.distributed import all_reduce
from core.records import Context, StudentOutcome, StudentScore
from core.task import TrainingItem
from student.head import token_losses
from student.lifecycle import OOM_BATCH, free_memory, inject_lora, lora_config, non_finite_loss
from student.scoring import aggregate_score, gold_logprobs, greedy_answers
from student.sequences import IGNORE, batch_schedule, encode_item, pad_batch

if TYPE_CHECKING:  # a type only: student.student imports this module
    from student.student import Student

log = logging.getLogger(__name__)


class MultiLoRA:
    """Context manager: inside, the student's model carries one LoRA adapter per seed on every module peft
    would target, and forward passes run under :meth:`route`; on exit the hooks are removed. The base model
    itself is never modified, so it is the base again, bit for bit."""

    def __init__(self, student: Student, seeds: list[int], adapt: AdaptConfig | None = None):
        self.student = student
        self.model = student.model
        self.seeds = list(seeds)
        self.adapt = adapt or student.cfg.adapt  # every adapter's settings (a task may set them per edit)
        self.config = lora_config(self.adapt, student.model_type)
        self.scaling = self.config.lora_alpha / self.config.r  # peft's (no rsLoRA)
        self.targets: list[LoraTarget] = []
        self.weights: list[list[tuple[torch.Tensor, torch.Tensor]]] = []  # [edit][target] -> (A, B)
        self.params: list[list[torch.Tensor]] = []  # [edit] -> its adapter's parameters
        self._hooks: list[Any] = []
        self._route: _Route | None = None
        self._cached: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    def __enter__(self) -> MultiLoRA:
        self.targets = lora_targets(self.model, self.config)
        modules = [self.model.get_submodule(t.name) for t in self.targets]
        devices = [m.weight.device for m in modules]
        self.weights = [self._init(seed, devices) for seed in self.seeds]
        self.params = [[t for ab in w for t in ab] for w in self.weights]
        for k, module in enumerate(modules):
            self._hooks.append(
                module.register_forward_hook(lambda m, args, out, k=k: self._hook(k, args, out))
            )
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.model.eval()

    def _init(self, seed: int, devices: list[torch.device]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Adapter weights equal to peft's under ``torch.manual_seed(seed); get_peft_model(...)``: the same
        random draws in the same order (per target, as ``LoraLayer.update_layer`` does: ``nn.Linear(in, r)``,
        ``nn.Linear(r, out)``, then ``kaiming_uniform_`` on A and zeros on B), in fp32 as peft keeps them."""
        torch.manual_seed(seed)
        out = []
        for t, device in zip(self.targets, devices):
            a = torch.nn.Linear(t.in_features, self.config.r, bias=False)
            b = torch.nn.Linear(self.config.r, t.out_features, bias=False)
            torch.nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            torch.nn.init.zeros_(b.weight)
            out.append(
                (a.weight.detach().to(device).requires_grad_(), b.weight.detach().to(device).requires_grad_())
            )
        return out

    def adapter_state(self, i: int) -> dict[str, torch.Tensor]:
        """Adapter i under the keys of peft's ``get_peft_model_state_dict`` (to compare or save with peft)."""
        out = {}
        for t, (a, b) in zip(self.targets, self.weights[i]):
            out[f"base_model.model.{t.name}.lora_A.weight"] = a.detach()
            out[f"base_model.model.{t.name}.lora_B.weight"] = b.detach()
        return out

    @contextmanager
    def route(self, adapters: list[int], rows: list[int], training: bool = False) -> Iterator[None]:
        """Forward passes inside take batches of ``sum(rows)`` rows: ``rows[g]`` consecutive rows for adapter
        ``adapters[g]``, in that order. Outside training the adapter matrices are stacked once for all passes
        (every decoding step of ``generate()``)."""
        device = next(self.model.parameters()).device
        index = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(rows)).to(device)
        self._route = _Route(list(adapters), len(set(rows)) == 1, index, training)
        if not training:
            with torch.no_grad():
                self._cached = {k: self._matrices(k) for k in range(len(self.targets))}
        try:
            yield
        finally:
            self._route, self._cached = None, None

    def _matrices(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Target k's routed ``Aᵀ`` (G, in, r) and ``scaling * Bᵀ`` (G, r, out), one per edit when every edit
        has the same number of rows, else gathered per row (N, in, r), (N, r, out)."""
        route = self._route
        assert route is not None
        a = torch.stack([self.weights[g][k][0] for g in route.adapters]).transpose(1, 2)
        b = torch.stack([self.weights[g][k][1] for g in route.adapters]).transpose(1, 2) * self.scaling
        if not route.uniform:
            a, b = a.index_select(0, route.index), b.index_select(0, route.index)
        return a, b

    def _hook(self, k: int, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        route = self._route
        if route is None:
            raise RuntimeError("a MultiLoRA model ran outside route(...): its rows have no adapter")
        a, b = self._cached[k] if self._cached is not None else self._matrices(k)
        x = args[0].to(a.dtype)
        if route.training and self.config.lora_dropout > 0:
            x = F.dropout(x, self.config.lora_dropout)
        groups = a.shape[0]  # edits, or rows when edits have different numbers of rows
        xa = torch.bmm(x.reshape(groups, -1, x.shape[-1]), a)
        out = torch.baddbmm(output.reshape(groups, -1, output.shape[-1]).to(a.dtype), xa, b)
        return out.reshape(output.shape).to(output.dtype)


@dataclass
class _Route:
    adapters: list[int]  # the adapter of each edit's rows
    uniform: bool  # every edit has the same number of rows
    index: torch.Tensor  # (N,) the edit of each row
    training: bool


@dataclass(frozen=True)
class LoraTarget:
    name: str  # module path in the model, e.g. model.layers.0.self_attn.q_proj
    in_features: int
    out_features: int


_TARGETS: weakref.WeakKeyDictionary[Any, dict[str, list[LoraTarget]]] = weakref.WeakKeyDictionary()


def lora_targets(model: Any, config: Any) -> list[LoraTarget]:
    """The modules peft puts LoRA on for ``config``, in the order it initialises them. Found once per model
    and target list, by letting peft wrap the model and unloading it (base weights untouched)."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    key = repr(
        sorted(config.target_modules) if isinstance(config.target_modules, set) else config.target_modules
    )
    cached = _TARGETS.setdefault(model, {})
    if key not in cached:
        if config.init_lora_weights is not True or config.use_rslora or config.use_dora or config.lora_bias:
            raise ValueError("batched adaptation supports plain LoRA only; set adapt.edit_batch_size=1")
        rng = torch.random.get_rng_state()
        peft_model = inject_lora(model, config)
        try:
            layers = [
                (n, m) for n, m in peft_model.base_model.model.named_modules() if isinstance(m, LoraLayer)
            ]
        finally:
            peft_model.unload()
            torch.random.set_rng_state(rng)
        odd = sorted({type(m).__name__ for _, m in layers if not isinstance(m, LoraLinear)})
        if odd:
            raise ValueError(
                f"batched adaptation routes LoRA on linear layers only, not {odd}: set "
                "adapt.edit_batch_size=1 or leave embeddings out of adapt.target_modules"
            )
        cached[key] = [LoraTarget(n, m.in_features, m.out_features) for n, m in layers]
    return cached[key]


def edit_losses(losses: torch.Tensor, token_rows: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``(G,)`` each edit's mean next-token loss over its own label tokens (edit g owns ``rows[g]``
    consecutive rows), from :func:`student.head.token_losses`' row-major ``(K,)`` token losses and their rows.
    transformers' built-in loss averages over every label token of the batch, which would weight edits by
    their token counts and couple them. An edit without a label token gets NaN (0 / 0), as in its own
    sequential loss."""
    sums, counts = edit_sums(losses, token_rows, rows)
    return sums / counts


def edit_sums(
    losses: torch.Tensor, token_rows: torch.Tensor, rows: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sums, counts)``, both ``(G,)``: each edit's summed token loss and its number of label tokens."""
    edit_of_row = torch.repeat_interleave(
        torch.arange(len(rows), device=losses.device), torch.tensor(rows, device=losses.device)
    )
    counts = torch.bincount(edit_of_row[token_rows], minlength=len(rows))
    # row-major order keeps each edit's tokens consecutive
    sums = torch.stack([part.sum() for part in losses.split(counts.tolist())])
    return sums, counts


def step_losses(
    ml: MultiLoRA,
    active: list[int],
    rows: list[list[tuple[list[int], list[int]]]],
    shard: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``(G,)`` the mean loss of each active edit (``active[g]``, the adapter trained on ``rows[g]``, its
    encoded sequences this step). The rows go through the model edit-major, in one padded pass or, where that
    saves enough padding (:func:`length_groups`), two: the shorter rows and the longer ones, each in their
    order. Rows are independent in the model (the base is in eval mode, no dropout), so only float rounding
    tells the two apart.

    ``shard = (rank, world_size)``: this rank runs every world_size-th row of each pass, and each edit's sum
    over those rows is divided by the edit's label tokens over *all* ranks' rows, so the ranks' results add up
    to the one-process means (the caller all-reduces). Every rank runs the same passes, a rank left without a
    row of a pass running a row with no label (nothing added): a ZeRO-3 base gathers its layers in forward
    and backward, which every rank must join."""
    device = next(ml.model.parameters()).device
    flat = [(g, r) for g, rs in enumerate(rows) for r in rs]
    sums = torch.zeros(len(rows), device=device)
    counts = torch.zeros(len(rows), dtype=torch.long, device=device)
    for group in length_groups([len(r[0]) for _, r in flat]):
        encoded = [flat[i][1] for i in group]
        owners = [flat[i][0] for i in group]
        if shard is not None:
            rank, world = shard
            labelled = [sum(label != IGNORE for label in labels[1:]) for _, labels in encoded]
            counts = counts.index_add(
                0, torch.tensor(owners, device=device), torch.tensor(labelled, device=device)
            )
            encoded, owners = encoded[rank::world], owners[rank::world]
            if not encoded:
                ids = flat[group[0]][1][0]
                encoded, owners = [(ids, [IGNORE] * len(ids))], [flat[group[0]][0]]
        edits = sorted(set(owners))
        sub_rows = [owners.count(g) for g in edits]
        batch = pad_batch(encoded, ml.student.tok.pad_token_id).to(device)
        with ml.route([active[g] for g in edits], sub_rows, training=True):
            s, c = edit_sums(*token_losses(ml.model, batch), sub_rows)  # logits at label positions only
        index = torch.tensor(edits, device=device)
        sums = sums.index_add(0, index, s)
        if shard is None:
            counts = counts.index_add(0, index, c)
    return sums / counts


def length_groups(lengths: list[int], min_saving: float = 0.25) -> list[list[int]]:
    """The row indices (each group in order) of one step's forward passes: one pass, every row padded to the
    longest, unless splitting the rows at some length into two passes computes at least ``min_saving`` fewer
    padded positions (e.g. a passage among short QA lines, ``adapt.include_context``)."""
    n, longest = len(lengths), max(lengths)
    best, cut = n * longest, None
    for t in sorted(set(lengths))[:-1]:
        short = sum(length <= t for length in lengths)
        cost = short * t + (n - short) * longest
        if cost < best:
            best, cut = cost, t
    if cut is None or best > (1 - min_saving) * n * longest:
        return [list(range(n))]
    return [[i for i, x in enumerate(lengths) if x <= cut], [i for i, x in enumerate(lengths) if x > cut]]


def train_adapters(ml: MultiLoRA, items: list[list[TrainingItem]]) -> list[tuple[float | None, str | None]]:
    """Train adapter i on ``items[i]``, all together. Per edit: (mean loss of its last epoch, error or None).

    A student with :attr:`~student.student.Student.adapter_ranks` (a sharded student under a launcher) trains
    data-parallel: each rank runs its share of every step's rows (:func:`step_losses`), the losses and the
    adapters' gradients are summed over the ranks, and every rank then takes the same clipped AdamW step, so
    every rank holds the same adapters, equal to one process's up to float rounding."""
    s, a = ml.student, ml.adapt
    shard = s.adapter_ranks
    encoded = [[encode_item(s.tok, it, a.max_length, a.loss_on) for it in its] for its in items]
    plans = [_plan(len(it), a.epochs, a.batch_size, seed) for it, seed in zip(items, ml.seeds)]
    # foreach: one multi-tensor update over every edit's tensors (same update rule as the sequential path)
    opt = torch.optim.AdamW(
        [p for ps in ml.params for p in ps], lr=a.learning_rate, weight_decay=0.0, foreach=True
    )
    losses: list[dict[int, list[float]]] = [{} for _ in items]
    errors: list[str | None] = [None] * len(items)
    ml.model.eval()  # as the sequential LoRA path (set_train_mode): no base dropout
    for step in range(max(len(p) for p in plans)):
        active = [e for e in range(len(items)) if errors[e] is None and step < len(plans[e])]
        if not active:
            break
        per_edit = step_losses(
            ml, active, [[encoded[e][j] for j in plans[e][step][1]] for e in active], shard
        )
        values = per_edit.detach().clone()
        if shard is not None:
            all_reduce(values)  # each edit's mean loss over every rank's rows: the ranks decide alike below
        finite = torch.isfinite(values)
        opt.zero_grad(set_to_none=True)
        if finite.any():
            per_edit[finite].sum().backward()  # edit e's parameters get exactly the gradient of its own loss
            if shard is not None:
                reduce_grads([p for g, e in enumerate(active) if finite[g] for p in ml.params[e]])
        for g, e in enumerate(active):
            value = float(values[g])
            if not finite[g]:
                errors[e] = non_finite_loss(value)
                for p in ml.params[e]:
                    p.grad = None  # AdamW skips parameters without a gradient
                continue
            if a.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(ml.params[e], a.max_grad_norm, foreach=True)
            losses[e].setdefault(plans[e][step][0], []).append(value)
        opt.step()
        faults.point("adapt")  # test-only fault injection (core/faults.py), as in the sequential loop
    ml.model.eval()
    return [
        (None, err) if err is not None else (_mean(losses[e][a.epochs - 1]), None)
        for e, err in enumerate(errors)
    ]


def _plan(n_items: int, epochs: int, batch_size: int, seed: int) -> list[tuple[int, list[int]]]:
    """The edit's steps in order, as (epoch, item indices)."""
    schedule = batch_schedule(n_items, epochs, batch_size, seed)
    return [(epoch, idx) for epoch, steps in enumerate(schedule) for idx in steps]


def reduce_grads(params: list[torch.Tensor]) -> None:
    """Sum the parameters' gradients over the ranks in one flat all-reduce (a parameter without a gradient on
    this rank, its edit having no row here, contributes zeros). The adapters are small and replicated on every
    rank, as DDP keeps a model: only their gradients travel."""
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce(flat)
    for p, part in zip(params, flat.split([g.numel() for g in grads])):
        p.grad = part.view_as(p)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def score_adapters(ml: MultiLoRA, contexts: list[Context], which: list[int]) -> dict[int, StudentScore]:
    """Score adapter i (for i in ``which``) on ``contexts[i]``'s questions without the context
    (:func:`adapter_answers`)."""
    answers = adapter_answers(ml, {i: [contexts[i]] for i in which})
    out = {}
    for i in which:
        (preds, lps), golds = answers[i], [q.golds for q in contexts[i].questions]
        out[i] = aggregate_score(preds, golds, lps) if golds else StudentScore(0.0, 0.0, 0.0, 0)
    return out


def adapter_answers(
    ml: MultiLoRA, contexts: dict[int, list[Context]]
) -> dict[int, tuple[list[str], list[float]]]:
    """For each adapter i in ``contexts``: greedy KV-cached no-context answers and mean gold-answer log-probs
    of every question of ``contexts[i]`` (passage by passage, question by question), asked as
    :meth:`Student.qa_prompt` asks (no special tokens added for a chat student). Every adapter's questions go
    through the same batched passes of at most ``eval_batch_size`` questions, an adapter's questions kept
    together (one with more has passes of its own)."""
    s = ml.student
    qs = {i: [(q, c) for c in cs for q in c.questions] for i, cs in contexts.items()}
    out: dict[int, tuple[list[str], list[float]]] = {i: ([], []) for i in contexts}
    todo = [i for i in contexts if qs[i]]
    for part in _passes(todo, [len(qs[i]) for i in todo], s.cfg.eval_batch_size):
        rows = [qs[i][a:b] for i, a, b in part]
        prompts = [s.qa_prompt(q.question, c) for r in rows for q, c in r]
        golds = [q.answer for r in rows for q, _ in r]
        special = not s.chat
        with ml.route([i for i, _, _ in part], [len(r) for r in rows]):
            preds = greedy_answers(ml.model, s.tok, prompts, s.cfg.max_new_tokens, len(prompts), special)
            lps = gold_logprobs(ml.model, s.tok, prompts, golds, len(prompts), special)
        start = 0
        for (i, _, _), r in zip(part, rows):
            out[i][0].extend(preds[start : start + len(r)])
            out[i][1].extend(lps[start : start + len(r)])
            start += len(r)
    return out


def _passes(todo: list[int], sizes: list[int], limit: int) -> list[list[tuple[int, int, int]]]:
    """Scoring passes of at most ``limit`` questions, each a list of ``(adapter, start, end)``: its questions
    ``start:end``. Adapters are packed whole; one with more than ``limit`` questions gets passes of its own."""
    passes: list[list[tuple[int, int, int]]] = []
    used = limit
    for i, n in zip(todo, sizes):
        if n > limit:
            passes += [[(i, a, min(a + limit, n))] for a in range(0, n, limit)]
            used = limit
            continue
        if used + n > limit:
            passes.append([])
            used = 0
        passes[-1].append((i, 0, n))
        used += n
    return passes


def evaluate_batch(
    student: Student, edit_texts: list[str], contexts: list[Context], seeds: list[int]
) -> list[StudentOutcome]:
    """:meth:`Student.evaluate_edit` for several edits at once, with the same outcomes (errors included)."""
    student.baselines(contexts)
    bases = [student.baseline(c) for c in contexts]
    prepared = [student.usable_items(t, c) for t, c in zip(edit_texts, contexts)]
    items = [it if err is None else None for it, err, _ in prepared]
    notes = [note for _, _, note in prepared]
    # Unusable edits keep their recorded reason; usable ones are replaced below.
    out = [StudentOutcome(b, None, 0.0, error=err, note=note) for b, (_, err, note) in zip(bases, prepared)]
    live = [i for i, it in enumerate(items) if it is not None]
    if not live:
        return out
    try:
        with MultiLoRA(student, [seeds[i] for i in live]) as ml:
            trained = train_adapters(ml, [it for it in items if it is not None])
            scores = student.score_adapters(
                ml, [contexts[i] for i in live], [g for g, t in enumerate(trained) if not t[1]]
            )
    except torch.OutOfMemoryError:
        if student.adapter_ranks is not None:
            raise  # ranks adapt together: one rank falling back alone would leave the others in a collective
        free_memory()
        log.warning(OOM_BATCH, len(live))
        return [student.evaluate_once(t, c, s) for t, c, s in zip(edit_texts, contexts, seeds)]
    for g, i in enumerate(live):
        loss, error = trained[g]
        out[i] = StudentOutcome(bases[i], scores.get(g), 0.0, error=error, train_loss=loss, note=notes[i])
    return out
