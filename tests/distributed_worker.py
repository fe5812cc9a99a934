"""Launched by tests/test_distributed.py as 2 CPU ranks (torchrun, gloo): exercises ZeRO-3 students and the
distributed pool, and writes what each rank measured to ``OUT/rank<r>.json``. The assertions are in the tests.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py OUT CACHE
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import deepspeed
import torch

from core.config import load_config
from core.distributed import all_gather, barrier, init_from_launcher, ranks_missing
from core.models import load_causal_lm, load_tokenizer
from core.records import Edit
from orchestrator.models import resolve_model_path
from orchestrator.tasks import build_task
from student.batched import MultiLoRA
from student.distributed import DistributedPool, load_sharded_student
from student.pool import StudentPool
from student.student import Student

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def qa_edit(ctx) -> str:
    return "\n".join(f"Q: {q.question} A: {q.answer}" for q in ctx.questions)


def hook_count(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def outcome_facts(o) -> dict:
    return {
        "baseline_logprob": o.baseline.logprob,
        "adapted_logprob": None if o.adapted is None else o.adapted.logprob,
        "adapted_em": None if o.adapted is None else o.adapted.em,
        "train_loss": o.train_loss,
        "error": o.error,
    }


def sharding_facts(student, plain) -> dict:
    """Each parameter's whole and local sizes; whether gathering gives back the plainly loaded tensors."""
    params = [
        {"name": n, "numel": int(p.ds_numel), "local": int(p.ds_tensor.numel()), "data": int(p.data.numel())}
        for n, p in student.model.named_parameters()
    ]
    full = student.full_state()
    ref = dict(plain.named_parameters())
    return {
        "params": params,
        "resident_bytes": student.resident_parameter_bytes(),
        "gathered_equal": set(full) == set(ref) and all(torch.equal(full[n], ref[n]) for n in full),
    }


def adapt_facts(student, text, ctx, seed) -> dict:
    """One edit through the engine: what it did, and whether the base came back bit-exact and hook-free."""
    before, hooks = student.full_state(), hook_count(student.model)
    out = student.evaluate_edit(text, ctx, seed)
    after = student.full_state()
    return {
        **outcome_facts(out),
        "restored": set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before),
        "hooks_unchanged": hook_count(student.model) == hooks,
    }


