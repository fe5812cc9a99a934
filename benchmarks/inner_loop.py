"""Inner-loop benchmark: edits scored per second, a SEAL-style sequential loop against teachedit's loop.

    python benchmarks/inner_loop.py            # ~5M and ~30M students, E = 1, 4, 8, 16 (several minutes)
    python benchmarks/inner_loop.py --quick    # ~5M student, E = 1 and 8, 3 inner epochs (about a minute)
    python benchmarks/inner_loop.py --real     # real students and teacher of configs/real_cpu.yaml, E = 1, 8
    python benchmarks/inner_loop.py --real --quick   # the same with 1 epoch, 4 sequences (<= 10 min, 2 cores)

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

``--real``: the same two loops on real pretrained students, the SmolLM2-135M-Instruct and Gemma-3-270M of
``configs/real_cpu.yaml`` (GGUF sources converted into the model cache, loaded through
``orchestrator.models.resolve_model_path``), with that config's student settings (LoRA r 32 on peft's
default modules, 2 epochs of one sequence per step, at most 12 sequences of 256 tokens, its QA format) on
its SQuAD task (SEAL protocol, the 8 training passages of ``edits_qwen2.5-7b_train.json``); edit i is the
first Qwen2.5-7B completion of passage i (SEAL's released edits). Besides edits/s it reports training
tokens/s: the positions of the training forward passes, padding included (one sequence per step leaves
(a) no padding; (b) pads the E edits' sequences of a step to the longest), with the padding-free count
(``trained_tokens``, the same in both loops) beside it. A teacher row times ``Teacher.propose`` (HF sampling,
the config's ``generation``) writing edits for the training passages with SmolLM2-135M-Instruct: edits/s and
generated tokens/s (up to each edit's EOS). ``--real --quick`` cuts the inner loop to 1 epoch and 4
sequences per edit, times one ``generation.batch_size`` batch of edits of at most 64 tokens, and runs each
measurement once; ``--real-students smollm2`` leaves Gemma out (about half the time). ``--epochs``,
``--max-sequences``, ``--teacher-max-new-tokens`` and ``--edit-sizes`` cut further (smoke tests). Writes
``benchmarks/results/inner_loop_real.json``; the last line printed is ``real_speedup_cpu@8: <ratio>``,
SmolLM2 at E = 8, CPU time of (a) over (b) (with ``--edit-sizes`` or ``--real-students`` leaving those out,
the line names the largest E, and the student, it used instead).
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from core.config import (  # noqa: E402
    AdaptConfig,
    Config,
    ModelConfig,
    StudentConfig,
    TinyModelSpec,
    load_config,
)
from core.models import load_causal_lm, load_tokenizer, resolve_device  # noqa: E402
from core.records import Context  # noqa: E402
from orchestrator.models import resolve_model_path, tiny_model, train_tokenizer  # noqa: E402
from orchestrator.provenance import provenance  # noqa: E402
from orchestrator.tasks.squad import SquadTask, bundled_path, load_seal_json  # noqa: E402
from orchestrator.tasks.synthetic import SyntheticTask  # noqa: E402
from student.lifecycle import lora_config  # noqa: E402
from student.scoring import score_context  # noqa: E402
from student.sequences import IGNORE, encode_item  # noqa: E402
from student.student import Student  # noqa: E402
from teacher.model import Teacher  # noqa: E402

ROOT = Path(__file__).resolve().parent
STUDENTS = {  # name -> tiny Llama spec (the vocabulary is the task's BPE, 512 tokens)
    "~5M": TinyModelSpec(family="llama", hidden_size=256, num_layers=5, num_heads=4, vocab_size=512),
    "~30M": TinyModelSpec(family="llama", hidden_size=512, num_layers=7, num_heads=8, vocab_size=512),
}
EDIT_SIZES = (1, 4, 8, 16)

REPO = ROOT.parent
REAL_CONFIG = REPO / "configs" / "real_cpu.yaml"
REAL_EDITS = "edits_qwen2.5-7b_train.json"  # SEAL's Qwen2.5-7B edits of the bundled SQuAD train passages
REAL_EDIT_SIZES = (1, 8)
QUICK_REAL = {"*": {"epochs": 1, "max_sequences": 4}}  # --real --quick: inner-loop cuts per student
QUICK_TEACHER_TOKENS = 64  # --real --quick: the longest edit the teacher writes


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


class TokenCount:
    """Input positions of the training forward passes (those run with autograd on), padding included."""

    def __init__(self) -> None:
        self.n = 0


@contextmanager
def counting_tokens(model: Any) -> Iterator[TokenCount]:
    """Count the positions of every training forward pass through ``model``'s input embedding (the scoring
    passes run under ``no_grad`` and are not counted); peft wraps the model but keeps its embedding."""
    count = TokenCount()

    def hook(module: Any, args: tuple[Any, ...]) -> None:
        if torch.is_grad_enabled():
            count.n += args[0].numel()

    handle = model.get_input_embeddings().register_forward_pre_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def trained_tokens(student: Student, edits: list[tuple[str, Context]]) -> int:
    """Tokens the edits train on, without padding: each edit's fitted sequences x epochs (both loops)."""
    a = student.cfg.adapt
    n = 0
    for text, ctx in edits:
        for item in student.usable_items(text, ctx)[0]:
            n += len(encode_item(student.tok, item, a.max_length, a.loss_on)[0])
    return n * a.epochs


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
        with counting_tokens(student.model) as seal_tokens:
            t_seal, cpu_seal = best_of(repeats, seal_style, student, chunk, s, workdir)
        with counting_tokens(student.model) as our_tokens:
            flops = counted_flops(teachedit, student, chunk, s)  # also the warm-up for this E's shapes
        t_ours, cpu_ours = best_of(repeats, teachedit, student, chunk, s)
        seal_positions = seal_tokens.n / repeats
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
            # training tokens: without padding (the same in both loops), and the positions each loop ran
            # through its training forward passes, padding included (tokens/s counts these)
            "trained_tokens": trained_tokens(student, chunk),
            "seal_style_trained_positions": seal_positions,
            "teachedit_trained_positions": our_tokens.n,
            "seal_style_tokens_per_s": seal_positions / t_seal,
            "teachedit_tokens_per_s": our_tokens.n / t_ours,
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


