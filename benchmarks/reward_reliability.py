"""How reliable is one update's reward? The same edits, each scored after two independent student updates.

ReST-EM (SEAL's keep rule) keeps, per passage, the edit of k whose update gained the most. If an update's gain
depends on its random seed (LoRA initialisation, batch order) as much as on the edit, the keep rule picks
noise and the teacher has nothing to learn. This measures it on a real student: the config's teacher writes
``--k`` edits for each of ``--limit`` passages that no other figure uses (dev passages 101-116 by default),
and every edit is scored twice, by `teachedit eval` under two run seeds (so two different update seeds per
edit; the base student is the same).

    python benchmarks/reward_reliability.py                 # ~25 min on one core; writes results/reward_reliability.json
    python benchmarks/reward_reliability.py --quick         # 2 passages x 2 edits, short edits (a test runs it)

Reported per metric (gold log-prob gain over base, F1 gain): the update-to-update standard deviation of one
edit's gain (``noise_sd``), the standard deviation between the k edits of a passage (``edit_sd``, averaged over
passages, each edit's gain the mean of its two updates), their test-retest correlation across all edits and
within passages (gains minus their passage's mean: the comparison the keep rule makes), and how often the two
seeds pick the same best edit of a passage (``best_agree``; chance is 1/k), and how much better than its
passage's average the edit picked on the first seed's updates is on the second seed's (``kept_advantage``:
what the keep rule really selects, free of the selection's own noise).

    python benchmarks/reward_reliability.py --reuse         # recompute from the eval directories already there
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import teacher_edits  # noqa: E402  (a sibling script)

from core.stats import mean_sem  # noqa: E402
from orchestrator.provenance import provenance  # noqa: E402

DATA = "orchestrator/data/squad/passages.json"
METRICS = {"logprob": "logprob", "f1": "f1"}


def gains(eval_dir: Path, student: str) -> dict[tuple[str, int], dict[str, float]]:
    """``[(passage, step)][metric]``: each edit update's mean gain over the base student on its passage's
    questions (question by question, then averaged)."""
    records = [json.loads(x) for x in (eval_dir / "updates.jsonl").read_text().splitlines() if x]
    mine = [r for r in records if r["student"] == student and r.get("counted", True)]
    base = {
        (a["context_id"], a["question_index"]): a for r in mine if r["source"] == "base" for a in r["answers"]
    }
    out = {}
    for r in mine:
        if r["source"] == "base" or r.get("error"):
            continue
        diffs = {
            m: [a[m] - base[(a["context_id"], a["question_index"])][m] for a in r["answers"]] for m in METRICS
        }
        if r["answers"]:
            out[(r["context_ids"][0], r["step"])] = {m: sum(v) / len(v) for m, v in diffs.items()}
    return out


def pearson(x: list[float], y: list[float]) -> float:
    n = len(x)
    if n < 3:
        return float("nan")
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def reliability(g0: dict, g1: dict, metric: str) -> dict[str, float | int]:
    """The figures above for one metric, over the edits both runs scored."""
    keys = sorted(set(g0) & set(g1))
    by_passage: dict[str, list[tuple[str, int]]] = {}
    for k in keys:
        by_passage.setdefault(k[0], []).append(k)
    a, b = [g0[k][metric] for k in keys], [g1[k][metric] for k in keys]
    noise_sd = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)) / (2 * len(keys))) if keys else float("nan")
    ca, cb, edit_sds, agree, passages, advantage = [], [], [], 0, 0, []
    for ks in by_passage.values():
        if len(ks) < 2:
            continue
        passages += 1
        xa, xb = [g0[k][metric] for k in ks], [g1[k][metric] for k in ks]
        ma, mb = sum(xa) / len(xa), sum(xb) / len(xb)
        ca += [x - ma for x in xa]
        cb += [x - mb for x in xb]
        both = [(x + y) / 2 for x, y in zip(xa, xb)]
        mean = sum(both) / len(both)
        edit_sds.append(math.sqrt(sum((v - mean) ** 2 for v in both) / (len(both) - 1)))
        best_a = max(range(len(ks)), key=xa.__getitem__)
        agree += best_a == max(range(len(ks)), key=xb.__getitem__)
        advantage.append(xb[best_a] - mb)  # the kept edit's edge, measured on the other seed's updates
    agree_mean, agree_se = mean_sem([1.0] * agree + [0.0] * (passages - agree))
    adv_mean, adv_se = mean_sem(advantage)
    return {
        "edits": len(keys),
        "passages": passages,
        "noise_sd": noise_sd,
        "edit_sd": sum(edit_sds) / len(edit_sds) if edit_sds else float("nan"),
        "retest_r": pearson(a, b),
        "within_passage_retest_r": pearson(ca, cb),
        "best_agree": agree_mean,
        "best_agree_se": agree_se,
        "kept_advantage": adv_mean,
        "kept_advantage_se": adv_se,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/real_cpu.yaml")
    ap.add_argument("--student", default="smollm2")
    ap.add_argument("--skip", type=int, default=100)
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs=2, default=[0, 1], help="the two eval run seeds")
    ap.add_argument("--runs", default="runs", help="where the eval directories go")
    ap.add_argument(
        "--out", default=None, help="results JSON (default benchmarks/results/reward_reliability.json)"
    )
    ap.add_argument("--quick", action="store_true", help="2 passages x 2 edits of <= 24 tokens")
    ap.add_argument("--reuse", action="store_true", help="only recompute, from the eval directories there")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = ["run.progress=false", f"run.output_dir={args.runs}", *args.overrides]
    tag = "reliability"
    if args.quick:
        args.limit, args.k, tag = 2, 2, "reliability-quick"
        overrides.append("teacher.generation.max_new_tokens=24")
    default = Path(args.runs) / "benchmarks" if args.quick else ROOT / "benchmarks" / "results"
    out = Path(args.out) if args.out else default / "reward_reliability.json"
    edits = Path(args.runs) / f"{tag}-edits" / "teacher.json"
    cmd = [args.config, "--data", DATA, "--skip", str(args.skip), "--limit", str(args.limit)]
    if not args.reuse:
        teacher_edits.main([*cmd, "--k", str(args.k), "--out", str(edits), *overrides])
    te = Path(sys.executable).with_name("teachedit")
    dirs = []
    for seed in args.seeds:
        name = f"{tag}-seed{seed}"
        dirs.append(Path(args.runs) / name)
        if args.reuse:
            continue
        subprocess.run(
            [str(te), "eval", args.config, *overrides, f"run.seed={seed}", "--students", args.student]
            + ["--data", DATA, "--limit", str(args.limit), "--k", str(args.k), "--sources", "base,edits"]
            + ["--name", name, "--edits", str(edits)],
            check=True,
            env=os.environ,
        )
    g0, g1 = gains(dirs[0], args.student), gains(dirs[1], args.student)
    result = {
        "config": args.config,
        "student": args.student,
        "passages": f"{DATA} [{args.skip}:{args.skip + args.limit}]",
        "k": args.k,
        "seeds": args.seeds,
        "overrides": overrides,
        "eval_dirs": [str(d) for d in dirs],
        "metrics": {m: reliability(g0, g1, m) for m in METRICS},
        "per_edit": [
            {
                "passage": k[0],
                "step": k[1],
                **{f"{m}_{s}": g[k][m] for s, g in zip("ab", (g0, g1)) for m in METRICS},
            }
            for k in sorted(set(g0) & set(g1))
        ],
        "provenance": provenance(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for m, r in result["metrics"].items():
        print(
            f"{m}: noise_sd {r['noise_sd']:.3f}  edit_sd {r['edit_sd']:.3f}  retest_r {r['retest_r']:.2f}  "
            f"within-passage r {r['within_passage_retest_r']:.2f}  best_agree {r['best_agree']:.2f} "
            f"± {r['best_agree_se']:.2f} (chance {1 / args.k:.2f}; {r['passages']} passages)  kept edit's "
            f"advantage {r['kept_advantage']:+.3f} ± {r['kept_advantage_se']:.3f}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
