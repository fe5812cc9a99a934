"""Does ReST-EM teach a real teacher on real students? Runs configs/real_cpu.yaml (SmolLM2-135M-Instruct teacher;
SmolLM2-135M-Instruct and Gemma-3-270M students; SQuAD train passages) for one or more seeds and records the
held-out reward per round (mean over held-out edits ± standard error over held-out passages).

    make real-models
    .venv/bin/python benchmarks/real_loop.py [--seeds 0 1] [--students smollm2] [--tag NAME] [key=value ...]
    .venv/bin/python benchmarks/real_loop.py --quick   # SmolLM2 student, 1 update, 2 + 2 passages, short
                                                       # edits (a few minutes; checks it runs; a test runs it)

Writes benchmarks/results/real_loop.json (``--out`` to change) as
``{"config", "overrides", "runs": [{"seed", "wall_seconds", "run_dir", "rounds": [{"round",
"heldout_mean_reward", "heldout_sem", ...}]}]}`` and prints a markdown table. Results are written after every
seed, so an interrupted benchmark keeps the seeds it finished. Each seed changes the run seed (teacher
sampling, LoRA initialisation); the passages (task.seed) stay the same so seeds are comparable. Every round
also records the held-out EM / F1 / gold log-prob per student (``per_student``) and the loss of the teacher
update.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from core.config import load_config
from orchestrator.provenance import provenance
from orchestrator.runner import Runner

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("round", "mean_reward", "heldout_mean_reward", "heldout_sem", "kept", "teacher_loss", "per_student")


QUICK = [
    "algorithm.rounds=1",
    "task.num_train_contexts=2",
    "task.num_heldout_contexts=2",
    "task.max_questions=2",
    "teacher.generation.num_edits=2",
    "teacher.generation.max_new_tokens=32",
    "teacher.train.epochs=1",
    "students.0.adapt.epochs=1",
    "students.0.adapt.max_sequences=2",
    "students.0.adapt.max_length=128",
]


def summarize_run(run_dir: Path, out_path: str | None) -> None:
    """The results file of ``run_dir`` as :func:`main` writes it, from the rounds its metrics.jsonl holds."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise SystemExit(f"--from-run {run_dir}: no metrics.jsonl (no round finished there)")
    rounds = [{k: r.get(k) for k in KEYS} for r in map(json.loads, metrics.read_text().splitlines()) if r]
    cfg = load_config(str(run_dir / "config.yaml"))
    out = {
        "config": str(run_dir / "config.yaml"),
        "overrides": [],
        "students": [s.name for s in cfg.students],
        "runs": [{"seed": cfg.run.seed, "wall_seconds": None, "run_dir": str(run_dir), "rounds": rounds}],
    }
    path = Path(out_path or ROOT / "benchmarks" / "results" / "real_loop.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**out, "provenance": provenance()}, indent=2) + "\n")
    print(f"{len(rounds)} round(s) of {run_dir}: {path}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "real_cpu.yaml"))
    ap.add_argument(
        "--out", help="default: results/real_loop.json (--quick: runs/benchmarks/real_loop_quick.json)"
    )
    ap.add_argument("--quick", action="store_true", help="SmolLM2 student only, 1 update, tiny settings")
    ap.add_argument("--tag", default="real", help="run directory names: runs/<tag>-seed<k>")
    ap.add_argument("--students", nargs="+", help="keep only these students of the config (default: all)")
    ap.add_argument(
        "--from-run",
        metavar="RUN_DIR",
        help="write the results of an existing run directory (its metrics.jsonl: the rounds it finished, e.g. "
        "of a run stopped after its last teacher update) instead of running",
    )
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    if args.from_run:
        return summarize_run(Path(args.from_run), args.out)
    if args.quick:
        args.students = args.students or ["smollm2"]
        args.overrides = [*QUICK, *args.overrides]
    args.out = args.out or str(
        ROOT / "runs" / "benchmarks" / "real_loop_quick.json"
        if args.quick
        else ROOT / "benchmarks" / "results" / "real_loop.json"
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = {
        "config": str(Path(args.config).resolve().relative_to(ROOT)),
        "overrides": args.overrides,
        "students": args.students or "all",
        "runs": [],
    }
    for seed in args.seeds:
        cfg = load_config(
            args.config,
            [
                f"run.seed={seed}",
                f"run.name={args.tag}-seed{seed}",
                "run.overwrite=true",
                "run.progress=false",
                *args.overrides,
            ],
        )
        if args.students:
            missing = set(args.students) - {s.name for s in cfg.students}
            if missing:
                raise SystemExit(f"--students: no student named {sorted(missing)} in {args.config}")
            cfg.students = [s for s in cfg.students if s.name in args.students]
        t = time.time()
        runner = Runner.new(cfg)
        summary = runner.run()
        rounds = [{k: r.get(k) for k in KEYS} for r in summary["rounds"]]
        out["runs"].append(
            {
                "seed": seed,
                "wall_seconds": time.time() - t,
                "run_dir": str(runner.rundir.path),
                "rounds": rounds,
            }
        )
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**out, "provenance": provenance()}, indent=2) + "\n")
        cells = ", ".join(
            f"r{r['round']} {r['heldout_mean_reward']:+.3f}±{r['heldout_sem']:.3f}" for r in rounds
        )
        print(f"seed {seed}: {cells} ({time.time() - t:.0f} s)", flush=True)
    n = max(len(r["rounds"]) for r in out["runs"])
    print("\n| seed | " + " | ".join(f"round {i} held-out" for i in range(n)) + " | last − first |")
    print("|---|" + "---|" * (n + 1))
    for run in out["runs"]:
        rs = run["rounds"]
        cells = [f"{r['heldout_mean_reward']:+.3f} ± {r['heldout_sem']:.3f}" for r in rs]
        last_first = rs[-1]["heldout_mean_reward"] - rs[0]["heldout_mean_reward"]
        print(f"| {run['seed']} | " + " | ".join(cells) + f" | {last_first:+.3f} |")


if __name__ == "__main__":
    main()
