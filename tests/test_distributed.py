"""Distributed runs: 2 CPU ranks (gloo) started by torchrun and by the deepspeed launcher in subprocesses.

The launched tests share two launches (module-scoped fixtures): ``tests/distributed_worker.py`` (ZeRO-3
students and the pool) and a 2-rank ``teachedit run`` beside its one-process twin. The first distributed
start compiles DeepSpeed's shm_comm op (~25 s) into .cache/torch_extensions; later starts reuse it.

Tolerance of the 2-rank vs one-process comparison (``TOL``). Both runs use one thread per process, the same
seeds and the same edits, so what differs is only the order of floating-point sums: a ZeRO-3 student splits
each batch across the ranks and DeepSpeed adds the halves' gradients; an unsharded student's batched inner
loop (``adapt.edit_batch_size``) trains the edits that share a pass together, and which edits share a pass
depends on the number of ranks (tests/test_batched.py holds batched = sequential to 1e-4). Float32 epsilon
is ~1.2e-7 relative and Adam's normalised steps keep errors there: measured, log-probabilities and losses
differ by <= 1e-6 (relative <= 3e-7). TOL = 1e-5 is 10x that and ~500x below the log-prob gain one edit
gives these tiny students (>= 5e-3). Baselines (no training) must be identical and EM equal (a greedy
answer would flip only on a near-tie of logits).
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from .conftest import CACHE, CONFIGS, ROOT

TOL = 1e-5


def _close(a: object, b: object) -> bool:
    """Equal structures, floats within TOL (unsharded LoRA edits go through the batched loop)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= TOL
    return a == b


LAUNCH_TIMEOUT = 900  # seconds; a deadlock fails the test instead of hanging the suite


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(
        PYTHONPATH=str(ROOT),
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",  # 2 ranks on 2 cores; also makes one-process twins bit-comparable
        TORCH_EXTENSIONS_DIR=str(ROOT / ".cache" / "torch_extensions"),
        PYTHONWARNINGS="ignore",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "w") as f:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT, timeout=LAUNCH_TIMEOUT
        )
    assert proc.returncode == 0, f"{' '.join(cmd[:6])} ... failed:\n{log.read_text()[-4000:]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- without a launcher ----------------------------------------------------------------------------------------