def main(out_dir: Path, cache: str) -> None:
    env = init_from_launcher()
    cfg = load_config(
        ROOT / "configs" / "smoke.yaml", [f"run.cache_dir={cache}", "students.0.sharding=zero3"]
    )
    task = build_task(cfg.task)
    sc_llama, sc_gpt2 = cfg.students
    paths = {sc.name: resolve_model_path(sc.model, "student", task, cache) for sc in cfg.students}
    toks = {sc.name: load_tokenizer(paths[sc.name], sc.model) for sc in cfg.students}
    ctxs = task.train_contexts()
    facts: dict = {"rank": env.rank, "world_size": env.world_size}

    # ZeRO-3: load sharded, compare with the whole model loaded plainly on each rank.
    sharded = load_sharded_student(sc_llama, paths["llama-t"], toks["llama-t"], task, CPU)
    plain = load_causal_lm(paths["llama-t"], sc_llama.model, CPU)
    facts["sharding"] = sharding_facts(sharded, plain)
    from student.head import head_path

    facts["head_path"] = head_path(sharded.model)  # its head carries the engine's ZeRO-3 hooks
    facts["lora"] = adapt_facts(sharded, qa_edit(ctxs[0]), ctxs[0], seed=1)
    # Scoring with the student gathered once per call (the default) or layer by layer at every step.
    scores = {}
    for gather in (False, True):
        sharded.cfg.gather_for_generation = gather
        sharded._baselines.pop(ctxs[1].id, None)
        scores[gather] = sharded.baseline(ctxs[1])
    facts["gather_for_generation"] = {
        "same_answers": (scores[True].em, scores[True].f1) == (scores[False].em, scores[False].f1),
        "logprob_diff": abs(scores[True].logprob - scores[False].logprob),
        "after_edit": outcome_facts(sharded.evaluate_edit(qa_edit(ctxs[1]), ctxs[1], 3)),
    }

    sc_full = copy.deepcopy(sc_llama)
    sc_full.adapt.method, sc_full.adapt.epochs = "full", 2
    full = load_sharded_student(sc_full, paths["llama-t"], toks["llama-t"], task, CPU)
    initialize, built = deepspeed.initialize, []
    deepspeed.initialize = lambda *a, **k: built.append(1) or initialize(*a, **k)
    try:
        facts["full"] = adapt_facts(full, qa_edit(ctxs[0]), ctxs[0], seed=1)
        # the kept engine reset after each edit: the same edit again gives the same outcome, bit for bit
        facts["full_again"] = adapt_facts(full, qa_edit(ctxs[0]), ctxs[0], seed=1)
    finally:
        deepspeed.initialize = initialize
    facts["full_engines_built"] = len(built)
    for key, sharding, offload in [("zero2", "zero2", "none"), ("offload", "zero3", "cpu")]:
        sc_v = copy.deepcopy(sc_llama)
        sc_v.sharding, sc_v.offload = sharding, offload
        variant = load_sharded_student(sc_v, paths["llama-t"], toks["llama-t"], task, CPU)
        facts[key] = adapt_facts(variant, qa_edit(ctxs[0]), ctxs[0], seed=1)
    full.cfg.adapt.learning_rate = float("inf")  # non-finite weights, then loss, on every rank alike
    facts["diverged"] = adapt_facts(full, qa_edit(ctxs[1]), ctxs[1], seed=2)

    # The pool: a ZeRO-3 student and an unsharded one; 3 edits, so one rank gets 1 edit and the other 2.
    gpt2 = Student(sc_gpt2, load_causal_lm(paths["gpt2-t"], sc_gpt2.model, CPU), toks["gpt2-t"], task)
    calls: list[int] = []  # edits the unsharded student adapts on this rank
    evaluate_edits = gpt2.evaluate_edits
    gpt2.evaluate_edits = lambda texts, *a: calls.append(len(texts)) or evaluate_edits(texts, *a)
    edits = [
        Edit(ctxs[0].id, "notes", 0, qa_edit(ctxs[0]), "test"),
        Edit(ctxs[1].id, "notes", 0, "   ", "test"),  # no usable text
        Edit(ctxs[2].id, "notes", 0, qa_edit(ctxs[2])[:60], "test"),
    ]
    by_id = {c.id: c for c in ctxs}
    pool = DistributedPool([sharded, gpt2], edits_per_rank=2)
    pool.baselines(ctxs)
    seen: list[str] = []
    # The ZeRO-3 LoRA student's edits: no engine is built (its one engine was built at load), and its usable
    # edits train together, one adapter each, through the batched path.
    engines, batches = [], []
    initialize, enter = deepspeed.initialize, MultiLoRA.__enter__
    deepspeed.initialize = lambda *a, **k: engines.append(1) or initialize(*a, **k)
    MultiLoRA.__enter__ = lambda ml: batches.append((ml.student.name, len(ml.seeds))) or enter(ml)
    state_before, hooks_before = sharded.full_state(), hook_count(sharded.model)
    try:
        results = pool.evaluate(edits, by_id, run_seed=0, on_result=lambda r: seen.append(r.edit.key))
    finally:
        deepspeed.initialize, MultiLoRA.__enter__ = initialize, enter
    state_after = sharded.full_state()
    facts["one_engine"] = {
        "engines_built": len(engines),
        "sharded_batches": [n for name, n in batches if name == sharded.name],
        "restored": all(torch.equal(state_after[k], v) for k, v in state_before.items()),
        "hooks_unchanged": hook_count(sharded.model) == hooks_before,
    }
    facts["pool"] = {
        "keys": [r.edit.key for r in results],
        "on_result": seen,
        "local_edits": sum(calls),
        "results": [{n: outcome_facts(o) for n, o in r.per_student.items()} for r in results],
        "describe": pool.describe(),
    }
    facts["pool"]["same_on_all_ranks"] = (
        len({json.dumps(x) for x in all_gather(facts["pool"]["results"])}) == 1
    )

    if env.is_main:  # the one-process reference: plain students, the same edits and seeds
        ref_pool = StudentPool([Student(sc_llama, plain, toks["llama-t"], task), gpt2])
        gpt2.evaluate_edits = evaluate_edits
        ref = ref_pool.evaluate(edits, by_id, run_seed=0)
        facts["reference"] = [{n: outcome_facts(o) for n, o in r.per_student.items()} for r in ref]
    # Teacher sampling on every rank: one prompt per generate() call, so 3 batches over 2 ranks (1 and 2);
    # the gathered edits equal one process's per-batch-seeded sampling of all three.
    from orchestrator.models import build_teacher

    teacher_cfg = copy.deepcopy(cfg)
    teacher_cfg.teacher.generation.batch_size = teacher_cfg.teacher.generation.num_edits
    teacher, _ = build_teacher(teacher_cfg, task, CPU)
    sampled = teacher.propose(ctxs[:3], 0, seed=5)
    facts["sampling"] = {"keys": [e.key for e in sampled], "texts": [e.text for e in sampled]}
    if env.is_main:
        one = teacher.propose_batches(ctxs[:3], [0, 1, 2], 0, seed=5, per_batch_seeds=True)
        facts["sampling"]["one_process"] = [e.text for e in one]
    # teacher.generation.backend=vllm (TRL's VLLMGeneration around the tests' stand-in engine): 3 contexts over
    # 2 ranks (2 and 1, the short share padded); the test compares with one process
    from tests.vllm_stand_in import install

    engines = install()
    teacher_cfg.teacher.generation.backend = "vllm"
    teacher.vllm = None
    sampled = teacher.propose(ctxs[:3], 0, seed=5)
    facts["vllm_sampling"] = {
        "keys": [e.key for e in sampled],
        "texts": [e.text for e in sampled],
        "requests": len(engines[0].requests),
        "engine_seed": engines[0].kwargs["seed"],
    }
    # Several nodes without a shared disk: each rank has its own copy of the run folder, and only rank 0's
    # holds the checkpoint rank 0 wrote. Every rank learns which ranks lack it.
    own = out_dir / f"disk{env.rank}" / "run" / "teacher" / "round_1"
    if env.is_main:
        own.mkdir(parents=True)
    barrier()
    facts["missing_on"] = ranks_missing(own)
    barrier()
    (out_dir / f"rank{env.rank}.json").write_text(json.dumps(facts, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
