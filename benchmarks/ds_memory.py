"""Per-rank resident parameter bytes of a ZeRO-3 student at 1 and 2 ranks (a ~30M-parameter tiny Llama).

    python benchmarks/ds_memory.py                 # launches itself with torchrun at 1 and 2 ranks, prints a table
    python benchmarks/ds_memory.py --ranks 1 2 4   # more ranks (on a machine with the cores or GPUs for them)
    python benchmarks/ds_memory.py --quick         # a ~5M student (checks it runs; a test runs it)

Each rank loads the student through ``student.distributed.load_sharded_student`` (``zero.Init``), measures the
bytes of parameter storage it holds (its partitions plus any whole tensor), runs one LoRA edit through a
DeepSpeed engine, and measures again (the engine is gone, so the figure must not move). On CPU the ranks use
gloo and OMP_NUM_THREADS=1. "Peak RSS" is the process's high-water mark, for context only: it is mostly the
interpreter and libraries (torch, transformers, DeepSpeed), plus the checkpoint each rank reads while
loading, so it does not shrink with the ranks as the parameter bytes do.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# ~30M parameters: 7 blocks of 512 wide (4.2M each) and a 2k vocabulary (tied embeddings). No pretraining:
# memory does not depend on the weights' values.
SPEC = dict(
    family="llama",
    hidden_size=512,
    num_layers=7,
    num_heads=8,
    intermediate_size=2048,
    vocab_size=2048,
    max_position=256,
    pretrain="none",
)


QUICK_SPEC = {**SPEC, "hidden_size": 256, "num_layers": 5, "num_heads": 4, "intermediate_size": 1024}


def student_config(quick: bool = False):
    from core.config import AdaptConfig, ModelConfig, StudentConfig, TinyModelSpec

    return StudentConfig(
        name="bench-5m" if quick else "bench-30m",
        model=ModelConfig(tiny=TinyModelSpec(**(QUICK_SPEC if quick else SPEC))),
        adapt=AdaptConfig(method="lora", epochs=2),
        sharding="zero3",
    )


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def worker(cache_dir: str, out: Path, quick: bool = False) -> None:
    import torch

    from core.config import TaskConfig
    from core.distributed import all_gather, init_from_launcher
    from core.models import load_tokenizer
    from orchestrator.models import resolve_model_path
    from orchestrator.tasks import build_task
    from student.distributed import load_sharded_student

    env = init_from_launcher()
    task = build_task(TaskConfig(name="synthetic", num_train_contexts=1, num_heldout_contexts=0))
    sc = student_config(quick)
    path = resolve_model_path(sc.model, "student", task, cache_dir)
    student = load_sharded_student(sc, path, load_tokenizer(path, sc.model), task, torch.device("cpu"))
    at_rest = student.resident_parameter_bytes()
    ctx = task.train_contexts()[0]
    edit = "\n".join(f"Q: {q.question} A: {q.answer}" for q in ctx.questions)
    outcome = student.evaluate_edit(edit, ctx, seed=0)
    row = {
        "ranks": env.world_size,
        "rank": env.rank,
        "parameters": student.num_parameters,
        "whole_bytes": student.num_parameters * 4,
        "resident_bytes": at_rest,
        "resident_bytes_after_edit": student.resident_parameter_bytes(),
        "edit_error": outcome.error,
        "peak_rss_bytes": peak_rss_bytes(),
    }
    rows = all_gather(row)
    if env.is_main:
        out.write_text(json.dumps(rows))


def launch(ranks: int, cache_dir: str, out: Path, quick: bool = False) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))
    env.setdefault("DS_ACCELERATOR", "cpu")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    cmd += [__file__, "--worker", "--cache-dir", cache_dir, "--out", str(out)] + (
        ["--quick"] if quick else []
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{ranks}-rank run failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cache-dir", default=str(ROOT / ".cache" / "teachedit"))
    ap.add_argument("--quick", action="store_true", help="a ~5M student instead of ~30M")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.cache_dir, args.out, args.quick)
        return
    from core.config import TaskConfig
    from orchestrator.models import resolve_model_path
    from orchestrator.tasks import build_task

    task = build_task(TaskConfig(name="synthetic", num_train_contexts=1, num_heldout_contexts=0))
    resolve_model_path(student_config(args.quick).model, "student", task, args.cache_dir)  # build once
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.ranks:
            rows += launch(n, args.cache_dir, Path(tmp) / f"{n}.json", args.quick)
    mib = 2**20
    print(
        "| ranks | rank | student parameters | resident parameter MiB | share of whole | after a LoRA edit | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['ranks']} | {r['rank']} | {r['parameters'] / 1e6:.1f}M | {r['resident_bytes'] / mib:.1f} "
            f"| {r['resident_bytes'] / r['whole_bytes']:.3f} | {r['resident_bytes_after_edit'] / mib:.1f} "
            f"| {r['peak_rss_bytes'] / mib:.0f} |"
        )
    bad = [r for r in rows if r["edit_error"]]
    if bad:
        sys.exit(f"an edit failed: {bad[0]['edit_error']}")


if __name__ == "__main__":
    main()