def test_single_process_helpers_are_the_identity():
    from core.distributed import all_gather, all_ranks, current, launched, on_rank0

    assert not launched() and current().world_size == 1 and current().is_main
    assert on_rank0(lambda: 41 + 1) == 42
    assert all_gather({"a": 1}) == [{"a": 1}]
    with pytest.raises(ValueError, match="boom"):
        all_ranks(lambda: (_ for _ in ()).throw(ValueError("boom")))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_releasing_a_trained_teacher_keeps_its_dtype_and_weights(method, monkeypatch):
    """release_deepspeed (after a ZeRO teacher update) builds the plain model in the trained weights' dtype,
    never float32 first, and copies the weights exactly (LoRA: merged). Without partitioned parameters the
    gather is a no-op, so one process shows what every rank gets."""
    from types import SimpleNamespace

    from transformers import LlamaConfig, LlamaForCausalLM

    from teacher.training import release_deepspeed

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    if method == "lora":
        import copy

        from peft import LoraConfig, get_peft_model

        # a trained-looking adapter (B not zero), so merging changes q_proj
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
        want = {k: v.clone() for k, v in copy.deepcopy(model).merge_and_unload().state_dict().items()}
    else:
        want = {k: v.clone() for k, v in model.state_dict().items()}
    destroyed = []
    trainer = SimpleNamespace(
        model=model,
        model_wrapped=SimpleNamespace(destroy=lambda: destroyed.append(True)),
        accelerator=SimpleNamespace(free_memory=lambda: None),
    )
    built = []  # the dtype each new model's parameters have right after construction
    init = LlamaForCausalLM.__init__

    def spy(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        built.append(next(self.parameters()).dtype)

    monkeypatch.setattr(LlamaForCausalLM, "__init__", spy)
    plain, adapter = release_deepspeed(trainer, method, torch.device("cpu"))
    assert built == [torch.bfloat16], "constructed in bfloat16, never as a float32 model first"
    assert destroyed == [True] and type(plain) is LlamaForCausalLM and not plain.training
    assert {p.dtype for p in plain.parameters()} == {torch.bfloat16}, "built in the weights' dtype"
    got = plain.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert (adapter is not None) == (method == "lora")


def test_generation_steps_ranks_together_only_for_a_partitioned_model(monkeypatch):
    """A ZeRO-3 teacher's GRPOConfig installs a process-wide DeepSpeed config while unsharded students score
    different edits on each rank; transformers would then step every generate() in lockstep across ranks
    and hang on unequal call counts. Scoring decides per model instead."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    from student.scoring import greedy_completions, zero3_partitioned

    class Tok:
        pad_token_id, eos_token_id = 0, 1

        def __call__(self, texts: list[str], **kw: Any) -> Any:
            from transformers import BatchEncoding

            ids = torch.tensor([[2, 3, 4]] * len(texts))
            return BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})

        def batch_decode(self, rows: Any, **kw: Any) -> list[str]:
            return ["x" for _ in rows]

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
    )
    seen: list[Any] = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: seen.append(kw["synced_gpus"]) or generate(**kw))
    trainer_config = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_batch_size": 1})
    try:
        greedy_completions(model, Tok(), ["a", "b"], 2, 2)
    finally:
        unset_hf_deepspeed_config()
        del trainer_config
    assert seen == [False] and not zero3_partitioned(model)
    next(model.parameters()).ds_id = 0  # what DeepSpeed tags a ZeRO-3 partition with
    assert zero3_partitioned(model)


def test_a_sharded_students_zero3_context_keeps_a_trainers_global_config():
    """Leaving a ZeRO-3 student's context restores the process-wide config a trainer installed (GRPO with a
    ZeRO-3 teacher), and leaves none where there was none."""
    from transformers.integrations import deepspeed as hf_ds

    from student.distributed import hf_zero3

    student = {"zero_optimization": {"stage": 3}, "train_batch_size": 2}
    trainer = hf_ds.HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_batch_size": 8})
    try:
        with hf_zero3(student):
            assert hf_ds.deepspeed_config()["train_batch_size"] == 2
        assert hf_ds.deepspeed_config() is trainer.config, "the trainer's config is back"
    finally:
        hf_ds.unset_hf_deepspeed_config()
    with hf_zero3(student):
        assert hf_ds.is_deepspeed_zero3_enabled()
    assert hf_ds.deepspeed_config() is None
    del trainer


def test_shares_differ_by_at_most_one_edit():
    from core.distributed import share

    for n in range(0, 9):
        for world in (1, 2, 3):
            parts = [share(n, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:])), "contiguous, no gap, no overlap"
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1


def test_a_rank_without_rows_gets_a_row_that_adds_no_loss():
    from student.distributed import rank_rows
    from student.sequences import IGNORE, Batch

    ids = torch.arange(12).view(3, 4)
    batch = Batch(ids, torch.ones_like(ids), ids.clone())
    assert rank_rows(batch, 1, 2).input_ids.tolist() == [ids[1].tolist()]
    assert rank_rows(batch, 0, 2).input_ids.tolist() == [ids[0].tolist(), ids[2].tolist()]
    empty = rank_rows(batch, 3, 4)
    assert empty.input_ids.shape == (1, 4) and (empty.labels == IGNORE).all()


def test_student_deepspeed_config(smoke_cfg):
    import copy

    from student.distributed import student_ds_config

    sc = copy.deepcopy(smoke_cfg.students[0])
    sc.sharding, sc.offload, sc.adapt.max_grad_norm = "zero3", "cpu", 0.5
    cfg = student_ds_config(sc, world_size=4)
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_param_persistence_threshold"] == 0
    assert zero["offload_param"]["device"] == zero["offload_optimizer"]["device"] == "cpu"
    assert cfg["gradient_clipping"] == 0.5 and "optimizer" not in cfg
    assert cfg["train_batch_size"] == cfg["train_micro_batch_size_per_gpu"] * 4
    assert "stage3_max_live_parameters" not in zero, "DeepSpeed's defaults unless asked"
    sc.zero3_max_live_parameters = 10**6
    zero = student_ds_config(sc, 4)["zero_optimization"]
    assert zero["stage3_max_live_parameters"] == 10**6
    assert zero["stage3_max_reuse_distance"] == zero["stage3_prefetch_bucket_size"] == 0
    sc.zero3_max_live_parameters = None
    sc.sharding, sc.offload = "zero2", "none"
    assert student_ds_config(sc, 2)["zero_optimization"] == {"stage": 2}


def test_offload_needs_sharding():
    from core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"students\[0\].offload.*zero2 or zero3"):
        load_config(CONFIGS / "smoke.yaml", ["students.0.offload=cpu"])


@pytest.mark.parametrize("name", ["zero2.json", "zero3.json", "zero3_offload.json"])
def test_deepspeed_configs_fill_from_trainer_arguments(name):
    """Usable as-is by the HF Trainer: every "auto" is one the Trainer fills."""
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    raw = json.loads((CONFIGS / "deepspeed" / name).read_text())
    assert "optimizer" not in raw, "the Trainer's AdamW is used (no cpu_adam build)"
    ds = HfTrainerDeepSpeedConfig(raw)
    try:
        from types import SimpleNamespace

        args = SimpleNamespace(
            world_size=2,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=1,
            max_grad_norm=1.0,
            learning_rate=1e-4,
            adam_beta1=0.9,
            adam_beta2=0.999,
            adam_epsilon=1e-8,
            weight_decay=0.0,
            fp16=False,
            fp16_full_eval=False,
            bf16=False,
            bf16_full_eval=False,
            fp16_backend="auto",
            fp16_opt_level="O1",
            optim="adamw_torch",
            lr_scheduler_type="constant",
            warmup_steps=0,
            get_warmup_steps=lambda n: 0,
            save_on_each_node=False,
        )
        ds.trainer_config_process(args)
        model = SimpleNamespace(config=SimpleNamespace(hidden_size=64))
        ds.trainer_config_finalize(args, model, num_training_steps=10)
        assert "auto" not in json.dumps(ds.config)
        assert ds.config["train_batch_size"] == 8
    finally:
        unset_hf_deepspeed_config()


# -- 2 ranks: ZeRO-3 students and the pool (torchrun) ----------------------------------------------------------
@pytest.fixture(scope="module")
def worker(tmp_path_factory, student_paths):
    out = tmp_path_factory.mktemp("ds_worker")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _run(cmd + [str(ROOT / "tests" / "distributed_worker.py"), str(out), str(CACHE)], out / "log.txt")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.distributed
def test_zero3_rank_holds_half_of_every_parameter_and_gathering_restores_it(worker):
    for facts in worker:
        sharding = facts["sharding"]
        for p in sharding["params"]:
            assert p["local"] == math.ceil(p["numel"] / 2), p  # DeepSpeed pads the last partition
            assert p["data"] == 0, f"{p['name']} is not held whole between forward passes"
        whole = sum(p["numel"] for p in sharding["params"])
        local = sum(p["local"] for p in sharding["params"])
        assert 0.5 <= local / whole < 0.52
        assert sharding["resident_bytes"] == local * 4  # float32 partitions only
        assert sharding["gathered_equal"], "gathered tensors equal the plainly loaded checkpoint"


@pytest.mark.distributed
def test_scoring_a_zero3_student_gathered_once_equals_layer_by_layer(worker):
    """students[].gather_for_generation: the whole student gathered once per scoring call (engine hooks lifted)
    answers as the layer-by-layer path does, before an edit and on an adapted student."""
    for facts in worker:
        g = facts["gather_for_generation"]
        assert g["same_answers"] and g["logprob_diff"] < 1e-5, g
        assert g["after_edit"]["error"] is None and g["after_edit"]["adapted_logprob"] is not None, g


@pytest.mark.distributed
def test_every_rank_learns_which_ranks_cannot_see_a_checkpoint(worker):
    """Per-rank disks (no shared file system): rank 1's copy of the run lacks the checkpoint rank 0 wrote."""
    assert [facts["missing_on"] for facts in worker] == [[1], [1]]


