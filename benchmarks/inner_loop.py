"""Inner-loop benchmark: edits scored per second, a SEAL-style sequential loop against teachedit's loop.

    python benchmarks/inner_loop.py            # ~5M and ~30M students, E = 1, 4, 8, 16 (several minutes)
    python benchmarks/inner_loop.py --quick    # ~5M student, E = 1 and 8, 3 inner epochs (about a minute)

One edit = adapt a student to it (LoRA), score the adapted student on the context's questions without the
context (greedy answers + gold-answer log-prob), restore the base. Both loops do that for the same E edits,
with the same inner-loop settings (``AdaptConfig`` defaults unless ``--quick``), on the same untrained tiny
students (speed does not depend on pretraining), in one process:

(a) SEAL-style, what SEAL's inner-loop server (``knowledge-incorporation/src/inner/TTT_server.py``) does for
    each request (one edit): score the unadapted model on the questions, a fresh ``get_peft_model`` and a
    fresh HF ``Trainer`` (``datasets.Dataset``, a padding collator), ``trainer.train()``, the adapter written
    to a folder (SEAL hands it to its vLLM evaluator that way), score the adapted model, ``unload()``, delete
    the folder, ``gc.collect()``. It is generous to SEAL: dynamic padding (SEAL pads every sequence to
    ``max_seq_length``, 2048) and the same scoring code as (b) (SEAL scores through a vLLM server).
(b) teachedit: ``Student.evaluate_edits`` with ``adapt.edit_batch_size = E`` (E = 1 is its sequential path),
    baselines cached (computed before timing, as the pool does once per context).

FLOPs of (b) are counted by ``torch.utils.flop_counter.FlopCounterMode`` on an untimed run of the same work:
every matmul executed (forward and backward, padded positions included; CPU attention kernels are not
counted, a few percent at these lengths). The reference rate is a plain ``torch.mm`` of two 1024 x 1024 fp32
matrices, best of 10, measured at the start and the end of the same run (the faster counts), per wall-clock
second and per CPU second. On a shared machine the CPU-time figures are the steadier ones (use ``--threads 1``:
with more threads than free cores, OpenMP threads wait for each other and wall-clock times explode). Writes
``benchmarks/results/inner_loop.json``; the last line printed is ``speedup_vs_sequential@8: <ratio>`` for the
~5M student at E = 8.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from orchestrator.config import AdaptConfig, ModelConfig, StudentConfig, TinyModelSpec  # noqa: E402
from orchestrator.models import tiny_model, train_tokenizer  # noqa: E402
from orchestrator.records import Context  # noqa: E402
from orchestrator.tasks.synthetic import SyntheticTask  # noqa: E402
from student.scoring import score_context  # noqa: E402
from student.sequences import IGNORE, encode_item  # noqa: E402
from student.student import Student, lora_config  # noqa: E402

ROOT = Path(__file__).resolve().parent
STUDENTS = {  # name -> tiny Llama spec (the vocabulary is the task's BPE, 512 tokens)
    "~5M": TinyModelSpec(family="llama", hidden_size=256, num_layers=5, num_heads=4, vocab_size=512),
    "~30M": TinyModelSpec(family="llama", hidden_size=512, num_layers=7, num_heads=8, vocab_size=512),
}
EDIT_SIZES = (1, 4, 8, 16)


def make_students(task: SyntheticTask, names: list[str], adapt: AdaptConfig) -> dict[str, Student]:
    corpus = task.student_corpus(2000, 0)
    tok = train_tokenizer([p + c for p, c in corpus], 512)
    out = {}
    for name in names:
        torch.manual_seed(0)
        spec = STUDENTS[name]
        cfg = StudentConfig(name=name, model=ModelConfig(tiny=spec), adapt=AdaptConfig(**asdict(adapt)))
        out[name] = Student(cfg, tiny_model(spec, tok), tok, task)
    return out


def make_edits(contexts: list[Context]) -> list[tuple[str, Context]]:
    """QA edits of 1-4 lines, as the teacher writes them (some with a narrative line added)."""
    edits = []
    for i, c in enumerate(contexts):
        lines = [f"Q: {q.question} A: {q.answer}" for q in c.questions[: 1 + (i + 3) % 4]]
        if i % 3 == 0:
            lines.append(c.text.split(". ")[0] + ".")
        edits.append(("\n".join(lines), c))
    return edits


def seal_style(student: Student, edits: list[tuple[str, Context]], seeds: list[int], workdir: Path) -> None:
    """(a) per edit: score the base, fresh peft model + fresh HF Trainer, train, adapter to disk, score the
    adapted model, unload, clean up (see the module docstring)."""
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainingArguments

    a, tok, cfg = student.cfg.adapt, student.tok, student.cfg
    device = next(student.model.parameters()).device
    for (text, ctx), seed in zip(edits, seeds):
        score_context(
            student.model, tok, student.task, ctx, cfg.max_new_tokens, cfg.eval_batch_size, student.chat
        )
        rows = []
        for item in student.usable_items(text, ctx)[0]:  # (items, error, note)
            ids, labels = encode_item(tok, item, a.max_length, a.loss_on)
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
        torch.manual_seed(seed)
        model = get_peft_model(student.model, lora_config(a, student.model_type))
        args = TrainingArguments(
            output_dir=str(workdir / "trainer"),
            per_device_train_batch_size=a.batch_size,
            num_train_epochs=a.epochs,
            learning_rate=a.learning_rate,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            max_grad_norm=a.max_grad_norm,
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=device.type == "cpu",
            bf16=False,
            seed=seed,
        )
        collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE)
        trainer = Trainer(
            model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collator
        )
        trainer.remove_callback(PrinterCallback)  # it prints the final metrics to stdout
        trainer.train()
        model.save_pretrained(workdir / "adapter")
        model.eval()
        score_context(model, tok, student.task, ctx, cfg.max_new_tokens, cfg.eval_batch_size, student.chat)
        student.model = model.unload()
        student.model.eval()
        shutil.rmtree(workdir / "adapter")
        gc.collect()


def teachedit(student: Student, edits: list[tuple[str, Context]], seeds: list[int]) -> None:
    """(b) the whole chunk through Student.evaluate_edits (batched when edit_batch_size > 1)."""
    student.cfg.adapt.edit_batch_size = len(edits)
    student.evaluate_edits([t for t, _ in edits], [c for _, c in edits], seeds)


def timed(fn: Any, *args: Any) -> tuple[float, float]:
    """(wall-clock seconds, this process's CPU seconds) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0


def best_of(repeats: int, fn: Any, *args: Any) -> tuple[float, float]:
    """The fastest of ``repeats`` runs (the least disturbed by other processes on a shared machine)."""
    runs = [timed(fn, *args) for _ in range(repeats)]
    return min(w for w, _ in runs), min(c for _, c in runs)


def counted_flops(fn: Any, *args: Any) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())


