"""Shared fixtures: offline environment, tiny models built once per session from configs/smoke.yaml."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
CACHE = ROOT / ".cache" / "teachedit"  # tiny builds are keyed by spec hash, so tests and demo can share it


@pytest.fixture(scope="session")
def smoke_cfg():
    from core.config import load_config

    return load_config(CONFIGS / "smoke.yaml", [f"run.cache_dir={CACHE}"])


@pytest.fixture(scope="session")
def task(smoke_cfg):
    from orchestrator.tasks import build_task

    return build_task(smoke_cfg.task)


@pytest.fixture(scope="session")
def student_paths(smoke_cfg, task):
    from orchestrator.models import resolve_model_path

    return {
        s.name: resolve_model_path(s.model, "student", task, smoke_cfg.run.cache_dir)
        for s in smoke_cfg.students
    }


@pytest.fixture
def make_student(smoke_cfg, task, student_paths):
    """Build a fresh Student (its own model copy) by name, with optional adapt overrides."""
    from core.models import load_causal_lm, load_tokenizer
    from student.student import Student

    def make(name: str = "llama-t", **adapt):
        sc = next(s for s in smoke_cfg.students if s.name == name)
        import copy

        sc = copy.deepcopy(sc)
        for k, v in adapt.items():
            setattr(sc.adapt, k, v)
        path = student_paths[name]
        return Student(
            sc, load_causal_lm(path, sc.model, torch.device("cpu")), load_tokenizer(path, sc.model), task
        )

    return make


@pytest.fixture
def stand_in_vllm(monkeypatch):
    """TRL's VLLMGeneration builds tests.vllm_stand_in.StandInLLM engines (undone after the test); yields the
    list of engines built."""
    import trl.generation.vllm_generation as vg

    from tests.vllm_stand_in import StandInLLM, StandInSamplingParams

    # TRL sets the launcher's variables for vLLM (os.environ directly): any left behind would make later tests
    # look launched, so they are put back as they were
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    before = {n: os.environ.get(n) for n in names}
    monkeypatch.setattr(vg, "is_vllm_available", lambda *a, **k: True)
    monkeypatch.setattr(vg, "LLM", StandInLLM, raising=False)
    monkeypatch.setattr(vg, "SamplingParams", StandInSamplingParams, raising=False)
    StandInLLM.built.clear()
    try:
        yield StandInLLM.built
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