def test_resume_refuses_when_a_rank_cannot_see_the_checkpoint(tmp_path, monkeypatch):
    """A resumed run loads ``teacher/round_k`` on every rank: a rank that cannot see it stops every rank with
    the fix named, before any rank loads anything (rank 1's missing view stands in for a second node)."""
    from core.config import load_config
    from orchestrator import runner as runner_module
    from orchestrator.rundir import RunDirError
    from orchestrator.runner import Runner

    cfg = load_config(CONFIGS / "smoke.yaml", [f"run.cache_dir={CACHE}", f"run.output_dir={tmp_path}"])
    cfg.algorithm.rounds = 2
    done = Runner.new(cfg)
    done.run()
    (done.rundir.path / "metrics.jsonl").write_text(
        "".join(done.rundir.path.joinpath("metrics.jsonl").read_text().splitlines(True)[:1])
    )  # as if killed after round 0: the resume loads teacher/round_1
    monkeypatch.setattr(runner_module, "ranks_missing", lambda path: [1])
    with pytest.raises(
        RunDirError, match=r"rank\(s\) \[1\] cannot see .*round_1.*file system every node shares"
    ):
        Runner.resume(done.rundir.path).run()


@pytest.mark.distributed
@pytest.mark.parametrize("variant", ["lora", "full", "zero2", "offload"])
def test_edit_trains_through_the_engine_and_the_base_comes_back_bit_exact(worker, variant):
    """ZeRO-3 with a LoRA adapter (the batched path's one adapter on the student's engine) and with full
    fine-tuning (a per-edit engine); ZeRO-2 and ZeRO-3 + CPU offload with LoRA."""
    for facts in worker:
        f = facts[variant]
        assert f["error"] is None and math.isfinite(f["train_loss"])
        assert f["adapted_logprob"] > f["baseline_logprob"], "training on the answers raised their log-prob"
        assert f["restored"], "every gathered parameter equals its value before the edit"
        assert f["hooks_unchanged"], "the engine's hooks left the model"
        if variant in ("zero2", "offload"):  # the same LoRA edit as ZeRO-3's: the same numbers
            assert abs(f["adapted_logprob"] - facts["lora"]["adapted_logprob"]) <= TOL
    assert worker[0][variant] == worker[1][variant], "both ranks computed the same outcome"


