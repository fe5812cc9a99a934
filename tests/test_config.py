from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ConfigError, load_config, to_yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL_YAML = sorted(p for p in CONFIGS.rglob("*.yaml"))


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_in_repo_loads_and_validates(path, tmp_path):
    cfg = load_config(path)
    assert cfg.students, "every config names at least one student"
    # The resolved YAML round-trips to the same config (written outside configs/: never into the source tree).
    again = tmp_path / f"roundtrip-{path.stem}.yaml"
    again.write_text(to_yaml(cfg))
    assert load_config(again) == cfg


def test_overrides_change_values_and_swap_architecture():
    cfg = load_config(CONFIGS / "default.yaml", ["algorithm.rounds=5", "students.0.model.tiny.family=qwen2"])
    assert cfg.algorithm.rounds == 5
    assert cfg.students[0].model.tiny.family == "qwen2"
    assert cfg.students[1].model.tiny.family == "gpt2"  # the rest of the list is untouched


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["algorithm.rounds=-1"], "algorithm.rounds"),
        (["algorithm.roundz=2"], "unknown config key"),
        (["algorithm.rounds=two"], "algorithm.rounds"),
        (["reward.name=nope"], "reward.name"),
        (["reward.score=bleu"], "reward.score"),
        (["teacher.generation.temperature=0"], "temperature"),
        (["students.0.adapt.method=qlora"], "students[0].adapt.method"),
        (["students.0.model.tiny.family=mamba"], "students[0].model.tiny.family"),
        (["students.1.name=llama-s"], "unique"),
        (["task.name=mmlu"], "task.name"),
        (["task.path=/nonexistent/file.json"], "task.path"),
        (["run.device=tpu"], "run.device"),
        (["algorithm.keep=top3"], "algorithm.keep"),
        (["rounds"], "key=value"),
    ],
)
def test_bad_values_name_the_field(overrides, needle):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(CONFIGS / "default.yaml", overrides)
    assert needle in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: {name: x\nstudents: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_students_required(tmp_path):
    p = tmp_path / "nostudents.yaml"
    p.write_text("teacher: {model: {path: some/model}}\n")
    with pytest.raises(ConfigError, match="students"):
        load_config(p)


def test_trust_remote_code_is_off_by_default():
    cfg = load_config(CONFIGS / "default.yaml")
    assert cfg.teacher.model.trust_remote_code is False
    assert all(s.model.trust_remote_code is False for s in cfg.students)


def test_config_show_lists_every_field_with_its_default_and_help(capsys):
    from core.config import Config, describe_fields
    from orchestrator.cli import main

    rows = describe_fields()
    assert all(help_text for *_, help_text in rows), "every field has a help string"
    keys = {r[0] for r in rows}
    assert {"run.seed", "teacher.generation.num_edits", "students.<i>.adapt.learning_rate"} <= keys
    assert dict((r[0], r[2]) for r in rows)["teacher.generation.num_edits"] == repr(
        Config().teacher.generation.num_edits
    )
    assert main(["config", "show", "reward"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("reward.") and "run.seed" not in out
    assert main(["config", "show", "rewrd"]) == 2
    assert "no section 'rewrd'" in capsys.readouterr().err


def test_model_dtype_auto_and_attn_implementation_reach_from_pretrained(tmp_path, student_paths):
    """dtype: auto loads the checkpoint's own dtype; attn_implementation is passed through; bad values are
    refused naming the field."""
    import torch

    from core.config import ConfigError, ModelConfig, load_config
    from core.models import load_causal_lm

    path = student_paths["llama-t"]
    model = load_causal_lm(
        path, ModelConfig(path=path, dtype="auto", attn_implementation="eager"), torch.device("cpu")
    )
    assert next(model.parameters()).dtype == torch.float32  # the tiny build is saved in float32
    assert model.config._attn_implementation == "eager"
    half = load_causal_lm(
        path, ModelConfig(path=path, dtype="bfloat16", attn_implementation="sdpa"), torch.device("cpu")
    )
    assert next(half.parameters()).dtype == torch.bfloat16 and half.config._attn_implementation == "sdpa"
    with pytest.raises(ConfigError, match=r"students\[0\].model.attn_implementation"):
        load_config(CONFIGS / "smoke.yaml", ["students.0.model.attn_implementation=fast"])


def test_trainer_args_reach_trl_and_bad_ones_are_refused(tmp_path):
    """teacher.train.trainer_args / algorithm.grpo.trainer_args / sweep.distill.trainer_args: any field of
    the TRL config, merged over the project's settings; unknown or project-owned fields are refused."""
    from trl import GRPOConfig, SFTConfig

    from core import trl_args
    from orchestrator.preflight import check_trainer_args

    args = trl_args.build(
        SFTConfig,
        {"output_dir": str(tmp_path), "learning_rate": 1e-3, "use_cpu": True, "bf16": False},
        {"warmup_steps": 7, "weight_decay": 0.1},
        "x",
    )
    assert (args.warmup_steps, args.weight_decay, args.learning_rate) == (7, 0.1, 1e-3)
    with pytest.raises(ConfigError, match=r"teacher.train.trainer_args: \['warmup_stepz'\] is not a field"):
        check_trainer_args(load_config(CONFIGS / "smoke.yaml", ["teacher.train.trainer_args.warmup_stepz=3"]))
    with pytest.raises(ConfigError, match="output_dir cannot be set here"):
        check_trainer_args(
            load_config(CONFIGS / "smoke.yaml", ["algorithm.grpo.trainer_args.output_dir=/tmp"])
        )
    with pytest.raises(ConfigError, match="GRPOConfig rejects"):
        trl_args.build(
            GRPOConfig, {"output_dir": str(tmp_path)}, {"num_generations": 1}, "algorithm.grpo.trainer_args"
        )


def test_teacher_update_uses_trainer_args(smoke_cfg, task):
    """The ReST-EM teacher update really runs with the user's TRL arguments (max_steps=1: one step)."""
    import copy

    import torch

    from orchestrator.models import build_teacher

    cfg = copy.deepcopy(smoke_cfg)
    cfg.teacher.train.trainer_args = {"max_steps": 1, "logging_steps": 1}
    teacher, _ = build_teacher(cfg, task, torch.device("cpu"))
    seen = {}
    import trl

    real_init = trl.SFTTrainer.__init__

    def init(self, *a, **k):
        seen["args"] = k["args"]
        real_init(self, *a, **k)

    trl.SFTTrainer.__init__ = init
    try:
        edits = teacher.propose(task.train_contexts()[:1], 0, seed=0)
        teacher.train([(e.prompt, e.text) for e in edits[:2]], seed=0)
    finally:
        trl.SFTTrainer.__init__ = real_init
    assert seen["args"].max_steps == 1 and seen["args"].logging_steps == 1


def test_grpo_with_vllm_is_refused_without_vllm_or_a_gpu(monkeypatch):
    """algorithm.grpo.trainer_args.use_vllm (TRL's vLLM generation, colocate or server): where the vllm
    package or a CUDA GPU is missing the run is refused before it starts, naming what is missing and the fix;
    with both present (faked here) the check passes and TRL gets the fields as given."""
    import importlib.util

    import torch

    from orchestrator.preflight import check_trainer_args

    cfg = load_config(
        CONFIGS / "smoke.yaml",
        [
            "algorithm.name=grpo",
            "algorithm.grpo.prompts_per_step=2",
            "algorithm.grpo.trainer_args.use_vllm=true",
            "algorithm.grpo.trainer_args.vllm_mode=colocate",
        ],
    )
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "vllm" else real_find(n, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        ConfigError, match=r"use_vllm=true: the vllm package is not installed .*; no CUDA GPU"
    ):
        check_trainer_args(cfg)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: object() if n == "vllm" else real_find(n, *a)
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_trainer_args(cfg)  # both present: nothing to refuse
