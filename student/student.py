"""One student: a causal LM that is adapted to an edit (LoRA or full fine-tuning), scored, and restored.

The inner loop is a small hand-written torch loop rather than an HF ``Trainer``: a Trainer per edit costs
more to construct than the ~10-50 steps it runs (SEAL builds one per request), and the batched multi-edit
loop that replaces it needs direct control of the step. Adapters come from peft; after scoring,
``unload()`` returns the base weights bit for bit (tested), and full fine-tuning restores a saved copy.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import torch

from orchestrator.config import AdaptConfig, StudentConfig
from orchestrator.records import Context, StudentOutcome, StudentScore
from orchestrator.tasks.base import TrainingItem
from student.scoring import score_context
from student.sequences import collate

log = logging.getLogger(__name__)


class EditError(RuntimeError):
    """An edit could not be applied to a student (no usable text, non-finite loss, out of memory)."""


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

    @property
    def model_type(self) -> str:
        return str(self.model.config.model_type)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # -- scoring -------------------------------------------------------------------------------------------
    def score(self, context: Context) -> StudentScore:
        hook = getattr(self.task, "score", None)  # a task that scores its own way (ARC: exact grid match)
        if callable(hook):
            return hook(self.model, self.tok, context, self.cfg.max_new_tokens, self.cfg.eval_batch_size)
        return score_context(
            self.model, self.tok, self.task, context, self.cfg.max_new_tokens, self.cfg.eval_batch_size
        )

    def baseline(self, context: Context) -> StudentScore:
        """The unadapted student's score on a context, computed once and cached."""
        if context.id not in self._baselines:
            self._baselines[context.id] = self.score(context)
        return self._baselines[context.id]

    # -- one edit ------------------------------------------------------------------------------------------
    def evaluate_edit(self, edit_text: str, context: Context, seed: int) -> StudentOutcome:
        """Adapt to the edit, score without the context, restore. Failures give a recorded zero reward."""
        base = self.baseline(context)
        try:
            items, adapt = self.training_plan(edit_text, context, seed)
        except ValueError as exc:  # the task rejected the edit, e.g. an invalid ARC directive
            return StudentOutcome(base, None, 0.0, error=str(exc))
        if not items or all(not (it.completion.strip()) for it in items):
            return StudentOutcome(base, None, 0.0, error="edit has no usable text")
        try:
            with self.adapted(items, seed, adapt) as loss:
                adapted = self.score(context)
        except EditError as exc:
            return StudentOutcome(base, None, 0.0, error=str(exc))
        except torch.OutOfMemoryError:
            _free_memory()
            return StudentOutcome(
                base, None, 0.0, error="out of memory while adapting; lower adapt.batch_size"
            )
        return StudentOutcome(base, adapted, 0.0, train_loss=loss)

    def training_plan(
        self, edit_text: str, context: Context, seed: int
    ) -> tuple[list[TrainingItem], AdaptConfig]:
        """The edit's training items and the settings to train on them with. A task may provide
        ``training_items_for(edit_text, context, adapt, seed) -> (items, adapt)`` (ARC: items and per-edit
        learning rate / epochs from the teacher's directive); it raises ValueError for an unusable edit."""
        hook = getattr(self.task, "training_items_for", None)
        if callable(hook):
            return hook(edit_text, context, self.cfg.adapt, seed)
        return self.task.training_items(edit_text, context, self.cfg.adapt.include_context), self.cfg.adapt

    def adapted(self, items: list[TrainingItem], seed: int, adapt: AdaptConfig | None = None) -> _Adapted:
        """Context manager: inside, the student is adapted to ``items`` (with ``adapt``, default the
        student's own settings); on exit it is the base again."""
        return _Adapted(self, items, seed, adapt or self.cfg.adapt)

    def train_items(
        self, model: Any, items: list[TrainingItem], seed: int, adapt: AdaptConfig | None = None
    ) -> float:
        """Train ``model``'s trainable parameters on ``items``. Returns the mean loss of the last epoch."""
        a = adapt or self.cfg.adapt
        device = next(model.parameters()).device
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=a.learning_rate, weight_decay=0.0)
        rng = random.Random(seed)
        order = list(range(len(items)))
        model.train()
        last = float("nan")
        for _ in range(a.epochs):
            rng.shuffle(order)
            losses = []
            for i in range(0, len(order), a.batch_size):
                batch = collate(
                    self.tok, [items[j] for j in order[i : i + a.batch_size]], a.max_length, a.loss_on
                ).to(device)
                out = model(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels
                )
                if not torch.isfinite(out.loss):
                    raise EditError(
                        f"non-finite inner-loop loss ({float(out.loss)}); lower adapt.learning_rate"
                    )
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                if a.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, a.max_grad_norm)
                opt.step()
                losses.append(out.loss.item())
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
            from peft import LoraConfig, get_peft_model

            targets: Any = "all-linear" if a.target_modules == ["all-linear"] else list(a.target_modules)
            cfg = LoraConfig(
                r=a.lora_r,
                lora_alpha=a.lora_alpha,
                lora_dropout=a.lora_dropout,
                target_modules=targets,
                task_type="CAUSAL_LM",
                fan_in_fan_out=s.model_type == "gpt2",
            )  # GPT-2 stores Conv1D weights transposed
            s.model = get_peft_model(s.model, cfg)
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
            raise EditError(f"non-finite inner-loop loss ({loss}); lower adapt.learning_rate")
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


def _free_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
