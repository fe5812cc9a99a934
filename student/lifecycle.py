"""The pieces every path that adapts a student shares: the one place peft injects a LoRA, how an update is
undone or kept, and what a failed update reports.

An update on a student runs *prepare training items → adapt → score → restore (or merge)*. The adapt step has
several drivers, each for a reason: :class:`student.student.Student` (one edit: LoRA or full fine-tuning),
:mod:`student.batched` (many LoRA edits in one pass; also a ZeRO-sharded student's LoRA edits, data-parallel
on its one engine), :mod:`student.distributed` (a ZeRO-sharded student's full fine-tuning, on its one engine)
and :mod:`student.distill` (TRL's GKD/GOLD trainers). They all build their LoRA with :func:`lora_config`
(peft injects it with :func:`inject_lora`; the batched path replays peft's initialisation on its own hooks),
report failures as :class:`EditError` with the messages below, and the continual protocol keeps an update
with :func:`merge_update`.
"""

from __future__ import annotations

import gc
import math
from typing import Any

import torch

from core.config import AdaptConfig
from core.seeds import derive_seed
from core.task import TrainingItem

OOM_ADAPT = "out of memory while adapting or scoring; lower adapt.batch_size or eval_batch_size"
OOM_BATCH = "out of memory adapting %d edits together: retrying one at a time; lower adapt.edit_batch_size"


class EditError(RuntimeError):
    """An edit could not be applied to a student (no usable text, non-finite loss, out of memory)."""


def non_finite_loss(value: float) -> str:
    return f"non-finite inner-loop loss ({value}); lower adapt.learning_rate"


def check_finite(loss: float) -> float:
    """``loss``, or :class:`EditError` when it is NaN or infinite."""
    if not math.isfinite(loss):
        raise EditError(non_finite_loss(loss))
    return loss


def free_memory(collect: bool = False) -> None:
    """Return cached accelerator memory (after an out-of-memory error, or a model dropped); ``collect`` runs
    the garbage collector first, so a dropped model's tensors are really gone."""
    if collect:
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def lora_config(a: AdaptConfig, model_type: str) -> Any:
    """The peft ``LoraConfig`` of a student's inner loop (every path: sequential, batched, sharded, distilled,
    merged)."""
    from peft import LoraConfig

    targets: Any
    if a.target_modules is None:
        targets = None  # peft's per-architecture default (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)
    elif list(a.target_modules) == ["all-linear"]:
        targets = "all-linear"
    else:
        targets = list(a.target_modules)
    return LoraConfig(
        r=a.lora_r,
        lora_alpha=a.lora_alpha,
        lora_dropout=a.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        fan_in_fan_out=model_type == "gpt2",  # GPT-2 stores Conv1D weights transposed
    )


def inject_lora(model: Any, config: Any) -> Any:
    """``model`` wrapped by peft with a fresh LoRA (``config``); its initialisation draws from torch's global
    RNG, so callers seed first. ``unload()`` on the result returns the base model, its weights untouched."""
    from peft import get_peft_model

    return get_peft_model(model, config)


def set_train_mode(model: Any, method: str) -> None:
    """Full fine-tuning trains in train mode (the model's own dropout on). LoRA keeps the frozen base in eval
    mode, only the adapters' own dropout (``adapt.lora_dropout``) active: base dropout would draw masks from
    the global RNG stream, so an edit's result would depend on which other edits share its batch."""
    if method != "lora":
        model.train()
        return
    from peft.tuners.lora import LoraLayer

    model.eval()
    for m in model.modules():
        if isinstance(m, LoraLayer):
            m.lora_dropout.train()


def merge_update(student: Any, items: list[TrainingItem], seed: int) -> float:
    """Train ``student`` on ``items`` and keep the change (LoRA merged, or full fine-tuning): the continual
    protocol's update. On failure the student is left as it was before this step. Returns the last epoch's
    mean loss."""
    torch.manual_seed(seed)
    if student.cfg.adapt.method == "lora":
        wrapped = inject_lora(student.model, lora_config(student.cfg.adapt, student.model_type))
        try:
            loss = check_finite(student.train_items(wrapped, items, seed))
        except BaseException:
            student.model = wrapped.unload()  # drop the unmerged adapter: weights as before the step
            raise
        student.model = wrapped.merge_and_unload()
    else:
        before = {k: v.detach().to("cpu", copy=True) for k, v in student.model.state_dict().items()}
        for p in student.model.parameters():
            p.requires_grad_(True)
        try:
            loss = check_finite(student.train_items(student.model, items, seed))
        except BaseException:
            student.model.load_state_dict(before)
            raise
        finally:
            for p in student.model.parameters():
                p.requires_grad_(False)
    student.model.eval()
    return loss


# ---- seeds: an update's seed depends only on what is updated, never on the order updates run in, so a
# resumed, batched or distributed run gives the same results.


def edit_seed(run_seed: int, edit: Any, student: str) -> int:
    """The seed of ``student``'s update on a teacher's edit in the loop (``edit.key`` is its identity)."""
    return derive_seed(run_seed, edit.key, student)


def update_seed(run_seed: int, source: str, student: str, step: int, context_ids: list[str]) -> int:
    """The seed of an eval/sweep update: ``student`` on ``source``'s edits for ``context_ids`` at ``step``."""
    return derive_seed(run_seed, source, student, step, ",".join(context_ids))


def repeat_seed(seed: int, r: int) -> int:
    """The seed of an update's r-th repeat under ``adapt.eval_times`` (r = 0: its own seed)."""
    return seed if r == 0 else (seed * 1_000_003 + r * 7_919) & 0x7FFFFFFF
