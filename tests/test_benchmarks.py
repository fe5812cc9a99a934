"""Every benchmark script runs: its quick mode end to end, checking what it writes and prints (a README command
that breaks must fail here, not on a user's machine). ``inner_loop.py --quick`` is in tests/test_batched.py.
Speed itself is never asserted: the figures are the scripts' output, quoted in benchmarks/README.md."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

from .conftest import CACHE, CONFIGS, ROOT


def script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finite(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def test_seal_table_summarises_an_eval_directory(tmp_path, capsys):
    """A real (tiny) `teachedit eval` with base, passage and an edits file, then seal_table.py on it: paired
    gains equal the differences of the per-source means over the same passages."""
    from orchestrator.cli import main

    data = ROOT / "orchestrator" / "data" / "squad"
    rc = main([
        "eval", str(CONFIGS / "smoke.yaml"), f"run.output_dir={tmp_path}", f"run.cache_dir={CACHE}",
        "run.progress=false", "task.name=squad", f"task.path={data / 'edits_qwen2.5-7b_train.json'}",
        "students.0.adapt.epochs=1", "--students", "llama-t", "--data", str(data / "passages.json"),
        "--limit", "3", "--k", "1", "--sources", "base,passage,edits", "--name", "ev",
        "--edits", str(data / "edits_gpt4_1.json"),
    ])  # fmt: skip
    assert rc == 0
    out = tmp_path / "seal_table.json"
    script("seal_table").main([str(tmp_path / "ev"), "--out", str(out)])
    rows = {r["source"]: r for r in json.loads(out.read_text())["students"]["llama-t"]}
    assert set(rows) == {"base", "passage", "edits_gpt4_1"}
    assert all(r["passages"] == 3 for r in rows.values())
    assert rows["passage"]["updates"] == 3 and rows["base"]["updates"] == 0
    for m in ("em", "f1", "logprob"):
        gain = rows["edits_gpt4_1"][f"{m}_vs_base"]
        assert gain == pytest.approx(rows["edits_gpt4_1"][m] - rows["base"][m], abs=1e-9)
    assert rows["passage"]["logprob"] != rows["base"]["logprob"], "the update changed the student"
    assert "| edits_gpt4_1 |" in capsys.readouterr().out
    script("seal_table").main([str(tmp_path / "ev"), "--out", str(out), "--pair", "edits_gpt4_1", "passage"])
    pair = json.loads(out.read_text())["pairs"]["llama-t"]
    assert pair["passages"] == 3
    want = rows["edits_gpt4_1"]["logprob_vs_passage"]
    assert pair["logprob"] == pytest.approx(want, abs=1e-9)
    assert "edits_gpt4_1 − passage over 3 passages" in capsys.readouterr().out
    # eval_timing.py on the same directory: every update counted, none left to project
    timing = tmp_path / "timing.json"
    script("eval_timing").main([str(tmp_path / "ev"), "--out", str(timing)])
    t = json.loads(timing.read_text())
    records = [json.loads(x) for x in (tmp_path / "ev" / "updates.jsonl").read_text().splitlines()]
    s = t["students"]["llama-t"]
    assert s["updates_done"] == s["updates_planned"] == 3 * 2  # passage + one edit, 3 passages
    assert s["update_seconds_sum"] == pytest.approx(
        sum(r["seconds"] for r in records if r["source"] != "base")
    )
    assert t["complete"] and t["projected_remaining_seconds"] == 0.0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("eval_minutes: ")


@pytest.mark.slow
def test_demo_seeds_quick(tmp_path, capsys):
    out = tmp_path / "demo.json"
    script("demo_seeds").main(
        ["--quick", "--out", str(out), f"run.output_dir={tmp_path}", f"run.cache_dir={CACHE}"]
    )
    result = json.loads(out.read_text())
    rounds = result["0"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert all(finite(r["heldout_mean_reward"]) and finite(r["heldout_sem"]) for r in rounds)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("| 0 | ")


@pytest.mark.slow
def test_grpo_vs_rest_quick(tmp_path, capsys):
    """Both algorithms run at the quick budget and are tabulated; the plot is written."""
    out, png = tmp_path / "grpo.json", tmp_path / "grpo.png"
    script("grpo_vs_rest").main(
        [
            "--quick",
            "--out",
            str(out),
            "--plot",
            str(png),
            f"run.output_dir={tmp_path}",
            f"run.cache_dir={CACHE}",
        ]
    )
    runs = json.loads(out.read_text())["runs"]
    assert [(r["algorithm"], r["seed"]) for r in runs] == [("rest_em", 0), ("grpo", 0)]
    for r in runs:
        assert [x["round"] for x in r["rounds"]] == [0, 1]
        assert all(finite(x["heldout_mean_reward"]) and finite(x["heldout_sem"]) for x in r["rounds"])
    # same held-out contexts and untrained teacher at round 0: the two algorithms start equal
    assert runs[0]["rounds"][0]["heldout_mean_reward"] == pytest.approx(
        runs[1]["rounds"][0]["heldout_mean_reward"]
    )
    assert png.stat().st_size > 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("| GRPO, seed 0 | ")


@pytest.mark.slow
def test_ds_memory_quick(capsys):
    """Two real gloo ranks: a ZeRO-3 student's resident parameters at 2 ranks are about half those at 1, and
    with zero3_max_live_parameters a rank's peak (partitions + gathered layers) is too."""
    script("ds_memory").main(["--quick", "--cache-dir", str(CACHE), "--live-parameters", "1000000"])
    out = capsys.readouterr().out.splitlines()
    rows = [ln for ln in out if ln.startswith("| 1 |") or ln.startswith("| 2 |")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in rows]
    shares = {(int(c[0]), int(c[1])): float(c[4]) for c in cells}
    assert shares[(1, 0)] == pytest.approx(1.0, abs=0.01)
    assert 0.4 < shares[(2, 0)] < 0.6 and 0.4 < shares[(2, 1)] < 0.6
    peaks = {(int(c[0]), int(c[1])): max(float(c[6]), float(c[7])) for c in cells}
    assert all(peaks[k] >= float(c[3]) for k, c in zip(peaks, cells)), "a peak holds at least the partitions"
    name, value = out[-1].split(": ")
    assert name == "zero3_peak_share@2" and float(value) == pytest.approx(
        peaks[(2, 0)] / peaks[(1, 0)], abs=0.01
    )
    assert float(value) < 0.6, "only the partitions and one layer at a time are held"


