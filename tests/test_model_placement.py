"""`model.quantization` (bitsandbytes 4/8-bit, QLoRA) and `model.device` (a device per role).

bitsandbytes needs CUDA, which this machine lacks: what is tested is what teachedit decides and passes to
transformers (the `BitsAndBytesConfig`, `device_map`, no `.to()` afterwards), the refusals, and that a quantized
student is adapted through peft one edit at a time. Loading real 4-bit weights is left to a GPU machine."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch

from core import models
from core.config import ConfigError, ModelConfig, load_config

from .conftest import CACHE, CONFIGS


def load(*overrides: str):
    return load_config(CONFIGS / "smoke.yaml", [f"run.cache_dir={CACHE}", *overrides])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["students.0.model.quantization=2bit"], "students[0].model.quantization: use null, 4bit or 8bit"),
        (["students.0.model.quantization=4bit", "students.0.adapt.method=full"], "students[0].adapt.method"),
        (["teacher.model.quantization=4bit"], "teacher.train.method: a quantized teacher"),
        (
            ["teacher.model.quantization=8bit", "teacher.model.device=cpu", "teacher.train.method=lora"],
            "needs a CUDA",
        ),
        (
            ["students.1.model.device=gpu"],
            "students[1].model.device: use null (run.device), auto, cpu, cuda or cuda:N",
        ),
    ],
)
def test_placement_settings_are_validated(overrides, message):
    with pytest.raises(ConfigError) as err:
        load(*overrides)
    assert message in str(err.value)


def test_a_valid_placement_loads():
    cfg = load(
        "teacher.model.device=cuda:1", "students.0.model.quantization=4bit", "students.0.model.device=cuda:0"
    )
    assert cfg.students[0].model.quantization == "4bit" and cfg.teacher.model.device == "cuda:1"


def test_quantization_without_bitsandbytes_is_refused_with_the_fix(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a)
    )
    with pytest.raises(
        models.ModelLoadError, match=r"students\[0\].model.quantization=4bit needs bitsandbytes: pip"
    ):
        models.quantization_config(ModelConfig(path="x", quantization="4bit"), "students[0].model")


def test_quantized_load_passes_qlora_settings_and_a_device_map(monkeypatch):
    """With bitsandbytes and CUDA present (faked), transformers gets NF4 + double quantization computing in
    bfloat16, placed by device_map on the model's device, and the model is not moved afterwards."""
    import transformers

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: object() if n == "bitsandbytes" else real(n, *a)
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    seen = {}

    class Loaded:
        def to(self, *a, **k):  # pragma: no cover - must not be called
            raise AssertionError("a quantized model is placed by device_map, never moved")

    def fake(path, **kwargs):
        seen.update(kwargs)
        return Loaded()

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    mc = ModelConfig(path="some/model", quantization="4bit", device="cuda:1", dtype="auto")
    assert isinstance(models.load_causal_lm("some/model", mc, torch.device("cpu"), "teacher.model"), Loaded)
    q = seen["quantization_config"]
    assert (q.load_in_4bit, q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant) == (True, "nf4", True)
    assert q.bnb_4bit_compute_dtype == torch.bfloat16 and seen["device_map"] == {"": torch.device("cuda:1")}
    seen.clear()
    models.load_causal_lm(
        "some/model", ModelConfig(path="m", quantization="8bit", dtype="float16"), torch.device("cuda")
    )
    assert seen["quantization_config"].load_in_8bit and not seen["quantization_config"].load_in_4bit


def test_model_device_overrides_the_run_device(student_paths, monkeypatch, caplog):
    path = student_paths["llama-t"]
    model = models.load_causal_lm(path, ModelConfig(path=path, device="cpu"), torch.device("meta"))
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert {
        p.device.type
        for p in models.load_causal_lm(path, ModelConfig(path=path), torch.device("meta")).parameters()
    } == {"meta"}, "no model.device: the run's device"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with caplog.at_level(logging.WARNING):
        placed = models.load_causal_lm(
            path, ModelConfig(path=path, device="cpu"), torch.device("meta"), "students[0].model"
        )
    assert {p.device.type for p in placed.parameters()} == {"meta"}
    assert "students[0].model.device=cpu is ignored under the launcher" in caplog.text


def test_a_quantized_student_adapts_one_edit_at_a_time(make_student):
    s = make_student("llama-t", edit_batch_size=8)
    assert s.edit_batch_size == 8
    s.cfg.model.quantization = "4bit"
    assert s.edit_batch_size == 1
