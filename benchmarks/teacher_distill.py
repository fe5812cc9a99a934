"""Can the teacher's update carry edit quality to new passages at all? Train the config's teacher, with the very
update ReST-EM gives it (``Teacher.train``: TRL's SFTTrainer, the config's ``teacher.train`` settings), on
another writer's edits instead of its own best samples, and save the result as a checkpoint folder that
`benchmarks/teacher_edits.py` and `teachedit eval` load with ``teacher.model.path=...``.

    python benchmarks/teacher_distill.py configs/real_cpu.yaml \\
        --edits orchestrator/data/squad/edits_qwen2.5-7b_train.json --k 2 --out runs/distill/qwen [key=value ...]

The diagnostic for the real-models issue: the bundled Qwen2.5-7B edits teach the SmolLM2 student more than the
passage while the SmolLM2 teacher's own edits teach less (README, SEAL table). If SFT on ~60 of Qwen's edits
makes the 135M teacher write better edits for unseen passages, its update can carry quality and what ReST-EM
lacks is a signal worth imitating in the teacher's own samples; if not, the update (or the 135M teacher)
cannot. The passages are those of ``--edits`` (SQuAD train split for the bundled file), so the dev passages
that are compared afterwards stay unseen. Writes ``<out>/`` (safetensors, tokenizer) and ``<out>.meta.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from core.config import load_config
from core.models import resolve_device
from orchestrator.models import build_teacher
from orchestrator.preflight import check_task
from orchestrator.protocols.data import load_eval_data
from orchestrator.provenance import provenance


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument(
        "--edits", required=True, help="a SEAL-format edits file (passages and their completions)"
    )
    ap.add_argument("--k", type=int, default=1, help="edits per passage trained on (the first k)")
    ap.add_argument("--limit", type=int, default=0, help="passages (default: all the file holds)")
    ap.add_argument("--out", required=True, help="the checkpoint folder to write")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)  # key=value overrides may follow the options
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    cfg.students = []  # only the teacher is loaded
    task = check_task(cfg)
    contexts, (source,) = load_eval_data(args.edits, [args.edits], args.limit)
    teacher, path = build_teacher(cfg, task, resolve_device(cfg.run.device))
    pairs = [(teacher.prompt(c), text) for c in contexts for text in source.texts(c, args.k) if text.strip()]
    if not pairs:
        raise SystemExit(f"{args.edits}: no non-empty edit to train on")
    loss = teacher.train(pairs, seed=cfg.run.seed, progress=cfg.run.progress)
    out = Path(args.out)
    teacher.save(out)
    meta = {
        "teacher": path,
        "edits": args.edits,
        "passages": [c.id for c in contexts],
        "pairs": len(pairs),
        "k": args.k,
        "train": {
            k: getattr(cfg.teacher.train, k) for k in ("learning_rate", "epochs", "lora_r", "batch_size")
        },
        "loss": loss,
        "provenance": provenance(),
    }
    out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"teacher trained on {len(pairs)} edits of {len(contexts)} passages (loss {loss:.3f}): {out}")


if __name__ == "__main__":
    main()