def matmul_rates(n: int = 1024, reps: int = 10) -> dict[str, float]:
    """A plain fp32 ``torch.mm`` of two n x n matrices (2 n^3 FLOPs), best of ``reps``: FLOP/s per wall-clock
    second and per CPU second of this process."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    runs = [timed(torch.mm, a, b) for _ in range(reps)]
    return {"wall": 2 * n**3 / min(w for w, _ in runs), "cpu": 2 * n**3 / min(c for _, c in runs)}


def bench_student(
    student: Student, edits: list[tuple[str, Context]], sizes: list[int], workdir: Path, repeats: int
) -> dict:
    seeds = list(range(len(edits)))
    for _, ctx in edits:
        student.baseline(ctx)  # baselines are cached in both loops; not part of the timing
    seal_style(student, edits[:1], seeds[:1], workdir)  # warm-up: first-call costs of both loops
    teachedit(student, edits[:2], seeds[:2])
    out: dict[str, Any] = {"parameters": student.num_parameters, "E": {}}
    for e in sizes:
        chunk, s = edits[:e], seeds[:e]
        t_seal, cpu_seal = best_of(repeats, seal_style, student, chunk, s, workdir)
        flops = counted_flops(teachedit, student, chunk, s)  # also the warm-up for this E's shapes
        t_ours, cpu_ours = best_of(repeats, teachedit, student, chunk, s)
        out["E"][str(e)] = {
            "seal_style_edits_per_s": e / t_seal,
            "teachedit_edits_per_s": e / t_ours,
            "speedup": t_seal / t_ours,
            "seal_style_cpu_s": cpu_seal,
            "teachedit_cpu_s": cpu_ours,
            "speedup_cpu_time": cpu_seal / cpu_ours,
            "teachedit_flops": flops,
            "teachedit_flops_per_s": flops / t_ours,
            "teachedit_flops_per_cpu_s": flops / cpu_ours,
        }
        print(
            f"  {student.name} E={e}: seal-style {e / t_seal:.2f}/s, teachedit {e / t_ours:.2f}/s", flush=True
        )
    return out


def table(results: dict) -> str:
    rows = [
        "| student | params | E | SEAL-style edits/s | teachedit edits/s | speedup | speedup (CPU time) | "
        "teachedit GFLOP/s | vs matmul | vs matmul (CPU time) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    mm = results["matmul_flops_per_s"]
    mm_cpu = results["matmul_flops_per_cpu_s"]
    for name, r in results["students"].items():
        for e, x in r["E"].items():
            rows.append(
                f"| {name} | {r['parameters'] / 1e6:.1f}M | {e} | {x['seal_style_edits_per_s']:.2f} | "
                f"{x['teachedit_edits_per_s']:.2f} | {x['speedup']:.1f}x | {x['speedup_cpu_time']:.1f}x | "
                f"{x['teachedit_flops_per_s'] / 1e9:.1f} | {x['teachedit_flops_per_s'] / mm:.0%} | "
                f"{x['teachedit_flops_per_cpu_s'] / mm_cpu:.0%} |"
            )
    return "\n".join(rows)


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="~5M student only, E = 1 and 8, 3 inner epochs")
    p.add_argument("--out", default=str(ROOT / "results" / "inner_loop.json"), help="where the JSON goes")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per measurement; the fastest counts")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import logging

    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    adapt = AdaptConfig(epochs=3) if args.quick else AdaptConfig()
    names = ["~5M"] if args.quick else list(STUDENTS)
    sizes = [1, 8] if args.quick else list(EDIT_SIZES)
    task = SyntheticTask(num_train=max(sizes), num_heldout=0, seed=0)
    edits = make_edits(task.train_contexts())
    results: dict[str, Any] = {
        "quick": args.quick,
        "repeats": args.repeats,
        "adapt": asdict(adapt),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "matmul_at_start": matmul_rates(),
        "students": {},
    }
    print(f"plain fp32 matmul: {results['matmul_at_start']['wall'] / 1e9:.1f} GFLOP/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, student in make_students(task, names, adapt).items():
            results["students"][name] = bench_student(student, edits, sizes, Path(tmp), args.repeats)
    results["matmul_at_end"] = matmul_rates()
    results["load_average_at_end"] = os.getloadavg()
    for key, kind in (("matmul_flops_per_s", "wall"), ("matmul_flops_per_cpu_s", "cpu")):  # the reference
        results[key] = max(results["matmul_at_start"][kind], results["matmul_at_end"][kind])
    ratio = results["students"]["~5M"]["E"]["8"]["speedup"]
    results["speedup_vs_sequential@8"] = ratio
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(
        f"load average (1, 5, 15 min): start {results['load_average_at_start']}, end {results['load_average_at_end']}"
    )
    print(f"speedup_vs_sequential@8: {ratio:.2f}")


if __name__ == "__main__":
    main()
