"""One student: a causal LM that is adapted to an edit (LoRA or full fine-tuning), scored, and restored.

The inner loop is a small hand-written torch loop rather than an HF ``Trainer``: a Trainer per edit costs
more to construct than the ~10-50 steps it runs (SEAL builds one per request), and the batched multi-edit
loop (:mod:`student.batched`, used by :meth:`Student.evaluate_edits` for LoRA) needs direct control of the
step. Adapters come from peft; after scoring, ``unload()`` returns the base weights bit for bit (tested), and
full fine-tuning restores a saved copy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch

from core import faults
from core.config import AdaptConfig, StudentConfig
from core.records import Context, StudentOutcome, StudentScore
from core.task import TrainingItem, overrides
from student.batched import MultiLoRA, evaluate_batch, score_adapters
from student.head import mean_loss
from student.lifecycle import (
    OOM_ADAPT,
    EditError,
    free_memory,
    inject_lora,
    lora_config,
    non_finite_loss,
    repeat_seed,
    set_train_mode,
)
from student.prompting import answer_continuation, qa_prompt, uses_chat_template
from student.scoring import score_context
from student.sequences import batch_schedule, clean_text, collate, fit_items

log = logging.getLogger(__name__)


class Student:
    def __init__(self, cfg: StudentConfig, model: Any, tokenizer: Any, task: Any):
        self.cfg = cfg
        self.name = cfg.name
        self.model = model
        self.tok = tokenizer
        self.task = task
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._baselines: dict[str, StudentScore] = {}
        self.chat = uses_chat_template(tokenizer, cfg.use_chat_template)
        self._said_dropout = False  # logged once why edits go one at a time (edit_batch_size)

    def qa_prompt(self, question: str, context: Context | None = None) -> str:
        """The text this student is asked ``question`` with (its chat template when :attr:`chat`)."""
        return qa_prompt(self.task, self.tok, self.chat, question, context)

    def render_item(self, item: TrainingItem, context: Context) -> TrainingItem:
        """A question-answer training item in this student's own QA format (chat template when :attr:`chat`,
        the task's base prompt otherwise); other items unchanged."""
        if item.question is None or not self.chat:
            return item
        prompt = self.qa_prompt(item.question, context)
        return TrainingItem(
            prompt, answer_continuation(prompt, item.completion), item.question, rendered=True
        )

    @property
    def model_type(self) -> str:
        return str(self.model.config.model_type)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # -- scoring -------------------------------------------------------------------------------------------
    def score(self, context: Context) -> StudentScore:
        # a task that scores its own way (ARC: exact grid match), else greedy answers and gold log-probs
        own = self.task.score(
            self.model, self.tok, context, self.cfg.max_new_tokens, self.cfg.eval_batch_size
        )
        if own is not None:
            faults.point("score")
            return own
        score = score_context(
            self.model,
            self.tok,
            self.task,
            context,
            self.cfg.max_new_tokens,
            self.cfg.eval_batch_size,
            chat=self.chat,
        )
        faults.point("score")
        return score

    def baseline(self, context: Context) -> StudentScore:
        """The unadapted student's score on a context, computed once and cached."""
        if context.id not in self._baselines:
            self._baselines[context.id] = self.score(context)
        return self._baselines[context.id]

    def baselines(self, contexts: Iterable[Context]) -> None:
        """Score the unadapted student on the contexts not yet scored (cached)."""
        for c in contexts:
            self.baseline(c)

    # -- the batched path's placement (overridden by a sharded student) --------------------------------------
    @property
    def adapter_ranks(self) -> tuple[int, int] | None:
        """``(rank, world_size)`` when adapters train data-parallel over the ranks (a sharded student), else
        None: this process trains on every row (:func:`student.batched.train_adapters`)."""
        return None

    def score_adapters(
        self, ml: MultiLoRA, contexts: list[Context], which: list[int]
    ) -> dict[int, StudentScore]:
        """Score adapter i (for i in ``which``) on ``contexts[i]`` (:func:`student.batched.score_adapters`)."""
        return score_adapters(ml, contexts, which)

    # -- one edit ------------------------------------------------------------------------------------------
    def prepare(
        self,
        edit_text: str,
        context: Context,
        seed: int = 0,
        *,
        passage: bool = False,
        include_context: bool | None = None,
    ) -> tuple[list[TrainingItem], AdaptConfig, str | None, str | None]:
        """``(items, adapt, error, note)``: the edit's inner-loop training sequences fitted to adapt.max_length
        and adapt.max_sequences, the settings to train with (a task may set them per edit, e.g. an ARC
        directive), ``error`` saying why the edit cannot be used (items then empty), ``note`` what was cut.
        Every path prepares here: the loop's edits, and the eval protocols' edits and passages (``passage``:
        the text is the passage itself, one sequence, :meth:`core.task.Task.passage_item`)."""
        a = self.cfg.adapt
        text = clean_text(edit_text)
        if passage:
            items = [self.task.passage_item(context) or TrainingItem(prompt="", completion=text)]
        else:
            try:  # the task may refuse the edit, e.g. an ARC directive that is not valid JSON
                items, a = self.training_plan(text, context, seed, include_context)
            except ValueError as exc:
                return [], a, f"edit rejected by the task: {exc}", None
        if not items or all(not (it.completion.strip()) for it in items):
            return [], a, NO_USABLE_TEXT, None
        items = [self.render_item(it, context) for it in items]
        items, note = fit_items(self.tok, items, a.max_length, a.max_sequences, a.loss_on)
        if not items:
            return [], a, "edit has no trainable token", note
        return items, a, None, note

    def usable_items(
        self, edit_text: str, context: Context
    ) -> tuple[list[TrainingItem], str | None, str | None]:
        """``(items, error, note)`` of :meth:`prepare`, for paths that train with the student's own settings."""
        items, _, error, note = self.prepare(edit_text, context)
        return items, error, note

    def evaluate_edit(self, edit_text: str, context: Context, seed: int) -> StudentOutcome:
        """Adapt to the edit, score without the context, restore. Failures give a recorded zero reward.
        With ``adapt.eval_times`` > 1, the mean of that many updates (:meth:`evaluate_edits`)."""
        if self.cfg.adapt.eval_times > 1:
            return self.evaluate_edits([edit_text], [context], [seed])[0]
        return self.evaluate_once(edit_text, context, seed)

    def evaluate_once(self, edit_text: str, context: Context, seed: int) -> StudentOutcome:
        """One update on the edit (whatever ``adapt.eval_times`` says), scored and restored."""
        base = self.baseline(context)
        items, adapt, error, note = self.prepare(edit_text, context, seed)
        if error is not None:
            return StudentOutcome(base, None, 0.0, error=error, note=note)
        try:
            with self.adapted(items, seed, adapt) as loss:
                adapted = self.score(context)
        except EditError as exc:
            return StudentOutcome(base, None, 0.0, error=str(exc), note=note)
        except torch.OutOfMemoryError:
            if self.adapter_ranks is not None:
                raise  # a sharded student's ranks adapt together: one rank cannot record a failure alone
            free_memory()
            return StudentOutcome(base, None, 0.0, error=OOM_ADAPT, note=note)
        return StudentOutcome(base, adapted, 0.0, train_loss=loss, note=note)

    # -- several edits -------------------------------------------------------------------------------------
    @property
    def edit_batch_size(self) -> int:
        """Edits adapted together: ``adapt.edit_batch_size`` for LoRA without dropout; full fine-tuning, a
        quantized base (``model.quantization``) and LoRA with ``adapt.lora_dropout > 0`` go one at a time (the batched loop draws every edit's dropout masks
        from one RNG stream, so an edit's masks would depend on the edits that share its batch)."""
        a = self.cfg.adapt
        if a.method != "lora" or overrides(self.task, "training_items_for") or overrides(self.task, "score"):
            return 1  # per-edit settings, or a task's own scoring: one at a time
        if self.cfg.model.quantization and a.edit_batch_size > 1:
            if not self._said_dropout:
                log.info(
                    "%s: adapting edits one at a time: the batched loop reads plain Linear weights, and "
                    "model.quantization=%s stores them packed (peft's bitsandbytes layers adapt them instead)",
                    self.name,
                    self.cfg.model.quantization,
                )
                self._said_dropout = True
            return 1
        if a.lora_dropout > 0 and a.edit_batch_size > 1:
            if not self._said_dropout:
                log.info(
                    "%s: adapting edits one at a time, not %d together: with adapt.lora_dropout > 0 the batched "
                    "loop would not equal one-at-a-time adaptation (one dropout RNG stream for all edits)",
                    self.name,
                    a.edit_batch_size,
                )
                self._said_dropout = True
            return 1
        return a.edit_batch_size

    def evaluate_edits(
        self, edit_texts: list[str], contexts: list[Context], seeds: list[int]
    ) -> list[StudentOutcome]:
        """:meth:`evaluate_edit` for each edit, with the same results; LoRA edits are adapted and scored in
        batches of :attr:`edit_batch_size` (:mod:`student.batched`).

        ``adapt.eval_times`` = t > 1 (SEAL's ``eval_times``): each edit is adapted t times, from its seed and
        t - 1 seeds derived from it, and its adapted score is the mean of the t scores (the t updates of an
        edit share a batch like any other edits); an edit that fails in any update is a recorded failure."""
        t = self.cfg.adapt.eval_times
        if t <= 1:
            return self._evaluate_all(edit_texts, contexts, seeds)
        rep = [(e, c, repeat_seed(s, r)) for e, c, s in zip(edit_texts, contexts, seeds) for r in range(t)]
        outs = self._evaluate_all([e for e, _, _ in rep], [c for _, c, _ in rep], [s for _, _, s in rep])
        return [mean_outcome(outs[i * t : (i + 1) * t]) for i in range(len(edit_texts))]

    def _evaluate_all(
        self, edit_texts: list[str], contexts: list[Context], seeds: list[int]
    ) -> list[StudentOutcome]:
        n = self.edit_batch_size
        if n <= 1:
            return [self.evaluate_once(t, c, s) for t, c, s in zip(edit_texts, contexts, seeds)]
        out: list[StudentOutcome] = []
        for i in range(0, len(edit_texts), n):
            out += evaluate_batch(self, edit_texts[i : i + n], contexts[i : i + n], seeds[i : i + n])
        return out

    def training_plan(
        self, edit_text: str, context: Context, seed: int, include_context: bool | None = None
    ) -> tuple[list[TrainingItem], AdaptConfig]:
        """The edit's training items and the settings to train on them with. A task may provide
        ``training_items_for(edit_text, context, adapt, seed) -> (items, adapt)`` (ARC: items and per-edit
        learning rate / epochs from the teacher's directive); it raises ValueError for an unusable edit."""
        planned = self.task.training_items_for(edit_text, context, self.cfg.adapt, seed)
        if planned is not None:
            return planned
        if include_context is None:
            include_context = self.cfg.adapt.include_context
        return self.task.training_items(edit_text, context, include_context), self.cfg.adapt

    def adapted(
        self, items: list[TrainingItem], seed: int, adapt: AdaptConfig | None = None
    ) -> AbstractContextManager[float]:
        """Context manager: inside, the student is adapted to ``items`` (with ``adapt``, default the
        student's own settings) and the last epoch's loss is bound; on exit it is the base again, bit-exactly.
        Every driver keeps this contract (:class:`student.distributed.ShardedStudent` under ZeRO)."""
        return _Adapted(self, items, seed, adapt or self.cfg.adapt)

    def train_items(
        self, model: Any, items: list[TrainingItem], seed: int, adapt: AdaptConfig | None = None
    ) -> float:
        """Train ``model``'s trainable parameters on ``items``. Returns the mean loss of the last epoch.

        Each step is one padded pass: unlike the batched loop (:func:`student.batched.length_groups`) it does
        not split rows by length, since with dropout on (full fine-tuning in train mode, ``lora_dropout``)
        other pass shapes would draw other masks, so results would change."""
        a = adapt or self.cfg.adapt
        device = next(model.parameters()).device
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=a.learning_rate, weight_decay=0.0)
        set_train_mode(model, a.method)
        last = float("nan")
        for epoch in batch_schedule(len(items), a.epochs, a.batch_size, seed):
            losses = []
            for idx in epoch:
                batch = collate(self.tok, [items[j] for j in idx], a.max_length, a.loss_on).to(device)
                loss = mean_loss(model, batch)  # logits at label positions only (student/head.py)
                if not torch.isfinite(loss):
                    raise EditError(non_finite_loss(loss.item()))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if a.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, a.max_grad_norm)
                opt.step()
                faults.point("adapt")
                losses.append(loss.item())
            last = sum(losses) / len(losses)
        model.eval()
        return last


