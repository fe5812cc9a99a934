"""A trained teacher shared: the LoRA adapter kept beside the merged checkpoint, and `teachedit push` with a
generated model card, to a local folder or (faked, no network) to the hub."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from orchestrator.cli import main
from orchestrator.hub import PushError, push

from .conftest import CACHE, CONFIGS


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    rc = main([
        "run", str(CONFIGS / "smoke.yaml"), f"run.output_dir={out}", f"run.cache_dir={CACHE}", "run.name=lora",
        "teacher.train.method=lora", "teacher.train.lora_r=4", "teacher.train.lora_alpha=8",
        "teacher.train.learning_rate=1e-2", "algorithm.keep=seal",
    ])  # fmt: skip
    assert rc == 0
    return out / "lora"


def test_the_lora_update_is_saved_as_an_adapter_that_rebuilds_the_merged_teacher(lora_run, smoke_cfg, task):
    from peft import PeftModel
    from safetensors.torch import load_file

    from core.models import load_causal_lm
    from orchestrator.models import resolve_model_path

    adapter = lora_run / "teacher" / "round_1" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    initial = resolve_model_path(smoke_cfg.teacher.model, "teacher", task, CACHE)
    assert config["base_model_name_or_path"] == initial and config["r"] == 4
    base = load_causal_lm(initial, smoke_cfg.teacher.model, torch.device("cpu"))
    rebuilt = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().state_dict()
    merged = load_file(str(lora_run / "teacher" / "round_1" / "model.safetensors"))
    changed = 0
    for k, v in merged.items():
        assert torch.allclose(rebuilt[k], v, atol=1e-6), k
        changed += not torch.equal(
            load_causal_lm(initial, smoke_cfg.teacher.model, torch.device("cpu")).state_dict()[k], v
        )
    assert changed > 0, "the update changed the teacher"


def test_push_to_a_folder_writes_the_weights_and_a_model_card(lora_run, tmp_path, capsys):
    dest = tmp_path / "pushed"
    assert main(["push", str(lora_run), "--to", str(dest)]) == 0
    assert f"written to {dest}" in capsys.readouterr().out
    names = {p.name for p in dest.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "README.md",
    } <= names and "adapter" not in names
    card = (dest / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers" and "teachedit" in front["tags"]
    metrics = [json.loads(x) for x in (lora_run / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        assert f"{m['heldout_mean_reward']:+.4f} ± {m['heldout_sem']:.4f}" in card
    assert "| 1 **(this model)** |" in card and "| llama-t |" in card and "| gpt2-t |" in card
    assert "Reward: `accuracy_gain` on `em`" in card and "## Provenance" in card
    assert "```text\nPassage: {context}\nNotes:\n```" in card, "the smoke teacher's prompt template, verbatim"


def test_push_adapter_only(lora_run, tmp_path):
    dest = tmp_path / "adapter"
    push(lora_run, 1, to=dest, adapter_only=True)
    names = {p.name for p in dest.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= names
    assert "model.safetensors" not in names
    card = (dest / "README.md").read_text()
    assert (
        yaml.safe_load(card.split("---")[1])["library_name"] == "peft" and "AutoPeftModelForCausalLM" in card
    )


def test_push_to_the_hub_uploads_the_staged_folder(lora_run, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create", repo_id, private, exist_ok))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, repo_id, folder_path, commit_message):
            from pathlib import Path

            calls.append(
                ("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir()), commit_message)
            )

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PushError, match="the hub is offline"):
        push(lora_run, repo_id="me/teacher")
    assert not calls
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert push(lora_run, repo_id="me/teacher", private=True) == "https://huggingface.co/me/teacher"
    assert calls[0] == ("create", "me/teacher", True, True)
    assert calls[1][0] == "upload" and {"README.md", "model.safetensors"} <= set(calls[1][2])


def test_push_refusals_name_the_fix(lora_run, tmp_path, capsys):
    assert main(["push", str(lora_run), "--round", "7", "--to", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("teachedit: error: --round 7") and "saved rounds: [1]" in err
    with pytest.raises(PushError, match="saved rounds: \\[1\\]"):
        push(lora_run, 7, to=tmp_path / "y")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "f").write_text("x")
    with pytest.raises(PushError, match="not empty"):
        push(lora_run, to=busy)
    with pytest.raises(PushError, match="not a teachedit run directory"):
        push(tmp_path, to=tmp_path / "z")


def test_a_full_fine_tuned_teacher_has_no_adapter_to_push(tmp_path):
    rc = main([
        "run", str(CONFIGS / "smoke.yaml"), f"run.output_dir={tmp_path}", f"run.cache_dir={CACHE}", "run.name=full",
        "algorithm.keep=seal",
    ])  # fmt: skip
    assert rc == 0
    assert not (tmp_path / "full" / "teacher" / "round_1" / "adapter").exists()
    with pytest.raises(PushError, match="has no LoRA adapter"):
        push(tmp_path / "full", to=tmp_path / "a", adapter_only=True)
