"""Loading causal LMs and tokenizers by hub id or local folder (identically), for every role: the device,
dtype, quantization and ``trust_remote_code`` a :class:`~core.config.ModelConfig` asks for, and errors that
say what to check. Which folder to load (a converted GGUF, a tiny build) is :mod:`orchestrator.models`'s job.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from core.config import ModelConfig
from core.distributed import launched

log = logging.getLogger(__name__)

DTYPES: dict[str, Any] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",  # the checkpoint's own dtype (config.json's dtype / torch_dtype)
}


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded. The message says what to check."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("run.device=cuda but no CUDA device is visible; use run.device=auto or cpu")
    return torch.device(name)


def load_tokenizer(path: str, mc: ModelConfig, where: str | None = None) -> Any:
    """The tokenizer of ``path`` (left padding; EOS pads when there is no pad token). ``where`` names the
    config field in errors (``students[0].model``)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(
            path, revision=mc.revision, trust_remote_code=mc.trust_remote_code, padding_side="left"
        )
    except Exception as exc:
        raise ModelLoadError(_load_hint("tokenizer", path, exc, where)) from None
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ModelLoadError(f"tokenizer of {path} has neither a pad nor an eos token; add a pad token")
        # Padding is masked out of attention and labels everywhere, so reusing EOS as pad is safe.
        tok.pad_token = tok.eos_token
        log.info("tokenizer of %s has no pad token: using eos (%r) for padding", path, tok.eos_token)
    return tok


def load_causal_lm(path: str, mc: ModelConfig, device: torch.device, where: str | None = None) -> Any:
    """The model of ``path`` in ``mc.dtype`` on ``device``, from safetensors unless ``mc.allow_pickle``.
    ``where`` names the config field in errors (``students[0].model``)."""
    from transformers import AutoModelForCausalLM

    if mc.device is not None:
        if launched():
            log.warning(
                "%s.device=%s is ignored under the launcher: each rank uses its own device", where, mc.device
            )
        else:
            device = resolve_device(mc.device)
    extra: dict[str, Any] = {}
    if mc.attn_implementation:
        extra["attn_implementation"] = mc.attn_implementation
    if mc.quantization:
        extra["quantization_config"] = quantization_config(mc, where)
        extra["device_map"] = {"": device}  # bitsandbytes places weights as it loads them; never .to() after
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            revision=mc.revision,
            dtype=DTYPES[mc.dtype],
            trust_remote_code=mc.trust_remote_code,
            use_safetensors=None if mc.allow_pickle else True,  # pickle weights only when a config opts in
            **extra,
        )
    except Exception as exc:
        raise ModelLoadError(_load_hint("model", path, exc, where)) from None
    return model if mc.quantization else model.to(device)


def quantization_config(mc: ModelConfig, where: str | None = None) -> Any:
    """transformers' ``BitsAndBytesConfig`` for ``mc.quantization``: 4bit is QLoRA's NF4 with double
    quantization, computing in ``mc.dtype`` (bfloat16 for ``auto``/float32); 8bit is LLM.int8(). Raises
    :class:`ModelLoadError` naming the field when bitsandbytes is not installed or no CUDA device is visible."""
    import importlib.util

    from transformers import BitsAndBytesConfig

    field = f"{where or 'model'}.quantization={mc.quantization}"
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(
            f"{field} needs bitsandbytes: pip install bitsandbytes (or set quantization=null)"
        )
    if not torch.cuda.is_available():
        raise ModelLoadError(f"{field} needs a CUDA device (none is visible); set quantization=null on CPU")
    if mc.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = DTYPES[mc.dtype] if mc.dtype in ("bfloat16", "float16") else torch.bfloat16
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def _load_hint(what: str, path: str, exc: Exception, where: str | None = None) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    field = f"{where}: " if where else ""
    if not Path(path).exists() and (
        os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    ):
        return (
            f"{field}cannot load {what} '{path}': not a local folder and the hub is offline (HF_HUB_OFFLINE). "
            f"Use a local path, a model.tiny spec, or go online. ({first})"
        )
    return (
        f"{field}cannot load {what} '{path}': {first}. Check the hub id or folder (it needs config.json and "
        f"weights), or point {where or 'model'}.path elsewhere."
    )