class _Adapted:
    """Adapt on enter, restore bit-exactly on exit (also on error)."""

    def __init__(self, student: Student, items: list[TrainingItem], seed: int, adapt: AdaptConfig):
        self.s, self.items, self.seed, self.a = student, items, seed, adapt
        self._snapshot: dict[str, torch.Tensor] | None = None

    def __enter__(self) -> float:
        s, a = self.s, self.a
        torch.manual_seed(self.seed)
        if a.method == "lora":
            s.model = inject_lora(s.model, lora_config(a, s.model_type))
        else:
            self._snapshot = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
            for p in s.model.parameters():
                p.requires_grad_(True)
        try:
            loss = s.train_items(s.model, self.items, self.seed, a)
        except BaseException:
            self._restore()
            raise
        if not math.isfinite(loss):
            self._restore()
            raise EditError(non_finite_loss(loss))
        return loss

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        s = self.s
        if self.a.method == "lora":
            from peft import PeftModel

            if isinstance(s.model, PeftModel):
                s.model = s.model.unload()  # drops the LoRA layers; base weights are untouched
        elif self._snapshot is not None:
            s.model.load_state_dict(self._snapshot)
            self._snapshot = None
            for p in s.model.parameters():
                p.requires_grad_(False)
        s.model.eval()


NO_USABLE_TEXT = "edit has no usable text"


def mean_outcome(outcomes: list[StudentOutcome]) -> StudentOutcome:
    """One edit's outcome from its ``eval_times`` updates: the mean adapted score, or the first failure."""
    first = outcomes[0]
    failed = next((o for o in outcomes if o.adapted is None), None)
    if failed is not None:
        return failed
    n = len(outcomes)
    adapted = [o.adapted for o in outcomes if o.adapted is not None]
    mean = StudentScore(
        em=sum(a.em for a in adapted) / n,
        f1=sum(a.f1 for a in adapted) / n,
        logprob=sum(a.logprob for a in adapted) / n,
        n_questions=adapted[0].n_questions,
    )
    losses = [o.train_loss for o in outcomes if o.train_loss is not None]
    loss = sum(losses) / len(losses) if losses else None
    return StudentOutcome(first.baseline, mean, 0.0, train_loss=loss, note=first.note)