@pytest.mark.distributed
def test_full_fine_tuning_keeps_one_engine_reset_after_each_edit(worker):
    """A ZeRO-3 full-fine-tuning student's edits build no engine (its one engine, with its optimizer, was
    built at load): after an edit the partitions, the optimizer's master copy and its state are reset, so the
    same edit again gives exactly the same outcome."""
    for facts in worker:
        assert facts["full_engines_built"] == 0
        assert facts["full_again"] == facts["full"]


@pytest.mark.distributed
def test_a_diverging_edit_fails_alike_on_every_rank(worker):
    for facts in worker:
        f = facts["diverged"]
        assert f["adapted_logprob"] is None and "non-finite" in f["error"]
        assert f["restored"] and f["hooks_unchanged"]


@pytest.mark.distributed
def test_uneven_edits_do_not_deadlock_and_match_one_process(worker):
    """3 edits over 2 ranks: the unsharded student evaluates 1 edit on one rank and 2 on the other; the
    ZeRO-3 student evaluates all 3 on both. Every rank gets every result, in order, equal to one process."""
    r0, r1 = (f["pool"] for f in worker)
    assert sorted([r0["local_edits"], r1["local_edits"]]) == [1, 2]
    for pool in (r0, r1):
        assert pool["keys"] == pool["on_result"] and len(pool["keys"]) == 3
        assert pool["same_on_all_ranks"]
        assert [d["sharding"] for d in pool["describe"]] == ["zero3", "none"]
    ref = worker[0]["reference"]
    for got, want in zip(r0["results"], ref):
        for name in ("llama-t", "gpt2-t"):
            g, w = got[name], want[name]
            assert g["error"] == w["error"] and g["adapted_em"] == w["adapted_em"]
            assert g["baseline_logprob"] == w["baseline_logprob"]
            for key in ("adapted_logprob", "train_loss"):
                if w[key] is None:
                    assert g[key] is None
                else:
                    assert abs(g[key] - w[key]) <= TOL, (name, key, g[key], w[key])
    assert "no usable text" in r0["results"][1]["llama-t"]["error"]


@pytest.mark.distributed
def test_a_zero3_lora_student_keeps_one_engine_and_batches_its_edits(worker):
    """Issue 14 item 1: the pool's edits build no DeepSpeed engine (the student's one engine was built when it
    was loaded); its two usable edits train together through the batched path, data-parallel over the ranks;
    the base is bit-exact and carries the same hooks afterwards; every rank holds the same outcomes. Its head
    carries ZeRO-3's hooks, so its training steps compute logits at label positions through the forward's
    logits_to_keep mask (student.head), matching one process within 1e-5 (the tests above)."""
    for facts in worker:
        assert facts["head_path"] == "keep"
        f = facts["one_engine"]
        assert f["engines_built"] == 0, f
        assert f["sharded_batches"] == [2], f
        assert f["restored"] and f["hooks_unchanged"], f
    assert worker[0]["pool"]["results"] == worker[1]["pool"]["results"]


