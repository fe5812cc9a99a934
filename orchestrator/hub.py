"""Share a trained teacher: ``teachedit push RUN_DIR --round K --repo-id ID`` (or ``--to DIR``).

The round's checkpoint (``teacher/round_<k>``: merged safetensors weights and tokenizer) or, with
``--adapter-only``, its LoRA adapter (``teacher/round_<k>/adapter``, written when ``teacher.train.method=lora``)
is staged in a folder with a generated model card (``README.md``: task, pool, reward, algorithm, the held-out
reward per round, versions), then uploaded with ``huggingface_hub`` (``create_repo`` + ``upload_folder``) or
copied to a local folder. Nothing is uploaded unless ``--repo-id`` is given and the hub is online.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


class PushError(ValueError):
    """The run, round or destination cannot be pushed; the message names the fix."""


def saved_rounds(run_dir: Path) -> list[int]:
    return sorted(
        int(p.name.removeprefix("round_"))
        for p in (run_dir / "teacher").glob("round_*")
        if p.is_dir() and p.name.removeprefix("round_").isdigit()
    )


def _read(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    if not (run_dir / "config.yaml").is_file():
        raise PushError(f"{run_dir} is not a teachedit run directory (no config.yaml)")
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    metrics = []
    if (run_dir / "metrics.jsonl").is_file():
        metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    summary = (
        json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    )
    return config, metrics, summary


def _model_name(m: dict[str, Any]) -> str:
    if m.get("path"):
        return str(m["path"])
    if m.get("gguf"):
        return f"gguf:{m['gguf']}"
    if m.get("tiny"):
        t = m["tiny"]
        return f"tiny {t.get('family')} ({t.get('hidden_size')}x{t.get('num_layers')}, built locally)"
    return "?"


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/")) and not Path(name).exists()


def model_card(run_dir: Path, round_index: int, adapter_only: bool) -> str:
    """The model card (README.md) of ``teacher/round_<round_index>`` of a run."""
    config, metrics, summary = _read(run_dir)
    run, task, teacher = config.get("run", {}), config.get("task", {}), config.get("teacher", {})
    algo, reward, students = config.get("algorithm", {}), config.get("reward", {}), config.get("students", [])
    initial = _model_name(teacher.get("model", {}))
    train = teacher.get("train", {})
    adapter_base = ""
    if adapter_only:
        cfg_path = run_dir / "teacher" / f"round_{round_index}" / "adapter" / "adapter_config.json"
        adapter_base = json.loads(cfg_path.read_text()).get("base_model_name_or_path", "")
    front = {
        "library_name": "peft" if adapter_only else "transformers",
        "tags": ["teachedit", "self-edits", "knowledge-incorporation", str(algo.get("name", ""))],
    }
    base = adapter_base if adapter_only else initial
    if _is_hub_id(base):
        front["base_model"] = base
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {run.get('name', run_dir.name)}: teacher after {round_index} update(s)",
        "",
        'A **teacher** trained with teachedit to write fine-tuning data ("edits") for '
        "a passage, such that *other* models (the student pool below) answer questions about the passage better "
        "after a small fine-tune on the edit, without seeing the passage (SEAL's knowledge-incorporation "
        "setting, Zweiger et al., 2025, with teacher and students separated).",
        "",
        "## Training",
        "",
        f"- Initial teacher: `{initial}`; prompt format `{teacher.get('prompt_format')}` "
        f"(chat template: {teacher.get('use_chat_template', 'auto')}).",
        f"- Task: `{task.get('name')}` ({task.get('num_train_contexts')} training and "
        f"{task.get('num_heldout_contexts')} held-out contexts per round"
        + (
            f", data `{task.get('path') or task.get('dataset')}`"
            if task.get("path") or task.get("dataset")
            else ""
        )
        + ").",
        f"- Algorithm: `{algo.get('name')}`, {algo.get('rounds')} round(s)"
        + (f", keep rule `{algo.get('keep')}`" if algo.get("name") == "rest_em" else "")
        + f"; teacher update `{train.get('method')}` (learning rate {train.get('learning_rate')}, "
        f"{train.get('epochs')} epoch(s)).",
        f"- Reward: `{reward.get('name')}` on `{reward.get('score')}`, pool aggregate `{reward.get('aggregate')}`.",
        "",
        "Student pool (each adapted on every edit, scored without the passage, restored):",
        "",
        "| student | model | adaptation |",
        "|---|---|---|",
    ]
    for s in students:
        a = s.get("adapt", {})
        how = f"{a.get('method')} lr {a.get('learning_rate')}, {a.get('epochs')} epoch(s)"
        if a.get("method") == "lora":
            how = f"LoRA r={a.get('lora_r')}, " + how.removeprefix("lora ")
        lines.append(f"| {s.get('name')} | `{_model_name(s.get('model', {}))}` | {how} |")
    lines += [
        "",
        "## Held-out reward per round",
        "",
        "Mean reward of the teacher's edits on held-out contexts (never trained on) ± standard error over contexts;"
        " round k is the teacher after k updates.",
        "",
        "| round | mean reward (training contexts) | held-out reward | kept edits |",
        "|---|---|---|---|",
    ]
    for m in metrics:
        mark = " **(this model)**" if m.get("round") == round_index else ""
        lines.append(
            f"| {m.get('round')}{mark} | {m.get('mean_reward', float('nan')):+.4f} | "
            f"{m.get('heldout_mean_reward', float('nan')):+.4f} ± {m.get('heldout_sem', float('nan')):.4f} | "
            f"{m.get('kept', '')} |"
        )
    if not metrics:
        lines.append("| (no metrics.jsonl) | | | |")
    lines += ["", "## Use", ""]
    if adapter_only:
        lines += [
            f"A LoRA adapter (peft) on `{adapter_base}`"
            + (
                " (the previous round's teacher of the same run: push that round too, merged)."
                if not _is_hub_id(adapter_base)
                else "."
            ),
            "",
            "```python",
            "from peft import AutoPeftModelForCausalLM",
            "model = AutoPeftModelForCausalLM.from_pretrained(REPO_OR_FOLDER)",
            "```",
        ]
    else:
        lines += [
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "tok = AutoTokenizer.from_pretrained(REPO_OR_FOLDER)",
            "model = AutoModelForCausalLM.from_pretrained(REPO_OR_FOLDER)",
            "```",
        ]
    from core.prompts import PROMPT_FORMATS

    fmt = str(teacher.get("prompt_format"))
    template = (teacher.get("prompt_formats") or {}).get(fmt) or PROMPT_FORMATS.get(fmt)
    lines += [
        "",
        f"Prompt it as it was trained: teachedit's `{fmt}` prompt format, `{{title}}` and `{{context}}` filled "
        "with the passage, through the chat template when the tokenizer has one (as the user turn):",
        "",
        "```text",
        str(template).rstrip("\n") if template else "(format not found)",
        "```",
    ]
    prov = summary.get("provenance") or {}
    if prov:
        versions = ", ".join(f"{k} {v}" for k, v in (prov.get("versions") or {}).items())
        git = prov.get("git") or {}
        lines += ["", "## Provenance", "", f"- Packages: {versions}."]
        if git.get("commit"):
            lines.append(
                f"- teachedit commit `{git['commit']}`"
                + (" (with local changes)" if git.get("dirty") else "")
                + "."
            )
        if prov.get("command"):
            lines.append(f"- Command: `{prov['command']}`.")
    return "\n".join(lines) + "\n"


def stage(run_dir: str | Path, round_index: int | None, adapter_only: bool, out: str | Path) -> Path:
    """Write the files to publish (weights or adapter, tokenizer, ``README.md``) into ``out``."""
    run_dir = Path(run_dir)
    _read(run_dir)
    rounds = saved_rounds(run_dir)
    if not rounds:
        raise PushError(
            f"{run_dir} has no teacher checkpoint (teacher/round_<k>): no round trained the teacher yet"
        )
    k = rounds[-1] if round_index is None else round_index
    if k not in rounds:
        raise PushError(f"--round {k}: {run_dir}/teacher/round_{k} does not exist; saved rounds: {rounds}")
    src = run_dir / "teacher" / f"round_{k}"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if adapter_only:
        if not (src / "adapter" / "adapter_config.json").is_file():
            raise PushError(
                f"--adapter-only: {src} has no LoRA adapter (written when teacher.train.method=lora); "
                "push the merged weights instead"
            )
        for f in (src / "adapter").iterdir():
            shutil.copy2(f, out / f.name)
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, out / name)
    else:
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, out / f.name)
    (out / "README.md").write_text(model_card(run_dir, k, adapter_only))
    return out


def push(
    run_dir: str | Path,
    round_index: int | None = None,
    repo_id: str | None = None,
    to: str | Path | None = None,
    adapter_only: bool = False,
    private: bool = False,
) -> str:
    """Publish a run's teacher: to the hub (``repo_id``) or a local folder (``to``). Returns where it went."""
    if (repo_id is None) == (to is None):
        raise PushError("give either --repo-id ID (the hub) or --to DIR (a local folder)")
    if to is not None:
        to = Path(to)
        if to.exists() and any(to.iterdir()):
            raise PushError(f"--to {to}: the folder exists and is not empty; choose a new one")
        stage(run_dir, round_index, adapter_only, to)
        return str(to)
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise PushError(
            "the hub is offline (HF_HUB_OFFLINE is set): unset it to push, or write a folder with --to DIR"
        )
    from huggingface_hub import HfApi

    api = HfApi()
    with tempfile.TemporaryDirectory(prefix="teachedit-push-") as tmp:
        folder = stage(run_dir, round_index, adapter_only, Path(tmp) / "model")
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=f"teachedit: teacher of {Path(run_dir).name}"
            + (" (LoRA adapter)" if adapter_only else ""),
        )
    log.info("pushed %s to %s", run_dir, url)
    return str(url)
