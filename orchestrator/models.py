"""Which folder each model of a config loads from, and building tiny local models from a spec.

``mc.path`` is loaded as given; ``mc.gguf`` names a registry package whose GGUF file is converted once to a
safetensors folder (:mod:`orchestrator.gguf`); otherwise a tiny model is built. Tiny models exist so that
everything runs on a CPU with no download: a byte-level BPE tokenizer is trained on the task's corpus, a
Llama / Qwen2 / GPT-2 config of the given size is instantiated, briefly pretrained with TRL's ``SFTTrainer``
on the task's pretraining corpus, and saved in Hugging Face format (safetensors) under ``cache_dir``. The
folder name hashes the spec, so a second run reuses it. Loading itself is :mod:`core.models`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from core.config import Config, ModelConfig, StudentConfig, TinyModelSpec, to_yaml
from core.distributed import all_ranks, clean_env, current, launched
from core.models import ModelLoadError, load_causal_lm, load_tokenizer

log = logging.getLogger(__name__)

BUILDER_VERSION = 3  # bump when the builder's output changes, so caches are rebuilt
SPECIAL = {"pad": "<|pad|>", "eos": "<|endoftext|>"}


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
    if task.protocol != "qa_lines":  # the corpus's QA prompts follow the protocol
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
        from core.prompts import render_prompt

        fmt = task.formats[0]
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


def prebuild_tiny_models(cfg: Any, task: Any) -> None:
    """Build missing tiny models before the ranks load them. Tiny pretraining is a one-process HF Trainer run;
    inside a launched rank that Trainer would join the ranks' process group, so the first rank of each node
    builds in a clean child process (``teachedit build``), and every rank waits for it."""
    specs = [
        m.tiny
        for m in [cfg.teacher.model, *(s.model for s in cfg.students)]
        if m.path is None and m.gguf is None
    ]
    missing = [s for s in specs if not (tiny_dir(s, task, Path(cfg.run.cache_dir)) / "config.json").is_file()]

    def build() -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(to_yaml(cfg))
        try:
            log.info("building %d tiny model(s) in a one-process child", len(missing))
            proc = subprocess.run(
                [sys.executable, "-m", "orchestrator", "build", f.name],
                env=clean_env(),
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"building the tiny models failed:\n{proc.stderr[-2000:]}")
        finally:
            os.unlink(f.name)

    all_ranks(build, run=bool(missing) and current().local_rank == 0)


# ---- the one place every command builds its models (run, eval, sweep, styles, the GRPO reward)


def load_student(
    sc: StudentConfig, task: Any, cache_dir: str | Path, device: torch.device, where: str
) -> Any:
    """A :class:`student.student.Student` for ``sc``, loaded unsharded on ``device``."""
    from student.student import Student

    path = resolve_model_path(sc.model, "student", task, cache_dir)
    log.info("loading student %s (%s)", sc.name, path)
    model, tok = load_causal_lm(path, sc.model, device, where), load_tokenizer(path, sc.model, where)
    return Student(sc, model, tok, task)


def checkpoint_model(mc: ModelConfig, path: str) -> ModelConfig:
    """``mc``'s settings (dtype, device, quantization...) for loading the folder ``path`` instead of its source."""
    return dataclasses.replace(mc, path=path, gguf=None, tiny=None)


def build_teacher(cfg: Config, task: Any, device: torch.device, path: str | None = None) -> tuple[Any, str]:
    """The config's teacher and the folder it was loaded from; ``path``: a checkpoint folder instead (e.g. a
    run's ``teacher/round_k``), loaded with the teacher's other model settings."""
    from teacher.model import Teacher

    mc = cfg.teacher.model
    if path is None:
        path = resolve_model_path(mc, "teacher", task, cfg.run.cache_dir)
    else:
        mc = checkpoint_model(mc, path)
    tok = load_tokenizer(path, mc, "teacher.model")
    model = load_causal_lm(path, mc, device, "teacher.model")
    return Teacher(cfg.teacher, model, tok), path


def build_pool(cfg: Config, task: Any, device: torch.device) -> Any:
    """The student pool. Under a launcher: a :class:`student.distributed.DistributedPool` (each student
    loaded for its ``sharding``, the unsharded ones splitting the edits); in one process, a plain
    :class:`student.pool.StudentPool` (``sharding`` applies under the launcher only)."""
    from student.pool import StudentPool

    if not launched():
        sharded = [s.name for s in cfg.students if s.sharding != "none"]
        if sharded:
            log.info("one process: %s run unsharded (sharding applies under the deepspeed launcher)", sharded)
        return StudentPool(
            [
                load_student(sc, task, cfg.run.cache_dir, device, f"students[{i}].model")
                for i, sc in enumerate(cfg.students)
            ]
        )
    from student.distributed import DistributedPool, load_sharded_student

    students: list[Any] = []
    for i, sc in enumerate(cfg.students):
        if sc.sharding == "none":
            students.append(load_student(sc, task, cfg.run.cache_dir, device, f"students[{i}].model"))
            continue
        path = resolve_model_path(sc.model, "student", task, cfg.run.cache_dir)
        tok = load_tokenizer(path, sc.model, f"students[{i}].model")
        students.append(load_sharded_student(sc, path, tok, task, device))
    log.info(
        "student pool over %d rank(s): %s",
        current().world_size,
        ", ".join(f"{s.name} ({s.cfg.sharding})" for s in students),
    )
    return DistributedPool(students)