@pytest.mark.distributed
def test_the_teacher_samples_on_every_rank_as_one_process_would(worker):
    """Issue 14 item 3: each rank samples its share of the batches (rank 0 one, rank 1 two), every rank gets
    all the edits in context order, equal to one process sampling the same batches from the same seeds."""
    r0, r1 = (f["sampling"] for f in worker)
    assert r0["keys"] == r1["keys"] and r0["texts"] == r1["texts"]
    assert len(r0["texts"]) == 3 * 2 and len({k.split("/")[1] for k in r0["keys"]}) == 3
    assert r0["texts"] == r0["one_process"]
    assert len(set(r0["texts"])) > 1


def test_the_vllm_backend_samples_on_every_rank_as_one_process_would(worker, smoke_cfg, task, stand_in_vllm):
    """teacher.generation.backend=vllm under the launcher (TRL's VLLMGeneration, the tests' stand-in engine):
    each rank samples its share of the contexts (2 and 1, the short share padded to 2 prompts per call), every
    rank gets all the edits in context order, and they equal one process's: each edit's seed depends on its
    sample index only, never on the world size."""
    from orchestrator.models import build_teacher

    r0, r1 = (f["vllm_sampling"] for f in worker)
    assert r0["keys"] == r1["keys"] and r0["texts"] == r1["texts"]
    assert (r0["engine_seed"], r1["engine_seed"]) == (0, 1)  # TRL's colocate seeding: the rank
    g = smoke_cfg.teacher.generation
    assert r0["requests"] == r1["requests"] == 2 * g.num_edits  # one call per sample index, 2 prompts each
    cfg = copy.deepcopy(smoke_cfg)
    cfg.teacher.generation.backend = "vllm"
    teacher, _ = build_teacher(cfg, task, torch.device("cpu"))
    one = teacher.propose(task.train_contexts()[:3], 0, seed=5)
    assert [e.key for e in one] == r0["keys"] and [e.text for e in one] == r0["texts"]
    assert len(set(r0["texts"])) > 1


# -- 2 ranks: the CLI under the deepspeed launcher -------------------------------------------------------------
RUN_OVERRIDES = [
    f"run.cache_dir={CACHE}",
    "run.progress=false",
    "run.dist_timeout_minutes=7",
    "task.num_train_contexts=3",
    "task.num_heldout_contexts=1",
    "teacher.generation.num_edits=1",  # 3 and 1 edits per phase: uneven over 2 ranks
    "students.0.sharding=zero3",
    "algorithm.threshold=-1.0",  # keep every edit, so the teacher always trains (under ZeRO-3)
    f"teacher.train.deepspeed={CONFIGS / 'deepspeed' / 'zero3.json'}",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, student_paths):
    out = tmp_path_factory.mktemp("ds_runs")
    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2"]
    launcher += [
        "--master_port",
        str(_free_port()),
        "--module",
        "orchestrator",
        "run",
        str(CONFIGS / "smoke.yaml"),
    ]
    _run(launcher + RUN_OVERRIDES + [f"run.output_dir={out}", "run.name=two"], out / "two.log")
    one = [sys.executable, "-m", "orchestrator", "run", str(CONFIGS / "smoke.yaml")]
    _run(
        one + RUN_OVERRIDES + [f"run.output_dir={out}", "run.name=one", "algorithm.rounds=0"], out / "one.log"
    )
    return out


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.distributed
def test_two_rank_run_writes_once_from_rank_0(runs):
    run = runs / "two"
    log = (runs / "two.log").read_text()
    assert "ranks: 2" in log and log.count("| round |") == 1, "only rank 0 prints"
    assert "collectives time out after 7 min" in log, "run.dist_timeout_minutes starts the process group"
    assert [r["round"] for r in _records(run / "metrics.jsonl")] == [0, 1]
    for k in (0, 1):
        records = _records(run / "edits" / f"round_{k}.jsonl")
        keys = {(r["edit"]["context_id"], r["edit"]["sample_index"], r["heldout"]) for r in records}
        assert len(records) == len(keys) == 4, "each edit recorded once"
    assert "[rank 1]" not in (run / "run.log").read_text(), "rank 0 alone logs to the file"
    students = json.loads((run / "summary.json").read_text())["students"]
    assert [s["sharding"] for s in students] == ["zero3", "none"]
    plain = json.loads((runs / "one" / "summary.json").read_text())["students"]
    assert [s["num_parameters"] for s in students] == [s["num_parameters"] for s in plain], (
        "a ZeRO-3 student counts the whole model, not its rank's partition"
    )