def real_config(args: argparse.Namespace) -> Config:
    """configs/real_cpu.yaml, its students narrowed to ``--real-students``, with ``--quick``'s cuts (and the
    flags' explicit values) applied to the inner loop and the teacher's edit length."""
    cfg = load_config(REAL_CONFIG)
    if args.real_students:
        missing = set(args.real_students) - {s.name for s in cfg.students}
        if missing:
            raise SystemExit(f"--real-students: no student named {sorted(missing)} in {REAL_CONFIG.name}")
        cfg.students = [s for s in cfg.students if s.name in args.real_students]
    for sc in cfg.students:
        cut = QUICK_REAL.get(sc.name, QUICK_REAL["*"]) if args.quick else {}
        sc.adapt.epochs = args.epochs or cut.get("epochs", sc.adapt.epochs)
        sc.adapt.max_sequences = args.max_sequences or cut.get("max_sequences", sc.adapt.max_sequences)
    g = cfg.teacher.generation
    g.max_new_tokens = args.teacher_max_new_tokens or (
        min(QUICK_TEACHER_TOKENS, g.max_new_tokens) if args.quick else g.max_new_tokens
    )
    return cfg


def real_task(cfg: Config) -> SquadTask:
    """The config's SQuAD task (SEAL protocol) on the bundled train passages that carry SEAL's edits."""
    t = cfg.task
    return SquadTask(
        path=str(bundled_path(REAL_EDITS)),
        num_train=t.num_train_contexts,
        num_heldout=t.num_heldout_contexts,
        seed=t.seed,
        protocol=t.protocol,
    )


def real_edits(task: SquadTask) -> list[tuple[str, Context]]:
    """Each training passage with the first of Qwen2.5-7B's completions for it (SEAL's released edits)."""
    records = load_seal_json(bundled_path(REAL_EDITS), need_completions=True)
    first = {r["context"]: r["completions"][0] for r in records}
    return [(first[c.text], c) for c in task.train_contexts()]


def load_real(mc: ModelConfig, role: str, task: SquadTask, cfg: Config) -> tuple[Any, Any]:
    """``(model, tokenizer)`` through the project's model sources (the converted GGUF folder in the cache)."""
    cache = Path(cfg.run.cache_dir)
    path = resolve_model_path(mc, role, task, cache if cache.is_absolute() else REPO / cache)
    return load_causal_lm(path, mc, resolve_device(cfg.run.device)), load_tokenizer(path, mc)


