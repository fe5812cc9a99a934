"""Checks a run needs beyond the config's own values, done before a run directory is created.

:func:`core.config.validate` checks values; this module checks the world they point at: the task's
data file parses and has the SEAL schema, the prompt format exists, and every ``model.path`` is a model
folder or (offline) a hub id already in the local cache. Every failure is a :class:`ConfigError` that
names the field and the fix, so the CLI exits with code 2 and one line before any work starts. Nothing
here touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core.config import Config, ConfigError, ModelConfig


def preflight(cfg: Config) -> Any:
    """Run every check; returns the built task (so the run does not build it twice)."""
    task = check_task(cfg)
    check_prompt_format(cfg)
    check_model_source(cfg.teacher.model, "teacher.model")
    for i, s in enumerate(cfg.students):
        check_model_source(s.model, f"students[{i}].model")
    check_trainer_args(cfg)
    check_teacher_backend(cfg)
    from orchestrator.tracking import check_report_to

    check_report_to(cfg.run.report_to)
    return task


def check_trainer_args(cfg: Config) -> None:
    """``trainer_args`` name fields of the TRL config they feed (checked here, before a run directory)."""
    from core import trl_args

    if cfg.teacher.train.trainer_args:
        from trl import SFTConfig

        trl_args.check(SFTConfig, cfg.teacher.train.trainer_args, "teacher.train.trainer_args")
    if cfg.algorithm.grpo.trainer_args:
        from trl import GRPOConfig

        trl_args.check(GRPOConfig, cfg.algorithm.grpo.trainer_args, "algorithm.grpo.trainer_args")
        if cfg.algorithm.name == "grpo" and cfg.algorithm.grpo.trainer_args.get("use_vllm"):
            check_vllm("algorithm.grpo.trainer_args.use_vllm=true")


def check_teacher_backend(cfg: Config) -> None:
    """``teacher.generation.backend: vllm``: its options name arguments of TRL's ``VLLMGeneration`` that the
    teacher does not set itself, and vLLM can run here."""
    g = cfg.teacher.generation
    if g.backend != "vllm":
        if g.vllm:
            raise ConfigError(
                "teacher.generation.vllm is set but teacher.generation.backend is "
                f"'{g.backend}': set backend=vllm to sample with vLLM, or drop the vllm options"
            )
        return
    from teacher.vllm import SET_BY_TEACHER, allowed_options

    allowed = allowed_options()
    for key in g.vllm:
        if key in SET_BY_TEACHER:
            raise ConfigError(
                f"teacher.generation.vllm.{key}: set by the teacher from teacher.generation (temperature, "
                "top_p, max_new_tokens); remove it here"
            )
        if key not in allowed:
            raise ConfigError(
                f"teacher.generation.vllm.{key}: not an argument of TRL's VLLMGeneration; choose from "
                f"{', '.join(allowed)}"
            )
    check_vllm("teacher.generation.backend=vllm", fix="set teacher.generation.backend=hf")


def check_vllm(where: str, fix: str | None = None) -> None:
    """GRPO's vLLM generation (TRL's ``use_vllm``, ``vllm_mode`` colocate or server) needs the vllm package
    and a CUDA GPU: refused here, before a run directory, rather than deep inside TRL's trainer."""
    import importlib.util

    import torch

    missing = []
    if importlib.util.find_spec("vllm") is None:
        missing.append("the vllm package is not installed (pip install vllm, the version TRL's docs name)")
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is visible")
    if missing:
        fix = fix or f"set {where} to false"
        raise ConfigError(f"{where}: {'; '.join(missing)}. To sample with transformers' generate, {fix}")


def check_task(cfg: Config) -> Any:
    from orchestrator.tasks import build_task

    try:
        return build_task(cfg.task)
    except (ValueError, FileNotFoundError) as exc:  # DataFormatError is a ValueError
        source = f"task.dataset={cfg.task.dataset}" if cfg.task.dataset else f"task.path={cfg.task.path}"
        where = cfg.task.name if source in str(exc) else f"{cfg.task.name}, {source}"
        raise ConfigError(f"task ({where}): {exc}") from None


def check_prompt_format(cfg: Config) -> None:
    from core.prompts import PROMPT_FORMATS

    if cfg.teacher.prompt_format not in PROMPT_FORMATS:
        raise ConfigError(
            f"teacher.prompt_format: unknown format '{cfg.teacher.prompt_format}'; "
            f"choose from {sorted(PROMPT_FORMATS)}"
        )


def hub_offline() -> bool:
    flags = (os.environ.get(v, "").lower() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f in ("1", "true", "yes", "on") for f in flags)


def check_model_source(mc: ModelConfig, where: str) -> None:
    """A local folder must hold ``config.json``; a hub id must be cached locally when the hub is offline."""
    if mc.gguf is not None:
        check_gguf_source(mc, where)
        return
    if mc.path is None:
        return  # a tiny spec, built locally
    path = Path(mc.path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"{where}.path: {path} is not a model folder (no config.json). Point it at a folder written "
                f"by save_pretrained, or use a hub id."
            )
        check_weights_format(mc, path, where)
        return
    if mc.path.startswith((".", "/", "~")) or mc.path.count("/") > 1:
        raise ConfigError(
            f"{where}.path: no folder {path}, and '{mc.path}' is not a hub id (owner/name). Fix the path."
        )
    if hub_offline() and not _in_hub_cache(mc.path, mc.revision):
        raise ConfigError(
            f"{where}.path: '{mc.path}' is not a local folder and the hub is offline (HF_HUB_OFFLINE=1) with "
            f"no cached copy. Use a local folder or a model.tiny spec, or go online once to cache it."
        )


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def check_weights_format(mc: ModelConfig, path: Path, where: str) -> None:
    """Checkpoints are safetensors: a folder with only pickle weights is refused unless the config opts in."""
    if any(path.glob("*.safetensors")) or mc.allow_pickle:
        return
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise ConfigError(
            f"{where}.path: {path} holds only pickle weights ({', '.join(pickled[:3])}); loading them can run "
            f"code hidden in the file. Convert it once to safetensors (from_pretrained(..., use_safetensors="
            f"False) then save_pretrained(folder)), or set {where}.allow_pickle=true if you trust the file."
        )


def check_gguf_source(mc: ModelConfig, where: str, cache_dir: str | Path | None = None) -> None:
    """A registered source's package is installed; a GGUF file exists, is GGUF and reads whole (header and
    tensor table). Registered files are read at conversion; a converted cache is trusted."""
    from orchestrator import gguf

    path = Path(mc.gguf).expanduser()
    if not gguf.is_registered(mc.gguf) and not path.is_file():
        raise ConfigError(
            f"{where}.gguf: '{mc.gguf}' is neither a registered source ({', '.join(sorted(gguf.SOURCES))}) "
            f"nor an existing .gguf file"
        )
    try:
        if gguf.is_registered(mc.gguf):
            gguf.require_package(mc.gguf)  # locating a registered file may assemble it: left to conversion
        else:
            gguf.check_file(gguf.locate(str(path), cache_dir or "."))
    except gguf.GGUFSourceError as exc:
        raise ConfigError(f"{where}.gguf: {exc}") from None


def _in_hub_cache(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # an invalid repo id (huggingface_hub raises its own validation error)
        return False
    return isinstance(found, str)