@pytest.mark.distributed
def test_teacher_trained_under_zero3_is_saved_whole(runs, smoke_cfg, task):
    from safetensors.torch import load_file

    from orchestrator.models import tiny_dir

    saved = load_file(runs / "two" / "teacher" / "round_1" / "model.safetensors")
    initial = load_file(tiny_dir(smoke_cfg.teacher.model.tiny, task, CACHE) / "model.safetensors")
    assert saved.keys() == initial.keys()
    assert all(saved[k].shape == initial[k].shape for k in saved), "gathered whole, not one rank's shard"
    round0 = _records(runs / "two" / "metrics.jsonl")[0]
    assert round0["kept"] == 3 and math.isfinite(round0["teacher_loss"])
    assert any(not torch.equal(saved[k], initial[k]) for k in saved), "the teacher was updated"


@pytest.mark.distributed
def test_two_rank_rewards_equal_one_process(runs):
    def by_edit(run: str) -> dict:
        return {
            (r["edit"]["context_id"], r["heldout"]): r
            for r in _records(runs / run / "edits" / "round_0.jsonl")
        }

    two, one = by_edit("two"), by_edit("one")
    assert two.keys() == one.keys() and len(two) == 4
    for key, r2 in two.items():
        r1 = one[key]
        assert r2["edit"]["text"] == r1["edit"]["text"], "rank 0 sampled the same edits"
        assert abs(r2["reward"] - r1["reward"]) <= TOL, key
        for name in ("llama-t", "gpt2-t"):
            a2, a1 = r2["per_student"][name], r1["per_student"][name]
            assert a2["baseline"] == a1["baseline"] and a2["error"] == a1["error"]
            if a1["adapted"] is None:
                assert a2["adapted"] is None
                continue
            assert a2["adapted"]["em"] == a1["adapted"]["em"]
            assert abs(a2["adapted"]["logprob"] - a1["adapted"]["logprob"]) <= TOL
            assert abs(a2["train_loss"] - a1["train_loss"]) <= TOL


@pytest.mark.distributed
def test_two_rank_run_resumes_where_it_was_killed(tmp_path):
    """A 2-rank run cut in round 1 after 3 records resumes under 2 ranks: rank 0 reads what was done and
    broadcasts it, every rank reloads the round-1 teacher, and the records equal an uninterrupted run's."""
    import shutil

    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port"]
    args = ["--module", "orchestrator", "run"]
    first = [str(CONFIGS / "smoke.yaml"), f"run.output_dir={tmp_path}", "run.name=r", *RUN_OVERRIDES]
    _run(launcher + [str(_free_port())] + args + first, tmp_path / "first.log")
    run, whole = tmp_path / "r", tmp_path / "whole"
    shutil.copytree(run, whole)
    for name, keep in (("metrics.jsonl", 1), ("edits/round_1.jsonl", 3)):
        lines = (run / name).read_text().splitlines(keepends=True)
        (run / name).write_text("".join(lines[:keep]))
    _run(launcher + [str(_free_port())] + args + ["--resume", str(run)], tmp_path / "resume.log")
    assert "1 completed round(s)" in (run / "run.log").read_text()
    assert (run / "metrics.jsonl").read_text().count("\n") == 2

    def rewards(path: Path) -> dict:
        return {
            (r["edit"]["context_id"], r["heldout"]): r["reward"]
            for r in _records(path / "edits/round_1.jsonl")
        }

    assert rewards(run) == rewards(whole)


