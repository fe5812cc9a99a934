"""Does the embedded default visibly learn? Runs configs/default.yaml for several seeds and tabulates the
held-out reward per round (mean ± standard error over held-out contexts), per seed.

    .venv/bin/python benchmarks/demo_seeds.py [--seeds 0 1 2] [key=value ...]
    .venv/bin/python benchmarks/demo_seeds.py --quick   # seed 0, 1 update, 4 + 2 contexts (~1 min; a test runs it)

Writes benchmarks/results/demo_seeds.json and prints a markdown table. Each seed changes both the run seed
(sampling, LoRA init) and the task seed (which people are the training and held-out contexts).
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


QUICK = ["algorithm.rounds=1", "task.num_train_contexts=4", "task.num_heldout_contexts=2"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument(
        "--out", help="default: results/demo_seeds.json (--quick: runs/benchmarks/demo_seeds_quick.json)"
    )
    ap.add_argument("--quick", action="store_true", help="seed 0, one update, 4 + 2 contexts: checks it runs")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds = [0]
        args.overrides = [*QUICK, *args.overrides]
    args.out = args.out or str(
        ROOT / "runs" / "benchmarks" / "demo_seeds_quick.json"
        if args.quick
        else ROOT / "benchmarks" / "results" / "demo_seeds.json"
    )
    logging.basicConfig(level=logging.WARNING)
    results = {}
    for seed in args.seeds:
        cfg = load_config(
            args.config,
            [
                f"run.seed={seed}",
                f"task.seed={seed}",
                f"run.name=demo-seed{seed}",
                "run.overwrite=true",
                "run.progress=false",
                *args.overrides,
            ],
        )
        t = time.time()
        summary = Runner.new(cfg).run()
        results[seed] = {
            "wall_seconds": time.time() - t,
            "rounds": [
                {
                    k: r[k]
                    for k in (
                        "round",
                        "mean_reward",
                        "heldout_mean_reward",
                        "heldout_sem",
                        "edit_styles",
                        "per_student",
                    )
                }
                for r in summary["rounds"]
            ],
        }
        print(
            f"seed {seed}: "
            + ", ".join(
                f"r{r['round']} {r['heldout_mean_reward']:+.3f}±{r['heldout_sem']:.3f}"
                for r in summary["rounds"]
            ),
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({**results, "provenance": provenance()}, indent=2) + "\n")
    n_rounds = max(len(v["rounds"]) for v in results.values())
    print("\n| seed | " + " | ".join(f"round {i} held-out" for i in range(n_rounds)) + " | last − first |")
    print("|---|" + "---|" * (n_rounds + 1))
    for seed, v in results.items():
        rs = v["rounds"]
        cells = [f"{r['heldout_mean_reward']:+.3f} ± {r['heldout_sem']:.3f}" for r in rs]
        print(
            f"| {seed} | "
            + " | ".join(cells)
            + f" | {rs[-1]['heldout_mean_reward'] - rs[0]['heldout_mean_reward']:+.3f} |"
        )


if __name__ == "__main__":
    main()
