"""Logit distillation of a student from a teacher (the sweep's baseline row): TRL's ``GKDTrainer`` when the
student shares the teacher's tokenizer, TRL's ``GOLDTrainer`` with its ULD loss (Universal Logit Distillation,
which aligns the two tokenizations of the same text) when it does not.

TRL's ``GKDTrainer`` (in ``trl.experimental``: ``DistillationTrainer`` only trains on completions the student
samples itself, while the baseline here learns the teacher's distribution on the teacher's own edits) trains the student to match the teacher's full next-token distribution (generalized
Jensen-Shannon divergence, ``beta``) on the teacher's own completions: the prompt is what the teacher sees for
a passage (its edit prompt, with the passage), the completion one of its edits for that passage. With
``lmbda`` > 0 a fraction of steps uses completions the student samples instead, and with ``seq_kd`` the teacher
samples fresh ones each step (both inside TRL). The student's adapt section sets the budget and the method:
a peft LoRA that is unloaded afterwards, or full fine-tuning restored from a saved copy; either way the
student is bit-exactly the base again after :func:`distilled` exits.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from core.config import DistillConfig
from student.lifecycle import EditError, lora_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillExample:
    """One distillation sequence: the teacher's prompt for a passage and one of its completions."""

    prompt: str
    completion: str


def shares_vocabulary(student_tok: Any, teacher_tok: Any) -> bool:
    """Logit distillation compares distributions token by token: the vocabularies must be identical (the
    same ids for the same strings), not merely of equal size."""
    return student_tok.get_vocab() == teacher_tok.get_vocab()


