"""Supervised fine-tuning of a causal LM through TRL's ``SFTTrainer``: ReST-EM's teacher update, and the
tiny-model pretraining of :mod:`orchestrator.models` (one code path for both)."""

from __future__ import annotations

import copy
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Teacher training failed (e.g. a non-finite loss). The message says what to change."""


@dataclass
class LoraAdapter:
    """A trained LoRA adapter, kept when it is merged into the teacher: saved beside the merged weights in
    peft's format (``adapter_config.json``, ``adapter_model.safetensors``), loadable with
    ``PeftModel.from_pretrained(base, folder)`` on the checkpoint it was trained from (``base``)."""

    config: Any  # peft.LoraConfig
    state: dict[str, torch.Tensor]
    base: str = ""  # the model it applies to: a path / hub id, or the run's previous round ("round_<k>")

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(self.config)
        config.base_model_name_or_path = self.base or config.base_model_name_or_path
        config.save_pretrained(str(directory))
        save_file(
            {k: v.contiguous() for k, v in self.state.items()}, str(directory / "adapter_model.safetensors")
        )


def merge_lora(model: Any) -> tuple[Any, LoraAdapter]:
    """Merge a peft LoRA model into its base, keeping the adapter (its config and weights, on CPU)."""
    from peft import get_peft_model_state_dict

    state = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}
    config = copy.deepcopy(model.peft_config["default"])
    return model.merge_and_unload(), LoraAdapter(config, state)


def sft_train(
    model: Any,
    tokenizer: Any,
    records: list[dict[str, str]],
    *,
    learning_rate: float,
    batch_size: int,
    epochs: float = 1.0,
    max_steps: int = -1,
    max_length: int = 512,
    seed: int = 0,
    method: str = "full",
    lora_r: int = 64,
    lora_alpha: int = 128,
    gradient_accumulation_steps: int = 1,
    warmup_ratio: float = 0.0,
    scheduler: str = "constant",
    deepspeed: str | dict | None = None,
    output_dir: str | None = None,
    progress: bool = False,
    callbacks: list[Any] | None = None,
    trainer_args: dict[str, Any] | None = None,
    report: dict[str, Any] | None = None,
) -> tuple[Any, float, LoraAdapter | None]:
    """Train ``model`` on ``records`` (``{"prompt", "completion"}``: loss on completions only; ``{"text"}``:
    loss on all tokens; or pre-tokenized ``{"input_ids", "completion_mask"}``: loss where the mask is 1). ``report``: tracking fields (``report_to``, ``run_name``; see
    :mod:`orchestrator.tracking`), under the user's ``trainer_args``. Returns ``(model, mean training loss, adapter)``; with ``method="lora"`` the adapter is
    merged into the returned model so the caller always holds a plain ``PreTrainedModel``, and also returned
    on its own (:class:`LoraAdapter`; None for full fine-tuning)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not records:
        raise TrainingError("no training records: nothing to fine-tune on")
    if deepspeed is not None and not torch.distributed.is_initialized():
        log.warning(
            "a DeepSpeed config was given but no launcher started this process: training without DeepSpeed "
            "(launch with `deepspeed --num_gpus N teachedit run ...` to use it)"
        )
        deepspeed = None
    device = next(model.parameters()).device
    on_cpu = device.type == "cpu"
    workdir = output_dir or tempfile.mkdtemp(prefix="teachedit-sft-")
    from core import trl_args

    defaults = dict(
        output_dir=workdir,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_train_epochs=epochs,
        max_steps=max_steps,
        max_length=max_length,
        lr_scheduler_type=scheduler,
        warmup_steps=warmup_ratio,
        seed=seed,
        data_seed=seed,
        use_cpu=on_cpu,
        bf16=False if on_cpu else None,
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, (max_steps if max_steps > 0 else 10) // 10),
        disable_tqdm=not progress,
        dataset_num_proc=None,
        deepspeed=deepspeed,
        remove_unused_columns=True,
        completion_only_loss=True if "completion_mask" in records[0] else None,
    )
    defaults.update(report or {})
    args = trl_args.build(SFTConfig, defaults, trainer_args, "teacher.train.trainer_args")
    peft_config = None
    if method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=lora_r, lora_alpha=lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    # Libraries log; HF's PrinterCallback would print every log dict to stdout.
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    result = trainer.train()
    loss = float(result.training_loss)
    if not math.isfinite(loss):
        raise TrainingError(f"teacher training loss is {loss}; lower teacher.train.learning_rate")
    trained, adapter = trainer.model, None
    if deepspeed is not None:
        trained, adapter = release_deepspeed(trainer, method, device)
    elif method == "lora":
        trained, adapter = merge_lora(trained)
    trained.eval()
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return trained, loss, adapter


def release_deepspeed(trainer: Any, method: str, device: torch.device) -> tuple[Any, LoraAdapter | None]:
    """The trained weights as a plain model, free of DeepSpeed: ZeRO-3 partitions gathered on every rank
    (the teacher samples edits whole), a LoRA adapter merged, the engine destroyed, and transformers' global
    DeepSpeed config unset (else a later ``from_pretrained`` would start a collective ``zero.Init`` on one
    rank only). Under ZeRO-2 the gather is a no-op.

    The plain model is built on ``device`` in the trained weights' dtype (never in float32 first) and the
    gathered weights are copied into it directly, so a rank holds at most the gathered model and the plain
    one at a time (a bfloat16 7B teacher: two 14 GB copies, not a 14 GB clone plus a 28 GB float32 model)."""
    import deepspeed
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    model, adapter = trainer.model, None
    unset_hf_deepspeed_config()  # before building the plain model: else from_config would partition it
    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        if method == "lora":
            model, adapter = merge_lora(model)
        state = model.state_dict()  # the gathered tensors themselves: no copy
        dtype = next(v.dtype for v in state.values() if v.is_floating_point())
        with torch.device(device):
            plain = type(model)._from_config(copy.deepcopy(model.config), dtype=dtype)
        plain.load_state_dict(state)
        del state
    trainer.model_wrapped.destroy()
    trainer.accelerator.free_memory()
    plain.eval()
    return plain, adapter