@pytest.mark.slow
def test_real_loop_quick(tmp_path, capsys):
    """ReST-EM on the real SmolLM2 (teacher and student): one update, held-out reward for both rounds."""
    out = tmp_path / "real_loop.json"
    script("real_loop").main(["--quick", "--out", str(out), f"run.output_dir={tmp_path}"])
    run = json.loads(out.read_text())["runs"][0]
    assert [r["round"] for r in run["rounds"]] == [0, 1]
    assert all(finite(r["heldout_mean_reward"]) for r in run["rounds"])
    assert run["rounds"][0]["teacher_loss"] is not None, "the teacher was updated"
    assert Path(run["run_dir"], "teacher", "round_1", "model.safetensors").is_file()
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("| 0 | ")
    # --from-run: the same rounds, read back from the run directory (e.g. of a run stopped early)
    again = tmp_path / "again.json"
    script("real_loop").main(["--from-run", run["run_dir"], "--out", str(again)])
    assert json.loads(again.read_text())["runs"][0]["rounds"] == run["rounds"]


@pytest.mark.slow
def test_real_teacher_pair_quick(tmp_path):
    """`QUICK=1 bash benchmarks/real_teacher_pair.sh`: the loop, both teachers' edits, the eval and the paired
    table, end to end on the real SmolLM2, into a scratch folder."""
    import os
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "QUICK": "1",
        "RUNS": str(tmp_path / "runs"),
        "PY": sys.executable,
        "TE": str(bin_dir / "teachedit"),
        "OMP_NUM_THREADS": "1",
    }
    run = subprocess.run(
        ["bash", "benchmarks/real_teacher_pair.sh", "q"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "runs" / "benchmarks"
    loop = json.loads((out / "real_teacher_q_loop.json").read_text())
    assert [r["round"] for r in loop["runs"][0]["rounds"]] == [0, 1]
    table = json.loads((out / "real_teacher_q.json").read_text())
    pair = table["pairs"]["smollm2"]
    assert (pair["a"], pair["b"], pair["passages"]) == ("trained", "untrained", 2) and finite(pair["logprob"])
    rows = {r["source"] for r in table["students"]["smollm2"]}
    assert rows == {"base", "passage", "trained", "untrained"}


@pytest.mark.slow
def test_real_teacher_distill_quick(tmp_path):
    """`QUICK=1 bash benchmarks/real_teacher_distill.sh`: the teacher trained on Qwen2.5-7B's edits, both
    teachers' edits, the eval, the paired table and the edit statistics, on the real SmolLM2."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "QUICK": "1",
        "RUNS": str(tmp_path / "runs"),
        "PY": sys.executable,
        "TE": str(Path(sys.executable).parent / "teachedit"),
        "OMP_NUM_THREADS": "1",
    }
    run = subprocess.run(
        ["bash", "benchmarks/real_teacher_distill.sh", "q"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    meta = json.loads((tmp_path / "runs" / "q-edits" / "teacher.meta.json").read_text())
    assert meta["pairs"] == 2 and finite(meta["loss"])  # 2 train passages, their first Qwen edit each
    assert (tmp_path / "runs" / "q-edits" / "teacher" / "model.safetensors").is_file()
    out = tmp_path / "runs" / "benchmarks"
    pair = json.loads((out / "real_teacher_q.json").read_text())["pairs"]["smollm2"]
    assert (pair["a"], pair["b"], pair["passages"]) == ("distilled", "untrained", 2) and finite(
        pair["logprob"]
    )
    stats = json.loads((out / "edit_stats_q.json").read_text())
    assert len(stats["files"]) == 2


@pytest.mark.slow
def test_inner_loop_real_quick(tmp_path, capsys):
    """`inner_loop.py --real --quick` on SmolLM2 alone, E = 1 and 2: the speedup line comes last."""
    out = tmp_path / "inner_loop_real.json"
    script("inner_loop").main(
        ["--real", "--quick", "--real-students", "smollm2", "--edit-sizes", "1", "2", "--out", str(out)]
    )
    result = json.loads(out.read_text())
    row = result["students"]["smollm2"]["E"]["2"]
    assert row["teachedit_edits_per_s"] > 0 and row["seal_style_edits_per_s"] > 0
    assert result["teacher"]["edits_per_s"] > 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("real_speedup_cpu@")


def test_teacher_edits_writes_a_seal_file_eval_can_score(tmp_path):
    data = ROOT / "orchestrator" / "data" / "squad"
    common = [
        str(CONFIGS / "smoke.yaml"),
        "--data",
        str(data / "passages.json"),
        "--skip",
        "1",
        "--limit",
        "2",
    ]
    over = [f"run.cache_dir={CACHE}", "task.name=squad", f"task.path={data / 'edits_qwen2.5-7b_train.json'}"]
    a, b = tmp_path / "a" / "edits.json", tmp_path / "b" / "edits.json"
    for out in (a, b):
        script("teacher_edits").main([*common, "--k", "2", "--out", str(out), *over])
    records = json.loads(a.read_text())
    passages = json.loads((data / "passages.json").read_text())
    assert [r["context"] for r in records] == [p["context"] for p in passages[1:3]]
    assert all(len(r["completions"]) == 2 for r in records)
    assert a.read_text() == b.read_text(), "same seed, same edits"
    assert json.loads(a.with_suffix(".meta.json").read_text())["k"] == 2
    from orchestrator.protocols.data import load_eval_data

    contexts, [source] = load_eval_data(data / "passages.json", [a])
    assert len(contexts) == 2 and source.name == "edits"


def test_reward_reliability_figures():
    """reward_reliability.py's statistics on hand-made gains: two seeds that agree exactly give no noise, a
    test-retest correlation of 1 and the same best edit; a seed that reverses the order within each passage
    gives a within-passage correlation of -1 and never the same best edit."""
    rr = script("reward_reliability")
    g0 = {(p, j): {"logprob": base + j, "f1": 0.0} for p, base in (("a", 0.0), ("b", 5.0)) for j in range(3)}
    same = rr.reliability(g0, g0, "logprob")
    assert (same["edits"], same["passages"], same["noise_sd"]) == (6, 2, 0.0)
    assert same["retest_r"] == pytest.approx(1.0) and same["within_passage_retest_r"] == pytest.approx(1.0)
    assert same["best_agree"] == 1.0 and same["edit_sd"] == pytest.approx(1.0)
    rev = {(p, j): {"logprob": g0[(p, 2 - j)]["logprob"], "f1": 0.0} for p, j in g0}
    flipped = rr.reliability(g0, rev, "logprob")
    assert flipped["within_passage_retest_r"] == pytest.approx(-1.0) and flipped["best_agree"] == 0.0
    assert flipped["noise_sd"] == pytest.approx(math.sqrt(16 / 12))  # (±2)² on 4 of 6 edits, over 2 x 6


def test_edit_stats_on_hand_made_edits(tmp_path, capsys):
    """edit_stats.py on a passage with three edits: one copies it (its 4-grams all in the passage), one repeats
    itself and carries a 4-gram of a foreign passage, one is empty."""
    es = script("edit_stats")
    passage = "the cat sat on the mat near the door"
    foreign = "a dog ran to the red barn at noon"
    edits = [
        "the cat sat on the mat",  # 3 of 3 4-grams copied; no novel word
        "dog ran to the dog ran to the",  # 3-grams: 6, distinct 4; foreign 4-gram "dog ran to the": 2 of 5
        "   ",
    ]
    entry = {"title": "Cats", "context": passage, "completions": json.dumps(edits)}
    data = tmp_path / "edits.json"
    data.write_text(json.dumps([entry]))
    other = tmp_path / "foreign.json"
    other.write_text(json.dumps([{"title": "Dogs", "context": foreign, "completions": "[]"}]))
    out = tmp_path / "stats.json"
    es.main([str(data), "--foreign", str(other), "--out", str(out)])
    s = json.loads(out.read_text())["files"][str(data)]
    assert (s["passages"], s["edits"]) == (1, 3) and s["empty"] == pytest.approx(1 / 3)
    assert s["words"]["mean"] == pytest.approx((6 + 8) / 2)
    assert s["copied"]["mean"] == pytest.approx((1 + 0) / 2)
    assert s["distinct_3grams"]["mean"] == pytest.approx((1 + 4 / 6) / 2)
    assert s["novel_words"]["mean"] == pytest.approx((0 + 6 / 8) / 2)  # dog, ran, to x2, dog, ran: 6 of 8
    assert s["foreign"]["mean"] == pytest.approx((0 + 2 / 5) / 2)
    assert "edits.json" in capsys.readouterr().out


@pytest.mark.slow
def test_reward_reliability_quick(tmp_path, capsys):
    """`python benchmarks/reward_reliability.py --quick`: the teacher's edits, two evals under two seeds, the
    figures, on the real SmolLM2, into a scratch folder."""
    out = tmp_path / "rr.json"
    script("reward_reliability").main(["--quick", "--runs", str(tmp_path / "runs"), "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["k"] == 2 and len(result["per_edit"]) == 4
    for m in ("logprob", "f1"):
        assert result["metrics"][m]["edits"] == 4 and finite(result["metrics"][m]["noise_sd"])
    assert "best_agree" in capsys.readouterr().out


def test_edit_stats_kept_compares_kept_edits_with_the_rest_of_their_passage(tmp_path, capsys):
    """edit_stats.py --kept on a hand-made run: of one passage's three edits the copying one has the best reward,
    so above_mean keeps it alone; kept - rest is its statistics minus the other two's mean, and the
    within-passage correlation of copying with reward is positive."""
    from core.config import load_config, to_yaml
    from core.records import Edit, EditResult, StudentOutcome, StudentScore
    from orchestrator.tasks import build_task

    es = script("edit_stats")
    cfg = load_config(CONFIGS / "real_cpu.yaml", ["algorithm.keep=above_mean"])
    ctx = build_task(cfg.task).train_contexts()[0]
    first = " ".join(ctx.text.split()[:12])
    texts = [first, "zebra quokka narwhal okapi axolotl", "zebra quokka narwhal tapir dugong ibis"]
    run = tmp_path / "run"
    (run / "edits").mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    score = StudentScore(0.0, 0.0, -3.0, 1)
    lines = []
    for k, (text, reward) in enumerate(zip(texts, [0.9, -0.1, -0.2])):
        out = StudentOutcome(score, score, reward)
        edit = Edit(ctx.id, "implications", k, text, "round_0")
        lines.append(json.dumps(EditResult(edit, {"s": out}, reward).to_dict()))
    held = EditResult(Edit(ctx.id, "implications", 3, first, "round_0"), {"s": out}, 5.0, heldout=True)
    lines.append(json.dumps(held.to_dict()))  # held-out edits are never kept nor compared
    (run / "edits" / "round_0.jsonl").write_text("\n".join(lines) + "\n")
    out_file = tmp_path / "kept.json"
    es.main(["--kept", str(run), "--out", str(out_file)])
    result = json.loads(out_file.read_text())
    assert (result["edits"], result["kept"], result["keep"]) == (3, 1, "above_mean")
    words = result["words"]
    assert words["kept_minus_rest"] == pytest.approx(12 - (5 + 6) / 2) and words["passages"] == 1
    assert result["copied"]["kept_minus_rest"] == pytest.approx(1.0)  # all its 4-grams are the passage's
    assert result["novel_words"]["kept_minus_rest"] == pytest.approx(-1.0)
    assert result["copied"]["within_passage_r"] > 0.9
    assert "kept - rest" in capsys.readouterr().out


def test_teacher_distill_from_run_picks_the_kept_or_the_worst_usable_edit_of_each_passage(tmp_path):
    """teacher_distill.py --from-run (the anti-selection control): --pick kept gives exactly the pairs the
    loop trains on (SEAL's keep rule: each passage's best edit, in the loop's order, with its recorded prompt);
    --pick worst gives each of those passages' lowest-reward *usable* edit (a penalised edit is never
    picked); held-out edits are never used."""
    from core.config import load_config, to_yaml
    from core.records import Edit, EditResult, StudentOutcome, StudentScore

    td = script("teacher_distill")
    run = tmp_path / "run"
    (run / "edits").mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(load_config(CONFIGS / "real_cpu.yaml", ["algorithm.keep=seal"])))
    score = StudentScore(0.0, 0.0, -3.0, 1)
    rewards = {"a": [0.2, 0.5, -0.1, -0.9], "b": [-0.3, 0.4, 0.1, 0.0]}
    lines = []
    for cid, rs in rewards.items():
        for k, reward in enumerate(rs):
            penalty = "degenerate" if (cid, k) == ("a", 3) else None  # a's lowest reward, unusable
            edit = Edit(cid, "implications", k, f"{cid}{k}", "round_0", prompt=f"P {cid}")
            result = EditResult(edit, {"s": StudentOutcome(score, score, reward)}, reward, penalty=penalty)
            lines.append(json.dumps(result.to_dict()))
    held = Edit("c", "implications", 0, "c0", "round_0", prompt="P c")
    lines.append(
        json.dumps(EditResult(held, {"s": StudentOutcome(score, score, 9.0)}, 9.0, heldout=True).to_dict())
    )
    (run / "edits" / "round_0.jsonl").write_text("\n".join(lines) + "\n")
    assert td.run_pairs(run, 0, "kept") == (["a", "b"], [("P a", "a1"), ("P b", "b1")], [0.5, 0.4])
    assert td.run_pairs(run, 0, "worst") == (["a", "b"], [("P a", "a2"), ("P b", "b0")], [-0.1, -0.3])
    with pytest.raises(SystemExit, match="round_1.jsonl"):
        td.run_pairs(run, 1, "kept")
