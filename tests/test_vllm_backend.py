"""``teacher.generation.backend: vllm``: the teacher samples through TRL's ``VLLMGeneration``.

This machine has neither a GPU nor the vllm package, so the engine TRL builds is replaced by a stand-in
(:class:`StandInLLM`, tests only) that implements what TRL's class calls on vLLM's ``LLM``: construction from the
model's path, ``load_weights`` on the model runner, ``generate`` with per-request seeds, ``reset_prefix_cache``.
It samples with transformers from its own copy of the weights, so the test checks TRL's real ``VLLMGeneration``
and the teacher's use of it: the prompts it is given (token ids, as the teacher trains on them), the per-edit
seeds, the order of the edits, and that every teacher update reaches the engine's weights bit-exactly. vLLM
itself is not run here (benchmarks/README.md says so)."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from core.config import ConfigError, load_config
from core.seeds import derive_seed
from tests.conftest import CONFIGS


def _weights_equal(net, model) -> bool:
    theirs = dict(net.named_parameters())
    return all(torch.equal(theirs[n], p) for n, p in model.named_parameters())


def test_the_teacher_samples_through_trls_vllm_generation(smoke_cfg, task, stand_in_vllm):
    from orchestrator.models import build_teacher

    cfg = copy.deepcopy(smoke_cfg)
    g = cfg.teacher.generation
    g.backend, g.vllm = "vllm", {"mode": "colocate", "gpu_memory_utilization": 0.3}
    teacher, _ = build_teacher(cfg, task, torch.device("cpu"))
    contexts = task.train_contexts()[:3]
    edits = teacher.propose(contexts, 0, seed=5)

    (llm,) = stand_in_vllm  # one engine, built as TRL's colocate mode builds it
    assert llm.kwargs["distributed_executor_backend"] == "external_launcher"
    assert llm.kwargs["gpu_memory_utilization"] == 0.3 and llm.kwargs["seed"] == 0
    assert _weights_equal(llm.net, teacher.model)  # pushed once after the engine was built
    # one call per sample index, every context in it, as token ids tokenized as SFT tokenizes them
    prompts = [teacher.sft_records([(teacher.prompt(c), "")])[0]["input_ids"][:-1] for c in contexts]
    assert llm.requests == [(p, derive_seed(5, k)) for k in range(g.num_edits) for p in prompts]
    assert [(e.context_id, e.sample_index, e.round) for e in edits] == [
        (c.id, k, 0) for c in contexts for k in range(g.num_edits)
    ]
    assert all(e.prompt == teacher.prompt(c) for e, c in zip(edits[:: g.num_edits], contexts))
    assert len({e.text for e in edits}) > 1

    # a sample depends on its prompt and seed only: the same seed gives the same edits, a context alone too
    assert [e.text for e in teacher.propose(contexts, 0, seed=5)] == [e.text for e in edits]
    alone = teacher.propose(contexts[1:2], 0, seed=5)
    assert [e.text for e in alone] == [e.text for e in edits[g.num_edits : 2 * g.num_edits]]
    assert [e.text for e in teacher.propose(contexts, 0, seed=6)] != [e.text for e in edits]

    # after an update the engine samples from the new weights (pushed bit-exactly before the next sampling)
    loads = llm.loads
    teacher.train([(e.prompt, e.text) for e in edits[:4]], seed=0)
    assert not _weights_equal(llm.net, teacher.model)
    teacher.propose(contexts[:1], 1, seed=5)
    assert llm.loads > loads and _weights_equal(llm.net, teacher.model)
    assert len(stand_in_vllm) == 1  # never rebuilt


def _cfg(*overrides: str):
    return load_config(CONFIGS / "smoke.yaml", list(overrides))


def test_the_vllm_backend_is_refused_without_vllm_or_a_gpu_and_its_options_checked(monkeypatch):
    from orchestrator.preflight import check_teacher_backend

    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "vllm" else real_find(n, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = _cfg("teacher.generation.backend=vllm")
    with pytest.raises(
        ConfigError,
        match=r"backend=vllm: the vllm package is not installed .*; no CUDA GPU is visible\. .*"
        r"set teacher.generation.backend=hf",
    ):
        check_teacher_backend(cfg)
    # `teachedit eval --sources teacher` samples with the same teacher: refused the same way
    from orchestrator.protocols import EvalRequest, plan_eval

    data = CONFIGS.parent / "orchestrator" / "data" / "squad"
    squad = _cfg(
        "teacher.generation.backend=vllm",
        "task.name=squad",
        f"task.path={data / 'edits_qwen2.5-7b_train.json'}",
    )
    req = EvalRequest(data=str(data / "passages.json"), edits=[], limit=1, sources=["teacher"])
    with pytest.raises(ConfigError, match=r"backend=vllm: the vllm package is not installed"):
        plan_eval(squad, req)
    with pytest.raises(ConfigError, match=r"vllm.top_p: set by the teacher from teacher.generation"):
        check_teacher_backend(_cfg("teacher.generation.backend=vllm", "teacher.generation.vllm.top_p=0.5"))
    with pytest.raises(ConfigError, match=r"vllm.gpu_memory: not an argument .*gpu_memory_utilization"):
        check_teacher_backend(
            _cfg("teacher.generation.backend=vllm", "teacher.generation.vllm.gpu_memory=0.5")
        )
    with pytest.raises(
        ConfigError, match=r"teacher.generation.vllm is set but teacher.generation.backend is 'hf'"
    ):
        check_teacher_backend(_cfg("teacher.generation.vllm.mode=server"))
    with pytest.raises(ConfigError, match=r"teacher.generation.backend: use hf \| vllm, not .sglang."):
        _cfg("teacher.generation.backend=sglang")
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: object() if n == "vllm" else real_find(n, *a)
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_teacher_backend(  # both present (faked): nothing to refuse
        _cfg("teacher.generation.backend=vllm", "teacher.generation.vllm.mode=server")
    )