def build_rows(
    tok: Any, examples: list[DistillExample], max_length: int, add_special_tokens: bool = True
) -> list[dict[str, Any]]:
    """Pre-tokenized rows for TRL's ``DataCollatorForChatML`` (no chat template needed): ``input_ids`` =
    prompt + completion + EOS, ``completion_mask`` marks the completion (the loss positions). Completions
    longer than half of ``max_length`` are cut; the collator then drops the oldest prompt tokens to fit."""
    rows = []
    for ex in examples:
        p = tok(ex.prompt, add_special_tokens=add_special_tokens)["input_ids"]
        c = tok(ex.completion, add_special_tokens=False)["input_ids"][: max(1, max_length // 2 - 1)]
        c = c + [tok.eos_token_id]
        if not p:
            raise EditError("distillation prompt is empty after tokenization")
        rows.append(
            {
                "prompt": ex.prompt,
                "completion": ex.completion,  # the text, for GOLD (it tokenizes for both tokenizers itself)
                "input_ids": p + c,
                "attention_mask": [1] * (len(p) + len(c)),
                "completion_mask": [0] * len(p) + [1] * len(c),
            }
        )
    return rows


def _experimental(module: str, name: str) -> type:
    """A config class of TRL's ``trl.experimental`` (its import warning silenced)."""
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        return getattr(importlib.import_module(f"trl.experimental.{module}"), name)


def gkd_config_class() -> type:
    """TRL's ``GKDConfig``."""
    return _experimental("gkd", "GKDConfig")


def gold_config_class() -> type:
    """TRL's ``GOLDConfig``."""
    return _experimental("gold", "GOLDConfig")


def _inner_loop_fields(
    adapt: Any, dcfg: DistillConfig, seed: int, on_cpu: bool, workdir: str
) -> dict[str, Any]:
    """What GKD and GOLD share, mirroring the student's inner loop: constant learning rate, no weight decay, its
    epochs, batch size, length and gradient clipping; the distillation settings of ``sweep.distill``."""
    return dict(
        output_dir=workdir,
        learning_rate=adapt.learning_rate,
        per_device_train_batch_size=adapt.batch_size,
        num_train_epochs=adapt.epochs,
        max_length=adapt.max_length,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=adapt.max_grad_norm,  # 0 disables clipping, as in the inner loop
        seed=seed,
        data_seed=seed,
        use_cpu=on_cpu,
        bf16=False if on_cpu else None,
        gradient_checkpointing=False,  # else TRL hooks the input embeddings, which would outlive the update
        disable_dropout=False,  # GKD would zero the student's dropout for good; later edits train with it
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        lmbda=dcfg.lmbda,
        beta=dcfg.beta,
        seq_kd=dcfg.seq_kd,
        temperature=dcfg.temperature,
        remove_unused_columns=False,
    )


def gkd_args(adapt: Any, dcfg: DistillConfig, seed: int, on_cpu: bool, workdir: str) -> Any:
    """GKDConfig for a student that shares the teacher's tokenizer (:func:`_inner_loop_fields`)."""
    from core import trl_args

    defaults = {
        **_inner_loop_fields(adapt, dcfg, seed, on_cpu, workdir),
        "max_new_tokens": dcfg.max_new_tokens,
    }
    return trl_args.build(gkd_config_class(), defaults, dcfg.trainer_args, "sweep.distill.trainer_args")


def gold_args(
    adapt: Any,
    dcfg: DistillConfig,
    seed: int,
    on_cpu: bool,
    workdir: str,
    teacher_tokenizer: str,
    n_rows: int,
) -> Any:
    """GOLDConfig for a student on another tokenizer: the same fields, with the ULD loss reading the teacher's
    tokenizer from ``teacher_tokenizer`` (a folder or hub id). The batch is at most ``n_rows``: GOLD's sampler
    yields no batch at all from fewer rows than a batch (GKD takes one partial batch; the same step)."""
    from core import trl_args

    defaults = {
        **_inner_loop_fields(adapt, dcfg, seed, on_cpu, workdir),
        "per_device_train_batch_size": max(1, min(adapt.batch_size, n_rows)),
        "max_completion_length": dcfg.max_new_tokens,
        "use_uld_loss": True,
        "teacher_tokenizer_name_or_path": teacher_tokenizer,
    }
    return trl_args.build(gold_config_class(), defaults, dcfg.trainer_args, "sweep.distill.trainer_args")


def _train(
    student: Any,
    teacher_model: Any,
    rows: list[dict[str, Any]],
    dcfg: DistillConfig,
    seed: int,
    teacher_tokenizer: str | None = None,
) -> float:
    import warnings

    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback

    with warnings.catch_warnings():  # GKD and GOLD live in trl.experimental (see the module docstring)
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        from trl.experimental.gkd import GKDTrainer
        from trl.experimental.gold import GOLDTrainer

    a = student.cfg.adapt
    on_cpu = next(student.model.parameters()).device.type == "cpu"
    with tempfile.TemporaryDirectory(prefix="teachedit-gkd-") as workdir:
        if teacher_tokenizer is None:
            cls, args = GKDTrainer, gkd_args(a, dcfg, seed, on_cpu, workdir)
        else:  # GOLD tokenizes the text itself, for the student and (ULD) for the teacher
            cls, args = GOLDTrainer, gold_args(a, dcfg, seed, on_cpu, workdir, teacher_tokenizer, len(rows))
            rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
        trainer = cls(
            model=student.model,
            teacher_model=teacher_model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=student.tok,
            peft_config=lora_config(a, student.model_type) if a.method == "lora" else None,
        )
        trainer.remove_callback(PrinterCallback)  # libraries log; HF's printer would print every step
        student.model = trainer.model  # a PeftModel wrapping the base in place (LoRA), else the base
        result = trainer.train()
        del trainer
    return float(result.training_loss)


@contextmanager
def distilled(
    student: Any,
    teacher_model: Any,
    examples: list[DistillExample],
    dcfg: DistillConfig,
    seed: int,
    add_special_tokens: bool = True,
    teacher_tokenizer: str | None = None,
) -> Iterator[float]:
    """Inside, ``student`` is distilled from ``teacher_model`` on ``examples`` (yields the training loss); on
    exit (also on error) it is the base again, bit for bit. ``teacher_tokenizer`` (the teacher's folder or hub
    id) marks a student on another tokenizer: GOLD's ULD loss instead of GKD's. Raises :class:`EditError` on
    a non-finite loss or unusable examples (the student is restored first)."""
    rows = build_rows(student.tok, examples, student.cfg.adapt.max_length, add_special_tokens)
    torch.manual_seed(seed)
    base = student.model
    snapshot = None
    if student.cfg.adapt.method == "full":
        snapshot = {k: v.detach().clone() for k, v in base.state_dict().items()}
        for p in base.parameters():
            p.requires_grad_(True)
    try:
        try:
            loss = _train(student, teacher_model, rows, dcfg, seed, teacher_tokenizer)
        except ValueError as exc:  # e.g. TRL's collator: no prompt token left after truncation
            raise EditError(f"distillation failed: {exc}") from None
        if not math.isfinite(loss):
            raise EditError(f"non-finite distillation loss ({loss}); lower adapt.learning_rate")
        student.model.eval()
        yield loss
    finally:
        _restore(student, base, snapshot)


def _restore(student: Any, base: Any, snapshot: dict[str, torch.Tensor] | None) -> None:
    from peft import PeftModel

    if isinstance(student.model, PeftModel):
        student.model = student.model.unload()  # drops the LoRA layers; base weights untouched
    else:
        student.model = base
    if snapshot is not None:
        student.model.load_state_dict(snapshot)
    for p in student.model.parameters():
        p.requires_grad_(False)
    student.model.eval()
