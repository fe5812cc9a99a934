"""Write a teacher's edits for a set of passages, without scoring them: a SEAL-format edits file that
`teachedit eval --edits` can score beside another teacher's, so two teachers are compared on the very same
passages, questions and student updates (paired standard errors in `seal_table.py --pair`).

    python benchmarks/teacher_edits.py configs/real_cpu.yaml --data orchestrator/data/squad/passages.json \\
        --skip 40 --limit 60 --k 3 --out runs/teacher_edits/untrained.json [key=value ...]

The teacher is the config's (``teacher.model``; a run's checkpoint with ``teacher.model.path=...``). It writes
``--k`` edits per passage with the config's sampling settings and ``run.seed``, exactly as `teachedit eval
--sources teacher` would.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from core.config import load_config
from core.models import resolve_device
from orchestrator.protocols import EvalRequest, plan_eval
from orchestrator.protocols.evaluate import teacher_source
from orchestrator.provenance import provenance
from orchestrator.rundir import RunDir


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--data", required=True)
    ap.add_argument("--skip", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--k", type=int, default=1, help="edits per passage")
    ap.add_argument("--out", required=True, help="the SEAL-format edits file to write")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)  # key=value overrides may follow the options
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, [*args.overrides, f"teacher.generation.num_edits={args.k}"])
    req = EvalRequest(data=args.data, limit=args.limit, skip=args.skip, sources=["teacher"])
    # Only the teacher runs here: the config's students are neither loaded nor checked (so a config naming
    # Gemma-3-270M works where only SmolLM2 is installed, as in CI).
    cfg.students = []
    plan = plan_eval(cfg, req)  # the same checks as eval (e.g. a trained teacher on its own passages)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = RunDir(out.parent)
    teacher_source(cfg, plan.task, plan.contexts, resolve_device(cfg.run.device), folder)
    written = out.parent / "teacher_edits.json"
    records = json.loads(written.read_text())
    if written != out:
        written.replace(out)
    meta = {
        "teacher": cfg.teacher.model.path or cfg.teacher.model.gguf,
        "k": args.k,
        "provenance": provenance(),
    }
    out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{sum(len(r['completions']) for r in records)} edits for {len(records)} passages: {out}")


if __name__ == "__main__":
    main()
