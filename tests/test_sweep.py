"""`teachedit sweep` on tiny models: a 2x2 matrix (+ the distillation row) and its cache; logit distillation
changes the student and restores it; held-out transfer across student pools; bad sweep configs."""

from __future__ import annotations

import copy
import json
import os
import struct
from pathlib import Path

import pytest
import torch

from core.config import ConfigError, DistillConfig, load_config, to_yaml
from orchestrator.cli import main
from orchestrator.protocols.data import load_eval_data
from orchestrator.sweep import check_sweep, ensure_teacher_run
from orchestrator.sweep.report import Gain, pool_gain

from .conftest import CACHE, CONFIGS
from .test_protocols import PASSAGES, SQUAD, TRAIN, _shrink

# configs/sweep_tiny.yaml at test size (the test_protocols sizes, so the tiny builds are shared).
OVERRIDES = [
    f"run.cache_dir={CACHE}",
    "run.progress=false",
    f"task.path={TRAIN}",
    "teacher.model.tiny.hidden_size=32",
    "teacher.model.tiny.vocab_size=400",
    "teacher.model.tiny.pretrain_steps=5",
    "teacher.generation.num_edits=2",
    "teacher.generation.max_new_tokens=24",
    *[o for i in range(4) for o in _shrink(i)],
    "sweep.limit=2",
    "sweep.k=1",
    f"sweep.data={PASSAGES}",
]


@pytest.fixture(scope="module")
def sweep_cfg():
    return load_config(CONFIGS / "sweep_tiny.yaml", OVERRIDES)


def _write(cfg, path: Path, **sweep) -> Path:
    cfg = copy.deepcopy(cfg)
    for k, v in sweep.items():
        setattr(cfg.sweep, k, v)
    path.write_text(to_yaml(cfg))
    return path


def _small_edits(path: Path) -> Path:
    records = json.loads((SQUAD / "edits_gpt4_1.json").read_text())[:2]
    path.write_text(json.dumps(records))
    return path


def _cells(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}