@contextmanager
def counting_generated(teacher: Teacher) -> Iterator[dict[str, int]]:
    """Count what ``teacher.model.generate`` writes: ``tokens`` up to and including each row's first EOS,
    ``positions`` every generated position (rows that ended early are padded to the longest)."""
    model, eos, counts = teacher.model, teacher.tok.eos_token_id, {"tokens": 0, "positions": 0}
    generate = model.generate

    def wrapped(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = generate(*args, **kwargs)
        new = out[:, kwargs["input_ids"].shape[1] :]
        ended = new == eos
        lengths = torch.where(ended.any(1), ended.int().argmax(1) + 1, new.shape[1])
        counts["tokens"] += int(lengths.sum())
        counts["positions"] += new.numel()
        return out

    model.generate = wrapped  # an instance attribute, removed below (the class's method is untouched)
    try:
        yield counts
    finally:
        del model.generate


def bench_teacher(cfg: Config, task: SquadTask, quick: bool) -> dict:
    """Edits written per second by the config's teacher through ``Teacher.propose`` (HF sampling), one
    ``generation.batch_size`` batch of prompts under ``--quick``, every training passage otherwise."""
    model, tok = load_real(cfg.teacher.model, "teacher", task, cfg)
    g = cfg.teacher.generation
    contexts = (
        task.train_contexts()[: max(1, g.batch_size // g.num_edits)] if quick else task.train_contexts()
    )
    warm = replace(cfg.teacher, generation=replace(g, max_new_tokens=4))
    Teacher(warm, model, tok).propose(contexts[:1], 0, seed=0)  # first-call costs
    teacher = Teacher(cfg.teacher, model, tok)
    with counting_generated(teacher) as counts:
        wall, cpu = timed(teacher.propose, contexts, 0, 0)
    n = len(contexts) * g.num_edits
    return {
        "model": cfg.teacher.model.gguf,
        "parameters": sum(p.numel() for p in model.parameters()),
        "generation": asdict(g),
        "edits": n,
        "wall_s": wall,
        "cpu_s": cpu,
        "edits_per_s": n / wall,
        "generated_tokens": counts["tokens"],  # up to each edit's EOS
        "generated_positions": counts["positions"],  # padding after an early EOS included
        "tokens_per_s": counts["tokens"] / wall,
        "positions_per_s": counts["positions"] / wall,
    }


def real_table(results: dict) -> str:
    rows = [
        "| student | params | E | SEAL-style edits/s | teachedit edits/s | SEAL-style tok/s | teachedit tok/s | "
        "teachedit padding | speedup | speedup (CPU time) | teachedit GFLOP/s | vs matmul | vs matmul (CPU time) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    mm, mm_cpu = results["matmul_flops_per_s"], results["matmul_flops_per_cpu_s"]
    for name, r in results["students"].items():
        for e, x in r["E"].items():
            padding = 1 - x["trained_tokens"] / x["teachedit_trained_positions"]
            rows.append(
                f"| {name} | {r['parameters'] / 1e6:.0f}M | {e} | {x['seal_style_edits_per_s']:.3f} | "
                f"{x['teachedit_edits_per_s']:.3f} | {x['seal_style_tokens_per_s']:.0f} | "
                f"{x['teachedit_tokens_per_s']:.0f} | {padding:.0%} | {x['speedup']:.2f}x | "
                f"{x['speedup_cpu_time']:.2f}x | {x['teachedit_flops_per_s'] / 1e9:.1f} | "
                f"{x['teachedit_flops_per_s'] / mm:.0%} | {x['teachedit_flops_per_cpu_s'] / mm_cpu:.0%} |"
            )
    return "\n".join(rows)


def machine(args: argparse.Namespace, repeats: int) -> dict[str, Any]:
    """What the figures were measured on (and the matmul reference at the start)."""
    return {
        "quick": args.quick,
        "repeats": repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "matmul_at_start": matmul_rates(),
    }


def finish(results: dict[str, Any], out: str) -> None:
    """The matmul reference at the end (the faster of start and end counts); the JSON written."""
    results["matmul_at_end"] = matmul_rates()
    results["load_average_at_end"] = os.getloadavg()
    for key, kind in (("matmul_flops_per_s", "wall"), ("matmul_flops_per_cpu_s", "cpu")):
        results[key] = max(results["matmul_at_start"][kind], results["matmul_at_end"][kind])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({**results, "provenance": provenance()}, indent=2) + "\n")


def run_tiny(args: argparse.Namespace) -> None:
    adapt = AdaptConfig(epochs=3) if args.quick else AdaptConfig()
    names = ["~5M"] if args.quick else list(STUDENTS)
    sizes = args.edit_sizes or ([1, 8] if args.quick else list(EDIT_SIZES))
    repeats = args.repeats or 2
    task = SyntheticTask(num_train=max(sizes), num_heldout=0, seed=0)
    edits = make_edits(task.train_contexts())
    results: dict[str, Any] = {**machine(args, repeats), "adapt": asdict(adapt), "students": {}}
    print(f"plain fp32 matmul: {results['matmul_at_start']['wall'] / 1e9:.1f} GFLOP/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, student in make_students(task, names, adapt).items():
            results["students"][name] = bench_student(student, edits, sizes, Path(tmp), repeats)
    e = 8 if 8 in sizes else max(sizes)
    ratio = results["students"]["~5M"]["E"][str(e)]["speedup"]
    results[f"speedup_vs_sequential@{e}"] = ratio
    finish(results, args.out or str(ROOT / "results" / "inner_loop.json"))
    print(table(results))
    print(
        f"load average (1, 5, 15 min): start {results['load_average_at_start']}, end {results['load_average_at_end']}"
    )
    print(f"speedup_vs_sequential@{e}: {ratio:.2f}")


def run_real(args: argparse.Namespace) -> None:
    cfg = real_config(args)
    sizes = args.edit_sizes or list(REAL_EDIT_SIZES)
    repeats = args.repeats or (1 if args.quick else 2)
    task = real_task(cfg)
    edits = real_edits(task)
    if max(sizes) > len(edits):
        raise SystemExit(f"--edit-sizes: at most {len(edits)} edits (task.num_train_contexts)")
    results: dict[str, Any] = {
        **machine(args, repeats),
        "config": str(REAL_CONFIG.relative_to(REPO)),
        "edits": f"{REAL_EDITS}: the first Qwen2.5-7B completion of each training passage",
        "tokens": "tokens/s count the positions of the training forward passes, padding included; "
        "trained_tokens is the same work without padding",
        "students": {},
    }
    print(f"plain fp32 matmul: {results['matmul_at_start']['wall'] / 1e9:.1f} GFLOP/s", flush=True)
    t = results["teacher"] = bench_teacher(cfg, task, args.quick)
    print(
        f"  teacher {t['model']}: {t['edits']} edits in {t['wall_s']:.1f} s, {t['edits_per_s']:.2f} edits/s, "
        f"{t['tokens_per_s']:.0f} tokens/s (generated up to EOS)",
        flush=True,
    )
    gc.collect()
    with tempfile.TemporaryDirectory() as tmp:
        for sc in cfg.students:
            adapt = asdict(sc.adapt)  # before bench_student sets edit_batch_size to each E in turn
            student = Student(sc, *load_real(sc.model, "student", task, cfg), task)
            r = bench_student(student, edits, sizes, Path(tmp), repeats)
            results["students"][sc.name] = {"model": sc.model.gguf, "adapt": adapt, **r}
            del student
            gc.collect()
    name = "smollm2" if "smollm2" in results["students"] else next(iter(results["students"]))
    e = 8 if 8 in sizes else max(sizes)
    ratio = results["students"][name]["E"][str(e)]["speedup_cpu_time"]
    key = f"real_speedup_cpu@{e}" + ("" if name == "smollm2" else f" ({name})")
    results[key] = ratio
    finish(results, args.out or str(ROOT / "results" / "inner_loop_real.json"))
    print(real_table(results))
    print(
        f"load average (1, 5, 15 min): start {results['load_average_at_start']}, end {results['load_average_at_end']}"
    )
    print(f"{key}: {ratio:.2f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="less work (see the module docstring)")
    p.add_argument("--real", action="store_true", help="real students and teacher of configs/real_cpu.yaml")
    p.add_argument("--out", help="where the JSON goes (default results/inner_loop.json, --real: _real.json)")
    p.add_argument(
        "--repeats", type=int, help="timed runs per measurement, the fastest counts (2; --real --quick: 1)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--edit-sizes", type=int, nargs="+", help="the values of E (default 1 4 8 16; --quick, --real: 1 8)"
    )
    p.add_argument(
        "--real-students", nargs="+", help="--real: only these students of the config (smollm2, gemma3)"
    )
    p.add_argument("--epochs", type=int, help="--real: inner-loop epochs (default: the config's; --quick: 1)")
    p.add_argument("--max-sequences", type=int, help="--real: sequences per edit (config: 12; --quick: 4)")
    p.add_argument(
        "--teacher-max-new-tokens", type=int, help="--real: edit length (config: 192; --quick: 64)"
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import logging

    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # the weight-loading bars of the real models
    (run_real if args.real else run_tiny)(args)


if __name__ == "__main__":
    main()