@pytest.mark.distributed
def test_grpo_under_two_ranks_scores_every_ranks_completions(tmp_path, smoke_cfg, task):
    """GRPO's reward function runs on each rank with that rank's completions: the ranks' edits are pooled,
    scored once (ZeRO-3 student and unsharded one), recorded once by rank 0, and the teacher trains under
    ZeRO-3 and is saved whole. Every edit of one passage is unusable (a plugin task), and each step holds that
    passage on one rank only: the ranks adapt different numbers of edits, and the run still finishes."""
    from safetensors.torch import load_file

    from orchestrator.models import tiny_dir

    grpo = [
        f"run.cache_dir={CACHE}",
        "run.progress=false",
        "algorithm.name=grpo",
        "algorithm.rounds=1",
        "algorithm.grpo.steps_per_round=2",
        "algorithm.grpo.prompts_per_step=2",
        "algorithm.grpo.num_generations=2",
        "algorithm.grpo.learning_rate=1e-3",
        "algorithm.grpo.max_edit_tokens=24",
        "teacher.generation.max_new_tokens=24",
        "task.num_train_contexts=4",  # 2 ranks x 2 prompts per step
        "task.num_heldout_contexts=1",
        "reward.name=logprob_gain",
        "students.0.sharding=zero3",
        f"teacher.train.deepspeed={CONFIGS / 'deepspeed' / 'zero3.json'}",
        "task.name=tests.uneven_task:FirstPassageUnusable",
    ]
    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2"]
    launcher += [
        "--master_port",
        str(_free_port()),
        "--module",
        "orchestrator",
        "run",
        str(CONFIGS / "smoke.yaml"),
    ]
    _run(launcher + grpo + [f"run.output_dir={tmp_path}", "run.name=g"], tmp_path / "g.log")
    run = tmp_path / "g"
    train = [r for r in _records(run / "edits" / "round_0.jsonl") if not r["heldout"]]
    keys = {(r["edit"]["context_id"], r["edit"]["sample_index"]) for r in train}
    assert len(train) == len(keys) == 2 * 2 * 2 * 2, "steps x ranks x prompts x generations, each once"
    assert {r["edit"]["sample_index"] % 2 for r in train} == {0, 1}, "both ranks' completions are recorded"
    unusable = {r["edit"]["context_id"] for r in train if "no usable text" in str(r["per_student"])}
    assert len(unusable) == 1, "one passage's edits were unusable for the students"
    usable = [r for r in train if r["edit"]["context_id"] not in unusable]
    assert usable and all(o["adapted"] is not None for r in usable for o in r["per_student"].values())
    assert _records(run / "metrics.jsonl")[0]["kept"] == len(train)
    saved = load_file(run / "teacher" / "round_1" / "model.safetensors")
    initial = load_file(tiny_dir(smoke_cfg.teacher.model.tiny, task, CACHE) / "model.safetensors")
    assert all(saved[k].shape == initial[k].shape for k in initial)
    assert any(not torch.equal(saved[k], initial[k]) for k in saved), "GRPO updated the teacher"


@pytest.mark.distributed
def test_two_rank_run_stops_on_sigterm_and_resumes(tmp_path):
    """Preemption under torchrun: SIGTERM to the launcher reaches both ranks; rank 0 abandons the record in
    flight and writes interrupted.json, the launcher exits non-zero within its grace period, no lock is left,
    and a 2-rank --resume completes the run with no record lost or repeated."""
    import signal
    import time

    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run = tmp_path / "r"
    args = [
        "-m",
        "orchestrator",
        "run",
        str(CONFIGS / "smoke.yaml"),
        f"run.output_dir={tmp_path}",
        "run.name=r",
    ]
    env = {**_env(), "TEACHEDIT_PAUSE": "adapt:0.2"}
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(launcher + args + RUN_OVERRIDES, cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            deadline = time.time() + LAUNCH_TIMEOUT
            edits = run / "edits" / "round_0.jsonl"
            while proc.poll() is None and time.time() < deadline:
                if edits.exists() and len(edits.read_text().splitlines()) >= 1:
                    break
                time.sleep(0.1)
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            sent = time.time()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
            took = time.time() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode != 0
    assert took < 60, f"stopping took {took:.0f} s"
    marker = json.loads((run / "interrupted.json").read_text())
    assert marker["signal"] == "SIGTERM" and marker["resume"] == f"teachedit run --resume {run}"
    assert not (run / ".lock").exists()
    kept = _records(run / "edits/round_0.jsonl")
    _run(launcher + ["-m", "orchestrator", "run", "--resume", str(run)], tmp_path / "resume.log")
    done = _records(run / "edits/round_0.jsonl")
    keys = [(r["edit"]["context_id"], r["edit"]["sample_index"], r["heldout"]) for r in done]
    assert len(keys) == len(set(keys)) == 4, "every edit of round 0 once (3 train + 1 held-out)"
    assert done[: len(kept)] == kept, "records written before the signal are kept as they were"
    assert (run / "metrics.jsonl").read_text().count("\n") == 2
    assert not (run / "interrupted.json").exists()