def test_sweep_2x2_distill_row_and_cache(sweep_cfg, tmp_path, capsys):
    edits = _small_edits(tmp_path / "gpt.json")
    cfg_path = _write(
        sweep_cfg,
        tmp_path / "s.yaml",
        sources={"passage": "passage", "gpt-4.1": f"edits:{edits}"},
        students=["llama-tt", "gpt2-s"],
        protocols=["single"],
        teacher_run=None,
        teacher_pool=None,
        pools={},
    )
    args = ["sweep", str(cfg_path), f"run.output_dir={tmp_path}", "sweep.name=sw"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert (
        "8 cell(s) computed, 0 reused" in printed
    )  # 2 base + 2x2 + distill (GKD for llama-tt, GOLD for gpt2-s)
    out = tmp_path / "sw"
    report = json.loads((out / "sweep.json").read_text())
    assert set(report["provenance"]) >= {"versions", "git", "command"}
    by = {(e["source"], e["student"]): e for e in report["cells"]}
    assert sorted(by) == sorted(
        (s, st) for s in ("passage", "gpt-4.1", "distill") for st in ("llama-tt", "gpt2-s")
    )
    for st in ("llama-tt", "gpt2-s"):  # gpt2-s has its own tokenizer: distilled through GOLD's ULD loss
        assert by[("distill", st)]["n_updates"] == 2 and by[("distill", st)]["n_failed"] == 0, by[
            ("distill", st)
        ]
    # The gain is the per-passage score of the cell minus the base's, averaged over passages (recomputed here
    # from the cached answers); the base is the untouched student's own score.
    cells = {
        (c["protocol"], c["source"], c["student"]): c for c in map(_load, (out / "cells").glob("*.json"))
    }
    for (source, student), e in by.items():
        if "gain" not in e:
            continue
        cell, base = cells[("single", source, student)], cells[("base", "base", student)]
        per = [_passage(cell, cid) - _passage(base, cid) for cid in report["passages"]]
        g = e["gain"]["gold_logprob"]
        assert g["mean"] == pytest.approx(sum(per) / 2) and g["n"] == 2
        assert g["se"] == pytest.approx(abs(per[0] - per[1]) / 2)
        assert g["mean"] != 0.0  # every update changed the student's answers
    from orchestrator.sweep import Sweep

    sweep = Sweep(load_config(cfg_path), out)
    student = sweep.load_student(next(s for s in sweep.students() if s.name == "gpt2-s"))
    contexts = load_eval_data(PASSAGES, [], limit=2)[0]
    expect = sum(student.score(c).logprob for c in contexts) / 2
    assert report["base"]["gpt2-s"]["gold_logprob"] == pytest.approx(expect, abs=1e-5)
    assert (out / "sweep.md").read_text().count("\n| ") == 1 + 1 + 3  # header, base, 3 sources
    assert _png_size(out / "heatmap.png")[0] > 100
    assert len(list((out / "edits").glob("*.json"))) == 1  # the teacher's edits for distillation, cached

    # Second invocation: everything comes from the cache, nothing is rewritten.
    before = _cells(out)
    edits_before = {p: p.stat().st_mtime_ns for p in (out / "edits").glob("*.json")}
    assert main(args) == 0
    assert "0 cell(s) computed, 8 reused" in capsys.readouterr().out
    assert _cells(out) == before
    assert {p: p.stat().st_mtime_ns for p in (out / "edits").glob("*.json")} == edits_before

    # Changing one student recomputes only that student's cells.
    assert main([*args, "students.2.adapt.epochs=3"]) == 0
    assert "4 cell(s) computed, 4 reused" in capsys.readouterr().out

    # cross_tokenizer=skip: a student on another tokenizer gets n/a (with the reason) in the distillation row.
    assert main([*args, "students.2.adapt.epochs=3", "sweep.distill.cross_tokenizer=skip"]) == 0
    by = {(e["source"], e["student"]): e for e in json.loads((out / "sweep.json").read_text())["cells"]}
    assert (
        "tokenizer differs" in by[("distill", "gpt2-s")]["skipped"] and "gain" in by[("distill", "llama-tt")]
    )


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _passage(cell: dict, cid: str) -> float:
    per_q: dict[int, list[float]] = {}
    for r in cell["results"]:
        for a in r["answers"]:
            if a["context_id"] == cid:
                per_q.setdefault(a["question_index"], []).append(a["logprob"])
    return sum(sum(v) / len(v) for v in per_q.values()) / len(per_q)


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.mark.parametrize("method", ["lora", "full"])
def test_distillation_changes_the_student_and_restores_it(sweep_cfg, method):
    from core.models import load_causal_lm, load_tokenizer
    from orchestrator.sweep import Sweep
    from student.distill import DistillExample, distilled, shares_vocabulary
    from student.student import Student

    sweep = Sweep(sweep_cfg, Path("unused"))
    sc = next(s for s in sweep.students() if s.name == "llama-tt")
    sc.adapt.method, sc.adapt.epochs = method, 2
    student = sweep.load_student(sc)
    tpath = sweep.teacher_path()
    teacher = load_causal_lm(tpath, sweep_cfg.teacher.model, torch.device("cpu"))
    assert shares_vocabulary(student.tok, load_tokenizer(tpath, sweep_cfg.teacher.model))
    other = next(s for s in sweep.students() if s.name == "gpt2-s")
    assert not shares_vocabulary(sweep.load_student(other).tok, student.tok)
    before = {k: v.clone() for k, v in student.model.state_dict().items()}
    probe = student.tok("Q: Who wrote it? A:", return_tensors="pt")
    with torch.no_grad():
        logits = student.model(**probe).logits
    examples = [
        DistillExample("Passage: The Normans lived in Normandy.\nImplications:\n", "They were French.")
    ]
    with distilled(student, teacher, examples, DistillConfig(enabled=True), seed=3) as loss:
        assert loss > 0
        with torch.no_grad():
            assert not torch.allclose(student.model(**probe).logits, logits)
        assert any(p.requires_grad for p in student.model.parameters())
    after = student.model.state_dict()
    assert type(student.model).__name__ == "LlamaForCausalLM" and set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any(p.requires_grad for p in student.model.parameters())
    assert not student.model.get_input_embeddings()._forward_hooks
    with torch.no_grad():
        assert torch.equal(student.model(**probe).logits, logits)
    assert isinstance(student, Student)


def test_cross_tokenizer_distillation_through_gold_changes_the_student_and_restores_it(sweep_cfg):
    """A student with its own tokenizer (gpt2-s) distilled from the teacher by TRL's GOLDTrainer (ULD loss):
    the student moves inside, and is bit-exactly the base afterwards."""
    from core.models import load_causal_lm, load_tokenizer
    from orchestrator.sweep import Sweep
    from student.distill import DistillExample, distilled, shares_vocabulary

    sweep = Sweep(sweep_cfg, Path("unused"))
    sc = next(s for s in sweep.students() if s.name == "gpt2-s")
    sc.adapt.epochs = 2
    student = sweep.load_student(sc)
    tpath = sweep.teacher_path()
    assert not shares_vocabulary(student.tok, load_tokenizer(tpath, sweep_cfg.teacher.model))
    teacher = load_causal_lm(tpath, sweep_cfg.teacher.model, torch.device("cpu"))
    before = {k: v.clone() for k, v in student.model.state_dict().items()}
    probe = student.tok("Q: Who wrote it? A:", return_tensors="pt")
    with torch.no_grad():
        logits = student.model(**probe).logits
    examples = [
        DistillExample("Passage: The Normans lived in Normandy.\nImplications:\n", "They were French.")
    ] * 2
    with distilled(
        student, teacher, examples, DistillConfig(enabled=True), seed=3, teacher_tokenizer=tpath
    ) as loss:
        assert loss > 0
        with torch.no_grad():
            assert not torch.allclose(student.model(**probe).logits, logits)
    after = student.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(student.model(**probe).logits, logits)


def test_held_out_transfer_across_pools(sweep_cfg, tmp_path, capsys):
    from orchestrator.sweep import Sweep

    # A finished run whose teacher trained against pool A: its round_1 checkpoint is the tiny teacher itself
    # (the transfer bookkeeping is under test here, not ReST-EM).
    run = tmp_path / "teacher_A"
    (run / "teacher").mkdir(parents=True)
    os.symlink(Sweep(sweep_cfg, tmp_path).teacher_path(), run / "teacher" / "round_1")
    trained = copy.deepcopy(sweep_cfg)
    trained.students = [s for s in trained.students if s.name == "llama-s"]
    trained.algorithm.rounds = 1
    (run / "config.yaml").write_text(to_yaml(trained))
    (run / "metrics.jsonl").write_text('{"round": 0}\n{"round": 1}\n')
    cfg_path = _write(
        sweep_cfg,
        tmp_path / "s.yaml",
        sources={},
        students=["llama-s", "gpt2-s"],
        protocols=["cpt"],
        cpt_n=2,
        teacher_run=str(run),
        teacher_pool="A",
        pools={"A": ["llama-s"], "B": ["gpt2-s"]},
        distill=DistillConfig(enabled=False),
    )
    assert main(["sweep", str(cfg_path), f"run.output_dir={tmp_path}", "sweep.name=pools"]) == 0
    report = json.loads((tmp_path / "pools" / "sweep.json").read_text())
    roles = {t["pool"]: (t["role"], t["students"]) for t in report["transfer"]}
    assert roles == {"A": ("in-pool", 1), "B": ("held-out", 1)}
    by = {(e["source"], e["student"]): e["gain"]["gold_logprob"]["mean"] for e in report["cells"]}
    assert {t["pool"]: t["mean"] for t in report["transfer"]} == pytest.approx(
        {"A": by[("teacher_A/round_1", "llama-s")], "B": by[("teacher_A/round_1", "gpt2-s")]}
    )
    md = (tmp_path / "pools" / "sweep.md").read_text()
    assert "(in-pool)" in md and "(held-out)" in md
    # A pool that does not match the run's students is refused, naming both.
    wrong = load_config(cfg_path, ["sweep.pools.A=[gpt2-s]", "sweep.pools.B=[llama-s]"])
    with pytest.raises(ConfigError, match="trained against"):
        ensure_teacher_run(wrong)


def test_pool_gain_averages_students_per_passage():
    a = Gain(0.0, 0.0, 2, {"p1": 1.0, "p2": 3.0})
    b = Gain(0.0, 0.0, 2, {"p1": 0.0, "p2": 1.0})
    g = pool_gain([a, b])
    assert g.per_passage == {"p1": 0.5, "p2": 2.0}
    assert g.mean == pytest.approx(1.25) and g.se == pytest.approx(0.75) and g.n == 2


@pytest.mark.parametrize(
    "override, match",
    [
        ("sweep.sources.x=edits", "sweep.sources.x"),
        ("sweep.sources.x=file:foo.json", "sweep.sources.x"),
        ("sweep.sources.x=edits:missing.json", "does not exist"),
        ("sweep.sources.base=passage", "reserved"),
        ("sweep.students=[nobody]", "sweep.students"),
        ("sweep.protocols=[continual]", "sweep.protocols"),
        ("sweep.metric=bleu", "sweep.metric"),
        ("sweep.distill.cross_tokenizer=uld", "sweep.distill.cross_tokenizer"),
        ("sweep.teacher_pool=C", "sweep.teacher_pool"),
        ("sweep.pools.B=[nobody]", "sweep.pools.B"),
        ("sweep.distill.teacher=edits:x", "sweep.distill.teacher"),
    ],
)
def test_bad_sweep_config_names_the_field(sweep_cfg, override, match):
    # a typed choice (sweep.metric) is refused on load, the sweep section's own rules by check_sweep
    with pytest.raises(ConfigError, match=match):
        check_sweep(load_config(CONFIGS / "sweep_tiny.yaml", [*OVERRIDES, override]))


def test_cli_sweep_config_error_is_one_line(tmp_path, capsys):
    rc = main(["sweep", str(CONFIGS / "sweep_tiny.yaml"), "sweep.metric=bleu", f"run.output_dir={tmp_path}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("teachedit: error: sweep.metric") and err.count("\n") == 1
    assert not any(tmp_path.iterdir())  # nothing was created


@pytest.mark.slow
def test_sweep_trains_the_pool_a_teacher_first(sweep_cfg, tmp_path):
    """One command: the teacher run is missing, so the sweep trains it against pool A, then sweeps its rounds."""
    cfg_path = _write(
        sweep_cfg,
        tmp_path / "s.yaml",
        sources={},
        students=["llama-s", "gpt2-s"],
        protocols=["cpt"],
        cpt_n=2,
        teacher_run=str(tmp_path / "teacher_A"),
        teacher_pool="A",
        pools={"A": ["llama-s"], "B": ["gpt2-s"]},
        distill=DistillConfig(enabled=False),
    )
    overrides = [f"run.output_dir={tmp_path}", "sweep.name=one", "task.num_train_contexts=2"]
    assert main(["sweep", str(cfg_path), *overrides, "task.num_heldout_contexts=1"]) == 0
    trained = load_config(tmp_path / "teacher_A" / "config.yaml")
    assert [s.name for s in trained.students] == ["llama-s"]
    assert (tmp_path / "teacher_A" / "teacher" / "round_1" / "model.safetensors").is_file()
    report = json.loads((tmp_path / "one" / "sweep.json").read_text())
    assert {(t["pool"], t["role"]) for t in report["transfer"]} == {("A", "in-pool"), ("B", "held-out")}
