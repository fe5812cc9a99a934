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

    python benchmarks/teacher_distill.py RUN_DIR/config.yaml --from-run RUN_DIR [--round 0] --pick worst \
        --out runs/worst/teacher [key=value ...]

``--from-run``: the anti-selection control. Train on one round's own training edits of a ReST-EM run instead:
``--pick kept`` takes the edits the run's keep rule kept (the loop's own update, reproduced: same pairs, order
and seed, so the same checkpoint as the run's ``teacher/round_{R+1}``), ``--pick worst`` the lowest-reward
usable edit of each passage it kept from (one pair per passage). If the teacher updated on its worst samples writes
edits as good as the one updated on its best, the selection carries nothing the update can transfer. The
config must give the teacher the run had at that round (for round 0: the run's own config.yaml).
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
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--edits", help="a SEAL-format edits file (passages and their completions)")
    src.add_argument("--from-run", metavar="RUN_DIR", help="one round's training edits of a run (see above)")
    ap.add_argument("--round", type=int, default=0, help="with --from-run: the round whose edits to train on")
    ap.add_argument(
        "--pick",
        choices=("kept", "worst"),
        default="kept",
        help="with --from-run: which edit of each passage",
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
    if args.from_run:
        ids, pairs, rewards = run_pairs(Path(args.from_run), args.round, args.pick)
        seed = cfg.run.seed + args.round  # as the loop seeds round R's update
    teacher, path = build_teacher(cfg, task, resolve_device(cfg.run.device))
    if not args.from_run:
        contexts, (source,) = load_eval_data(args.edits, [args.edits], args.limit)
        ids, rewards, seed = [c.id for c in contexts], [], cfg.run.seed
        pairs = [(teacher.prompt(c), t) for c in contexts for t in source.texts(c, args.k) if t.strip()]
    if not pairs:
        raise SystemExit(f"{args.edits or args.from_run}: no non-empty edit to train on")
    loss = teacher.train(pairs, seed=seed, progress=cfg.run.progress)
    out = Path(args.out)
    teacher.save(out)
    meta = {
        "teacher": path,
        "edits": args.edits,
        "from_run": args.from_run and {"run": args.from_run, "round": args.round, "pick": args.pick},
        "rewards": rewards,
        "passages": ids,
        "pairs": len(pairs),
        "k": args.k,
        "train": {
            k: getattr(cfg.teacher.train, k) for k in ("learning_rate", "epochs", "lora_r", "batch_size")
        },
        "loss": loss,
        "provenance": provenance(),
    }
    out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"teacher trained on {len(pairs)} edits of {len(set(ids))} passages (loss {loss:.3f}): {out}")


def run_pairs(
    run_dir: Path, round_index: int, pick: str
) -> tuple[list[str], list[tuple[str, str]], list[float]]:
    """(passage ids, (prompt, edit) pairs, their rewards) of ``--from-run``: the keep rule's edits of a round,
    in the order the loop trains on them, or for each of their passages its lowest-reward usable edit."""
    from core.records import EditResult
    from orchestrator.algorithms.rest_em import _usable, select_edits
    from orchestrator.rundir import RunDir

    cfg = load_config(str(run_dir / "config.yaml"))
    path = run_dir / "edits" / f"round_{round_index}.jsonl"
    if not path.is_file():
        raise SystemExit(f"--from-run {run_dir}: no {path.name} (did round {round_index} finish scoring?)")
    train = [r for r in RunDir(run_dir, writer=False).edits(round_index) if not r.heldout]
    kept = select_edits(train, cfg.algorithm.keep, cfg.algorithm.threshold)
    if pick == "worst":
        worst: dict[str, EditResult] = {}
        for r in train:
            cur = worst.get(r.edit.context_id)
            if _usable(r) and (cur is None or r.reward < cur.reward):
                worst[r.edit.context_id] = r
        kept = [worst[cid] for cid in dict.fromkeys(r.edit.context_id for r in kept)]
    return (
        [r.edit.context_id for r in kept],
        [(r.edit.prompt, r.edit.text) for r in kept],
        [r.reward for r in kept],
    )


if __name__ == "__main__":
    main()
