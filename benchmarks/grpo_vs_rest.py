"""ReST-EM vs GRPO on the embedded default, at the same budget of student evaluations per round.

    .venv/bin/python benchmarks/grpo_vs_rest.py [--seeds 0 1] [key=value ...]
    .venv/bin/python benchmarks/grpo_vs_rest.py --quick   # seed 0, one update, a few contexts (a test runs it)

GRPO runs `configs/default_grpo.yaml` (4 steps x 4 contexts x 4 edits per round); ReST-EM runs
`configs/default.yaml` on 16 training and 16 held-out contexts with 4 edits each and the same number of
rounds, so both spend 64 edits x 2 students on training contexts and 16 x 4 x 2 on held-out contexts per round.
`run.seed` varies per seed, the task seed stays 0, so both algorithms and both seeds see the same contexts.

Writes benchmarks/results/grpo_vs_rest.json (held-out reward per round, edit styles, wall time, provenance),
docs/grpo_vs_rest_em.png (with --plot) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from core.config import load_config
from orchestrator.provenance import provenance
from orchestrator.report import plot_comparison
from orchestrator.runner import Runner

ROOT = Path(__file__).resolve().parents[1]

ALGORITHMS = {
    "rest_em": (
        "default.yaml",
        ["task.num_train_contexts=16", "task.num_heldout_contexts=16", "algorithm.rounds=2"],
    ),
    "grpo": ("default_grpo.yaml", []),
}
QUICK = {
    "rest_em": ["task.num_train_contexts=4", "task.num_heldout_contexts=2", "algorithm.rounds=1"],
    "grpo": [
        "task.num_train_contexts=4",
        "task.num_heldout_contexts=2",
        "algorithm.rounds=1",
        "algorithm.grpo.steps_per_round=1",
    ],
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument(
        "--out", help="default: results/grpo_vs_rest.json (--quick: runs/benchmarks/grpo_vs_rest_quick.json)"
    )
    ap.add_argument("--plot", help="also write the held-out curves of every run to this PNG")
    ap.add_argument("--quick", action="store_true", help="seed 0, one update, 4 + 2 contexts: checks it runs")
    ap.add_argument("overrides", nargs="*", help="key=value for both algorithms")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds = [0]
    args.out = args.out or str(
        ROOT / "runs" / "benchmarks" / "grpo_vs_rest_quick.json"
        if args.quick
        else ROOT / "benchmarks" / "results" / "grpo_vs_rest.json"
    )
    logging.basicConfig(level=logging.WARNING)
    runs: list[dict] = []
    summaries, labels = [], []
    for seed in args.seeds:
        for algo, (config, overrides) in ALGORITHMS.items():
            cfg = load_config(
                ROOT / "configs" / config,
                [
                    f"run.seed={seed}",
                    f"run.name=grpo_vs_rest-{algo}-seed{seed}",
                    "run.overwrite=true",
                    "run.progress=false",
                    *overrides,
                    *(QUICK[algo] if args.quick else []),
                    *args.overrides,
                ],
            )
            t = time.time()
            summary = Runner.new(cfg).run()
            rounds = [
                {
                    k: r[k]
                    for k in ("round", "heldout_mean_reward", "heldout_sem", "edit_styles", "student_evals")
                }
                for r in summary["rounds"]
            ]
            runs.append({"algorithm": algo, "seed": seed, "wall_seconds": time.time() - t, "rounds": rounds})
            summaries.append(summary)
            labels.append(f"{'ReST-EM' if algo == 'rest_em' else 'GRPO'}, seed {seed}")
            print(
                f"{labels[-1]}: "
                + ", ".join(
                    f"r{r['round']} {r['heldout_mean_reward']:+.3f}±{r['heldout_sem']:.3f}" for r in rounds
                ),
                flush=True,
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"runs": runs, "provenance": provenance()}, indent=2) + "\n")
    if args.plot:
        plot_comparison(summaries, labels, Path(args.plot))
    n_rounds = max(len(r["rounds"]) for r in runs)
    print("\n| run | " + " | ".join(f"round {i}" for i in range(n_rounds)) + " | wall |")
    print("|---|" + "---|" * (n_rounds + 1))
    for label, run in zip(labels, runs):
        cells = [f"{r['heldout_mean_reward']:+.3f} ± {r['heldout_sem']:.3f}" for r in run["rounds"]]
        print(f"| {label} | " + " | ".join(cells) + f" | {run['wall_seconds'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
