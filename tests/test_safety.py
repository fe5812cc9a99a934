"""Safety: no remote code unless configured, model and teacher text is never executed, checkpoints are
safetensors, and a run with local models and data makes no network connection."""

from __future__ import annotations

import ast
import socket
from pathlib import Path
from typing import Any

import pytest
import torch

from core.config import ConfigError, ModelConfig, load_config
from core.models import load_causal_lm, load_tokenizer

from .conftest import CACHE, CONFIGS, ROOT

PACKAGES = ("orchestrator", "teacher", "student")
SOURCES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
UNSAFE_FORMATS = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on one intra-op thread: as fast alone, and far faster when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spy(monkeypatch: pytest.MonkeyPatch, cls: Any, seen: list[dict]) -> None:
    real = cls.from_pretrained

    def from_pretrained(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", from_pretrained)


def spy_loads(mp: pytest.MonkeyPatch) -> list[dict]:
    """Record the keyword arguments of every Auto*.from_pretrained call."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen: list[dict] = []
    _spy(mp, AutoModelForCausalLM, seen)
    _spy(mp, AutoTokenizer, seen)
    return seen


def block_network(mp: pytest.MonkeyPatch) -> list[str]:
    """Sockets cannot connect and names cannot resolve; returns the attempts made."""
    attempts: list[str] = []

    def refuse(what: str):
        def fn(*args: Any, **kwargs: Any) -> Any:
            attempts.append(f"{what}{args}")
            raise OSError(f"network blocked by the test: {what}")

        return fn

    mp.setattr(socket.socket, "connect", refuse("socket.connect"))
    mp.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    mp.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    mp.setattr(socket, "create_connection", refuse("create_connection"))
    return attempts


@pytest.fixture(scope="module")
def offline_smoke_run(tmp_path_factory) -> dict[str, Any]:
    """configs/smoke.yaml end to end with the network blocked and model loading spied on."""
    from orchestrator.runner import Runner

    mp = pytest.MonkeyPatch()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        attempts = block_network(mp)
        seen = spy_loads(mp)
        out = tmp_path_factory.mktemp("offline")
        cfg = load_config(CONFIGS / "smoke.yaml", [f"run.output_dir={out}", f"run.cache_dir={CACHE}"])
        summary = Runner.new(cfg).run()
    finally:
        mp.undo()
        torch.set_num_threads(before)
    return {"summary": summary, "attempts": attempts, "loads": seen, "run": out / "smoke"}


def test_a_full_smoke_run_succeeds_with_the_network_blocked(offline_smoke_run):
    assert [r["round"] for r in offline_smoke_run["summary"]["rounds"]] == [0, 1]
    assert offline_smoke_run["attempts"] == [], "no connection was even tried"


def test_trust_remote_code_is_passed_as_false_by_default(offline_smoke_run):
    seen = offline_smoke_run["loads"]
    assert len(seen) == 6, "teacher + 2 students, model and tokenizer each"
    assert all(kw["trust_remote_code"] is False for kw in seen)


def test_trust_remote_code_is_passed_through_when_configured(monkeypatch, student_paths):
    loads = spy_loads(monkeypatch)
    path = next(iter(student_paths.values()))
    load_tokenizer(path, ModelConfig(trust_remote_code=True))
    load_causal_lm(path, ModelConfig(trust_remote_code=True), torch.device("cpu"))
    load_tokenizer(path, ModelConfig())
    assert [kw["trust_remote_code"] for kw in loads] == [True, True, False]


def test_every_auto_from_pretrained_call_passes_trust_remote_code():
    """A guard for code added later: every ``Auto*.from_pretrained(...)`` in the packages names
    ``trust_remote_code`` (from the config), so no load silently takes the library's default."""
    missing = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "from_pretrained"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id.startswith("Auto")
                and not any(k.arg == "trust_remote_code" for k in node.keywords)
            ):
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not missing, f"from_pretrained without trust_remote_code=: {missing}"


# Calls that run text as code or unpickle: none may appear in the packages.
BANNED_NAMES = {"eval", "exec", "compile", "__import__"}
BANNED_ATTRS = {
    ("pickle", "load"), ("pickle", "loads"), ("marshal", "loads"), ("torch", "load"),
    ("yaml", "load"), ("yaml", "unsafe_load"), ("os", "system"), ("os", "popen"),
}  # fmt: skip


def test_no_eval_exec_or_unpickling_in_the_packages():
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if isinstance(f, ast.Name) and f.id in BANNED_NAMES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {f.id}(")
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                if (f.value.id, f.attr) in BANNED_ATTRS:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {f.value.id}.{f.attr}(")
            if any(k.arg == "shell" and getattr(k.value, "value", False) is True for k in node.keywords):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} shell=True")
    assert not found, found
    assert len(SOURCES) > 20, "the scan saw the packages"


def test_code_in_an_edit_is_trained_on_as_text(make_student, task, tmp_path):
    marker = tmp_path / "pwned"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f"Q: {{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}} A: red",
        f"{{'__class__': 'x'}}\nexec(open('{marker}', 'w').write('x'))",
    ]
    s = make_student("llama-t")
    ctx = task.train_contexts()[0]
    for text in payloads:
        out = s.evaluate_edit(text, ctx, seed=0)
        assert out.error is None and out.adapted is not None
    assert not marker.exists()


def test_yaml_python_tags_are_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.yaml"
    p.write_text(f'run: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    assert not marker.exists()


def test_config_interpolation_cannot_call_code(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "interp.yaml"
    p.write_text(f'run:\n  name: ${{eval:\'open("{marker}", "w")\'}}\n')
    with pytest.raises(ConfigError, match="run.name"):
        load_config(p)
    assert not marker.exists()


def _unsafe_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.suffix in UNSAFE_FORMATS]


def test_checkpoints_are_safetensors(offline_smoke_run):
    run = offline_smoke_run["run"]
    assert (run / "teacher" / "round_1" / "model.safetensors").is_file()
    assert _unsafe_files(run) == []
    assert list((CACHE / "tiny").glob("*/model.safetensors")), "the tiny models are cached as safetensors"
    assert _unsafe_files(CACHE / "tiny") == []
