"""Loading causal LMs by hub id or local path (identically), and building tiny local ones from a spec.

Tiny models exist so that everything runs on a CPU with no download: a byte-level BPE tokenizer is trained
on the task's corpus, a Llama / Qwen2 / GPT-2 config of the given size is instantiated, briefly pretrained
with TRL's ``SFTTrainer`` on the task's pretraining corpus, and saved in Hugging Face format (safetensors)
under ``cache_dir``. The folder name hashes the spec, so a second run reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from orchestrator.config import ModelConfig, TinyModelSpec
from orchestrator.distributed import launched

log = logging.getLogger(__name__)

BUILDER_VERSION = 3  # bump when the builder's output changes, so caches are rebuilt
SPECIAL = {"pad": "<|pad|>", "eos": "<|endoftext|>"}
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


def resolve_model_path(mc: ModelConfig, role: str, task: Any, cache_dir: str | Path) -> str:
    """The folder or hub id to load: ``mc.path`` as given, the converted folder of ``mc.gguf`` (converted
    once, :mod:`orchestrator.gguf`), or the cached tiny build (built if absent)."""
    if mc.path is not None:
        return mc.path
    if mc.gguf is not None:
        from orchestrator import gguf

        try:
            return str(gguf.resolve(mc.gguf, cache_dir, trust_remote_code=mc.trust_remote_code))
        except gguf.GGUFSourceError as exc:
            raise ModelLoadError(f"{role}: {exc}") from None
    assert mc.tiny is not None, "validated: path, gguf or tiny is set"
    return str(build_tiny(mc.tiny, task, Path(cache_dir)))


def tiny_dir(spec: TinyModelSpec, task: Any, cache_dir: Path) -> Path:
    key_fields = {"spec": asdict(spec), "task": task.name, "v": BUILDER_VERSION}
    if getattr(task, "protocol", "qa_lines") != "qa_lines":  # the corpus's QA prompts follow the protocol
        key_fields["protocol"] = task.protocol
    key = json.dumps(key_fields, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    safe = re.sub(r"[^\w.-]", "_", str(task.name))  # a plugin task may name itself anything
    return cache_dir / "tiny" / f"{safe}-{spec.pretrain}-{spec.family}-{digest}"


def build_tiny(spec: TinyModelSpec, task: Any, cache_dir: Path) -> Path:
    """Build (or reuse) a tiny model + tokenizer for ``task``. Written to a temp folder, then renamed."""
    out = tiny_dir(spec, task, cache_dir)
    if (out / "config.json").is_file():
        return out
    log.info(
        "building tiny %s model (%s pretraining, %d steps) in %s",
        spec.family,
        spec.pretrain,
        spec.pretrain_steps,
        out,
    )
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(spec.seed)
    n_docs = max(2000, spec.pretrain_steps * spec.pretrain_batch_size)
    docs = _corpus(spec, task, n_docs)
    tok = shared_tokenizer(spec) or train_tokenizer([p + c for p, c in docs][:20000], spec.vocab_size)
    model = tiny_model(spec, tok)
    if spec.pretrain != "none" and spec.pretrain_steps > 0:
        from teacher.training import sft_train

        records = [{"prompt": p, "completion": c} for p, c in docs]
        if spec.pretrain == "student":  # language modelling on everything: loss on prompts too
            records = [{"text": p + c} for p, c in docs]
        model, _, _ = sft_train(
            model,
            tok,
            records,
            learning_rate=spec.pretrain_lr,
            batch_size=spec.pretrain_batch_size,
            max_steps=spec.pretrain_steps,
            max_length=spec.max_position,
            seed=spec.seed,
            warmup_ratio=0.05,
            scheduler="cosine",
            output_dir=str(tmp / "_trainer"),
        )
        shutil.rmtree(tmp / "_trainer", ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "teachedit_tiny.json").write_text(json.dumps({"spec": asdict(spec), "task": task.name}, indent=2))
    try:
        tmp.rename(out)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def shared_tokenizer(spec: TinyModelSpec) -> Any:
    """The tokenizer of ``spec.tokenizer_from`` (a model folder), or None to train one."""
    if spec.tokenizer_from is None:
        return None
    if spec.tokenizer_from == "teacher":
        raise ModelLoadError(
            "tiny.tokenizer_from=teacher is resolved by `teachedit sweep` only; elsewhere give the teacher's folder"
        )
    return load_tokenizer(spec.tokenizer_from, ModelConfig())


def _corpus(spec: TinyModelSpec, task: Any, n: int) -> list[tuple[str, str]]:
    if spec.pretrain == "teacher":
        from teacher.prompts import render_prompt

        fmt = getattr(task, "formats", ("implications",))[0]
        return [(render_prompt(fmt, c), e) for c, e in task.teacher_corpus(n, spec.seed)]
    return task.student_corpus(n, spec.seed)


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE trained on ``texts``, wrapped as a ``PreTrainedTokenizerFast`` with pad and eos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL["pad"], SPECIAL["eos"]],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=SPECIAL["pad"],
        eos_token=SPECIAL["eos"],
        padding_side="left",
        model_max_length=4096,
    )


def tiny_model(spec: TinyModelSpec, tok: Any) -> Any:
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    inter = spec.intermediate_size or 4 * spec.hidden_size
    common = dict(
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    if spec.family == "gpt2":
        cfg = GPT2Config(
            n_embd=spec.hidden_size,
            n_layer=spec.num_layers,
            n_head=spec.num_heads,
            n_inner=inter,
            n_positions=spec.max_position,
            **common,
        )
    else:
        cls = LlamaConfig if spec.family == "llama" else Qwen2Config
        cfg = cls(
            hidden_size=spec.hidden_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            num_key_value_heads=spec.num_heads,
            intermediate_size=inter,
            max_position_embeddings=spec.max_position,
            tie_word_embeddings=True,
            **common,
        )
    return AutoModelForCausalLM.from_config(cfg)
