"""The student pool under a launcher: ZeRO-sharded students and edits split across ranks.

Per student, ``sharding`` picks the placement:

- ``none``: every rank holds the whole student. The edits are split across the ranks; each rank evaluates
  its share through :class:`student.pool.StudentPool` (so the pool's own inner loop runs unchanged).
- ``zero2`` / ``zero3``: every rank takes part in every edit. Under ZeRO-3 the parameters are partitioned
  when the student is loaded (each rank holds ~1/world of every tensor) and stay so, behind one DeepSpeed
  engine built then and kept for the run. LoRA edits go through the batched path on it, several at a time,
  each step's rows split across the ranks and the adapters' gradients summed; scoring splits the adapters
  over the ranks, the student gathered once. Full fine-tuning trains through the same kind of kept engine,
  with an optimizer, reset after each edit.
  Either way the base is bit-exact afterwards (tested); :class:`ShardedStudent` says how.

:class:`DistributedPool` has the interface of :class:`~student.pool.StudentPool` (``evaluate``,
``baselines``, ``describe``, ``names``). Results of all ranks are gathered before the orchestrator's
callback (rewards, persistence) runs, on every rank. Every rank must call the pool with the same arguments.
"""

from __future__ import annotations

import copy
import gc
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from tqdm.auto import tqdm

from core.config import AdaptConfig, StudentConfig
from core.distributed import all_ranks, current, share
from core.records import Context, Edit, EditResult, StudentOutcome, StudentScore
from core.task import TrainingItem
from student.batched import MultiLoRA, lora_targets, train_adapters
from student.lifecycle import EditError, edit_seed, lora_config, non_finite_loss, set_train_mode
from student.pool import StudentPool, unadapted_result
from student.sequences import IGNORE, Batch, batch_schedule, collate
from student.student import Student

log = logging.getLogger(__name__)

STAGES = {"zero2": 2, "zero3": 3}


def student_ds_config(sc: StudentConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config of a sharded student's engines (no "auto" values: there is no HF Trainer here)."""
    stage = STAGES[sc.sharding]
    zero: dict[str, Any] = {"stage": stage}
    if stage == 3:
        # Partition every tensor. DeepSpeed's default keeps tensors under 1e5 elements whole on every rank,
        # which for a small student is all of them.
        zero["stage3_param_persistence_threshold"] = 0
        if sc.zero3_max_live_parameters is not None:
            # Release each layer after its use: no caching for reuse, no prefetch (they keep more gathered).
            zero["stage3_max_live_parameters"] = sc.zero3_max_live_parameters
            zero["stage3_max_reuse_distance"] = 0
            zero["stage3_prefetch_bucket_size"] = 0
    if sc.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu"}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu"}
    cfg: dict[str, Any] = {
        # The loop feeds its own batches; DeepSpeed only checks micro x accumulation x world = batch.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "gradient_clipping": sc.adapt.max_grad_norm,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        # A torch AdamW also with offload: DeepSpeedCPUAdam would compile an op for adapters of a few MB.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if sc.model.dtype == "bfloat16":
        cfg["bf16"] = {"enabled": True}
    elif sc.model.dtype == "float16":
        cfg["fp16"] = {"enabled": True}
    return cfg


@contextmanager
def hf_zero3(config: dict[str, Any]) -> Iterator[None]:
    """While inside, transformers sees ZeRO-3: ``from_pretrained`` partitions as it loads (``zero.Init``).
    On exit the process-wide config is what it was before: none (so other models load whole), or the one a
    trainer installed (GRPO's ``GRPOConfig`` with a ZeRO-3 teacher), which must outlive a student's edit."""
    from transformers.integrations import deepspeed as hf_ds

    before = (
        hf_ds._hf_deepspeed_config_weak_ref() if hf_ds._hf_deepspeed_config_weak_ref is not None else None
    )
    keep = hf_ds.HfDeepSpeedConfig(copy.deepcopy(config))  # transformers holds only a weak reference
    try:
        yield
    finally:
        if before is not None:
            hf_ds.set_hf_deepspeed_config(before)
        else:
            hf_ds.unset_hf_deepspeed_config()
        del keep


@contextmanager
def lifted_hooks(engine: Any) -> Iterator[None]:
    """Inside, a ZeRO-3 engine's module hooks are off (TRL's ``remove_hooks`` / ``add_hooks``, as its
    ``unwrap_model_for_generation``), and so is the start-of-forward hook that TRL leaves on: while the engine
    records its parameter trace, that hook compares the trace across the ranks (a collective) at every forward,
    so a rank scoring alone would wait for the others."""
    from trl.models.utils import add_hooks, remove_hooks

    offload = getattr(engine.optimizer, "parameter_offload", engine.optimizer)
    start = offload.fwd_pre_hook
    fn = offload.module._forward_pre_hooks[start.id]
    start.remove()
    remove_hooks(engine)
    try:
        yield
    finally:
        add_hooks(engine)  # also invalidates the trace, recorded afresh at the next forward
        offload.fwd_pre_hook = offload.module.register_forward_pre_hook(fn, prepend=True)


def rank_rows(batch: Batch, rank: int, world_size: int) -> Batch:
    """This rank's rows of a batch (every world_size-th). A rank left without a row gets a copy of row 0 with
    every label ignored: it still runs forward and backward (ZeRO's collectives need every rank) but adds
    nothing to the loss or the gradient."""
    rows = list(range(rank, batch.input_ids.shape[0], world_size))
    if rows:
        return Batch(batch.input_ids[rows], batch.attention_mask[rows], batch.labels[rows])
    return Batch(batch.input_ids[:1], batch.attention_mask[:1], torch.full_like(batch.labels[:1], IGNORE))


def _local_tensor(p: torch.Tensor) -> torch.Tensor:
    """The storage this rank owns of a parameter: its ZeRO-3 partition, or the whole tensor."""
    part = getattr(p, "ds_tensor", None)
    return part if part is not None else p.data


class ShardedStudent(Student):
    """A student whose inner loop (and, under ZeRO-3, whose parameters) DeepSpeed shards across the ranks.

    A :class:`Student` whose scoring and adaptation are placed over the ranks; everything else,
    :meth:`Student.evaluate_edits` included (edit cleaning, cutting, batching, ``eval_times``, recorded
    failures), is inherited, so a sharded and an unsharded student treat an edit alike. Every method is
    collective: all ranks call it with the same arguments in the same order.

    LoRA (the default) keeps **one engine for the whole run**: under ZeRO-3, a DeepSpeed engine without an
    optimizer, built when the student is loaded, whose hooks gather each layer for forward and backward. Edits
    never rebuild it: they go through the batched path (:mod:`student.batched`), whose adapters hook onto the
    frozen base from outside it (the base is never modified, so it is bit-exact once the hooks are removed)
    and train data-parallel (each rank a share of every step's rows, gradients summed: ``adapter_ranks``). The
    adapters and their AdamW states are replicated on every rank, as DDP keeps a model: for rank-r matrices
    that is a few MB, where ZeRO would partition them. ZeRO-2 LoRA needs no engine at all (the base is whole
    on every rank and frozen; ``offload`` has nothing to move then). Scoring gathers the student once per call (``gather_for_generation``) and
    splits the adapters (and the baselines' contexts) over the ranks.

    Full fine-tuning also keeps one engine, with its optimizer over every parameter (ZeRO-2 / -3 partition
    its fp32 master copy and AdamW moments; they stay allocated for the run, where an engine per edit freed
    them between edits); each edit sets the learning rate and clipping, trains, and restores the rank's saved
    partitions, refreshes the master copy from them and drops the optimizer state."""

    def __init__(self, cfg: StudentConfig, model: Any, tokenizer: Any, task: Any, ds_config: dict[str, Any]):
        super().__init__(cfg, model, tokenizer, task)
        self.ds_config = ds_config
        self.stage = int(ds_config["zero_optimization"]["stage"])
        self._engine_alive: Any = None  # the engine whose hooks are on the model (ZeRO-3), if any
        self._gathered = False  # inside whole(): every parameter gathered, the engine's hooks lifted
        if cfg.adapt.method == "lora":
            try:  # peft wraps and unwraps the model once to find its LoRA targets, before any engine hook
                lora_targets(self.model, lora_config(cfg.adapt, self.model_type))
            except ValueError as exc:
                raise ValueError(
                    f"student {cfg.name!r} (sharding: {cfg.sharding}): {exc}. A sharded LoRA student adapts "
                    "through the batched path on its one engine, which routes adapters on Linear layers only"
                ) from exc
            if self.stage == 3:
                self._engine_alive = self._build_engine(self.model)
        else:  # full fine-tuning: one engine with its optimizer over every parameter, reset for each edit
            for p in self.model.parameters():
                p.requires_grad_(True)
            with self._zero3():
                self._engine_alive = self._build_engine(self.model, list(self.model.parameters()))
            # fp16's dynamic loss scale adapts to each edit's overflows: every edit starts from the initial one
            self._loss_scaler = copy.deepcopy(self._engine_alive.optimizer.loss_scaler)

    @property
    def adapter_ranks(self) -> tuple[int, int] | None:
        env = current()
        return (env.rank, env.world_size) if env.world_size > 1 else None

    @property
    def gathers_for_scoring(self) -> bool:
        """ZeRO-3 scoring gathers the whole student once per call (``gather_for_generation``), unless the
        student may never be whole on a rank (``zero3_max_live_parameters``)."""
        return (
            self.stage == 3 and self.cfg.gather_for_generation and self.cfg.zero3_max_live_parameters is None
        )

    @property
    def splits_scoring(self) -> bool:
        """Scoring is local to a rank (the model whole there: ZeRO-2, or gathered), so ranks can score
        different adapters and contexts; layer-by-layer ZeRO-3 scoring is collective, every rank on every pass."""
        return self.stage == 2 or self.gathers_for_scoring

    @contextmanager
    def whole(self) -> Iterator[None]:
        """Inside, under ZeRO-3 with :attr:`gathers_for_scoring`, every parameter is gathered (once) and the
        engine's per-layer hooks are lifted (TRL's ``remove_hooks`` / ``add_hooks``, as its
        ``unwrap_model_for_generation`` does), so no decoding step gathers a layer. Otherwise nothing."""
        if not self.gathers_for_scoring or self._gathered:
            yield
            return
        import deepspeed

        hooks = lifted_hooks(self._engine_alive) if self._engine_alive is not None else nullcontext()
        with hooks, deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None):
            self._gathered = True
            try:
                yield
            finally:
                self._gathered = False

    def score(self, context: Context) -> StudentScore:
        """As :meth:`Student.score`, the student gathered once for the call (:meth:`whole`)."""
        with self.whole():
            return super().score(context)

    def score_adapters(self, ml: Any, contexts: list[Context], which: list[int]) -> dict[int, StudentScore]:
        """As :meth:`Student.score_adapters`; where scoring is local (:attr:`splits_scoring`) each rank scores
        its share of the adapters, the student gathered once, and the scores are gathered to every rank."""
        if not self.splits_scoring:
            return super().score_adapters(ml, contexts, which)
        env = current()
        lo, hi = share(len(which), env.rank, env.world_size)
        with self.whole():
            parts = all_ranks(lambda: super(ShardedStudent, self).score_adapters(ml, contexts, which[lo:hi]))
        out: dict[int, StudentScore] = {}
        for part in parts:
            out.update(part or {})
        return out

    @property
    def num_parameters(self) -> int:
        """Elements of the whole model (a ZeRO-3 parameter's ``ds_numel``, not its local partition)."""
        return sum(int(getattr(p, "ds_numel", p.numel())) for p in self.model.parameters())

    def resident_parameter_bytes(self) -> int:
        """Bytes of parameter storage on this rank: its ZeRO-3 partitions plus any whole (gathered) tensor."""
        total = 0
        for p in self.model.parameters():
            part = getattr(p, "ds_tensor", None)
            if part is not None:
                total += part.numel() * part.element_size()
            total += p.data.numel() * p.data.element_size()
        return total

    def full_state(self) -> dict[str, torch.Tensor]:
        """Every parameter whole, gathered from the ranks' partitions, on every rank (collective)."""
        import deepspeed

        out = {}
        for name, p in self.model.named_parameters():
            with deepspeed.zero.GatheredParameters([p]):
                out[name] = p.detach().clone()
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model_type": self.model_type,
            "num_parameters": self.num_parameters,
            "sharding": self.cfg.sharding,
            "offload": self.cfg.offload,
        }

    # -- engines -------------------------------------------------------------------------------------------
    def _zero3(self) -> Any:
        return hf_zero3(self.ds_config) if self.stage == 3 else nullcontext()

    def _build_engine(self, model: Any, params: list[torch.Tensor] | None = None) -> Any:
        """The student's one DeepSpeed engine over ``model``: an AdamW over ``params`` (full fine-tuning; each
        edit sets its rate and clipping), or none (its ZeRO-3 hooks only)."""
        import deepspeed

        a = self.cfg.adapt
        opt = torch.optim.AdamW(params, lr=a.learning_rate, weight_decay=0.0) if params else None
        # ZeRO-3's setup calls gc.collect(), which would scan every long-lived object of the process (~1 s
        # a call on CPU): frozen objects are skipped, and unfreezing puts them back as they were.
        gc.freeze()
        try:
            engine, *_ = deepspeed.initialize(
                model=model, optimizer=opt, config=copy.deepcopy(self.ds_config)
            )
        finally:
            gc.unfreeze()
        return engine

    # -- scoring -------------------------------------------------------------------------------------------
    def baselines(self, contexts: Iterable[Context]) -> None:
        """Score the unadapted student on the contexts not yet scored (cached). Where scoring is local
        (:attr:`splits_scoring`) the ranks share the contexts, the student gathered once; otherwise every rank
        scores every context through the engine's hooks."""
        missing = list({c.id: c for c in contexts if c.id not in self._baselines}.values())
        if not missing:
            return
        if self.splits_scoring:
            env = current()
            lo, hi = share(len(missing), env.rank, env.world_size)
            with self.whole():
                parts = all_ranks(lambda: {c.id: Student.score(self, c) for c in missing[lo:hi]})
            for part in parts:
                self._baselines.update(part or {})
            return
        with self._zero3():  # layer by layer through the engine's hooks, every rank on every context
            for c in missing:
                self._baselines[c.id] = self.score(c)

    def baseline(self, context: Context) -> StudentScore:
        self.baselines([context])
        return self._baselines[context.id]

    # -- one edit ------------------------------------------------------------------------------------------
    @contextmanager
    def adapted(
        self, items: list[TrainingItem], seed: int, adapt: AdaptConfig | None = None
    ) -> Iterator[float]:
        """Inside: the student is adapted to ``items`` with ``adapt`` (default: its own settings; a task may
        set them per edit) and the last epoch's loss is bound; on exit the base is bit-exact. LoRA: one
        adapter of the batched path on the run's engine (removed on exit: the base was never modified). Full
        fine-tuning: the run's engine, its learning rate and clipping set for the edit; on exit the rank's saved
        partitions are copied back and the optimizer reset."""
        a = adapt or self.cfg.adapt
        if a.method == "lora":
            with MultiLoRA(self, [seed], a) as ml:
                ((loss, error),) = train_adapters(ml, [items])
                if error is not None:
                    raise EditError(error)
                assert loss is not None
                with ml.route([0], [1]):  # one adapter: any number of rows
                    yield loss
            return
        engine, base = self._engine_alive, self.model
        snapshot = [_local_tensor(p).detach().clone() for p in base.parameters()]
        optimizer = engine.optimizer  # DeepSpeed's ZeRO optimizer around a torch AdamW
        for group in optimizer.param_groups:
            group["lr"] = a.learning_rate
        optimizer.clip_grad = engine._config.gradient_clipping = a.max_grad_norm
        try:
            with self._zero3():
                torch.manual_seed(seed)
                yield self._train(engine, base, items, seed, a)
        finally:
            self._restore(base, snapshot)

    def _restore(self, base: Any, snapshot: list[torch.Tensor]) -> None:
        """Gathered layers released, the rank's saved partitions copied back, the optimizer's fp32 master copy
        refreshed from them and its AdamW state dropped (the next edit starts from the base with a fresh
        optimizer and the initial loss scale, as a new engine would), gradients cleared."""
        optimizer = self._engine_alive.optimizer
        if self.stage == 3:  # layers a failed step left gathered hold stale weights: release them first
            optimizer.empty_partition_cache()
        with torch.no_grad():
            for p, saved in zip(base.parameters(), snapshot):
                _local_tensor(p).copy_(saved)
        optimizer.refresh_fp32_params()
        optimizer.optimizer.state.clear()
        optimizer.loss_scaler, optimizer.overflow = copy.deepcopy(self._loss_scaler), False
        optimizer.zero_grad()
        base.eval()

    def _train(self, engine: Any, model: Any, items: list[TrainingItem], seed: int, a: AdaptConfig) -> float:
        """The inner loop of :meth:`Student.train_items` (same schedule, train mode, optimizer, clipping),
        stepped through the engine: the optimizer step and gradient reduction belong to DeepSpeed. Returns the
        mean loss of the last epoch."""
        set_train_mode(model, a.method)
        last = float("nan")
        for epoch in batch_schedule(len(items), a.epochs, a.batch_size, seed):
            losses = [self._step(engine, [items[j] for j in idx], a) for idx in epoch]
            last = sum(losses) / len(losses)
        model.eval()
        return last

    def _step(self, engine: Any, rows: list[TrainingItem], a: AdaptConfig) -> float:
        """One optimizer step on one batch, split across the ranks. Each rank's loss is its summed token
        losses over the whole batch's target count, times the world size: DeepSpeed averages the ranks'
        gradients, so the step equals one process's step on the whole batch (mean token loss)."""
        import torch.distributed as dist

        env = current()
        whole = collate(self.tok, rows, a.max_length, a.loss_on)
        n_targets = (whole.labels[:, 1:] != IGNORE).sum()
        mine = rank_rows(whole, env.rank, env.world_size).to(engine.device)
        out = engine(
            input_ids=mine.input_ids,
            attention_mask=mine.attention_mask,
            labels=mine.labels,
            num_items_in_batch=n_targets.to(engine.device),
        )
        mean_loss = out.loss.detach().clone()
        dist.all_reduce(mean_loss)  # every rank sees the batch's loss, so all decide alike below
        if not torch.isfinite(mean_loss):
            raise EditError(non_finite_loss(mean_loss.item()))
        engine.backward(out.loss * env.world_size)
        engine.step()
        return float(mean_loss)


class DistributedPool:
    """:class:`~student.pool.StudentPool`'s interface over the ranks. Unsharded students split the edits
    (``edits_per_rank`` per rank per step); sharded students evaluate every edit on all ranks together.
    After each step the ranks' outcomes are gathered and ``on_result`` runs on every rank for every edit of
    the step, in order. Every rank runs the same number of steps, however the edits divide, so a rank with
    fewer edits waits at the gather instead of leaving the others in a collective."""

    def __init__(self, students: list[Student | ShardedStudent], edits_per_rank: int | None = None):
        if not students:
            raise ValueError("the student pool is empty: configure at least one student")
        self.students = students
        self.sharded = [s for s in students if isinstance(s, ShardedStudent)]
        local = [s for s in students if not isinstance(s, ShardedStudent)]
        self.local = StudentPool(local) if local else None
        if edits_per_rank is None:  # per rank per step: one batch of the unsharded students' inner loop, and
            # enough edits per step for the sharded students' batches (they take every edit of the step)
            world = current().world_size
            edits_per_rank = max(
                max((s.edit_batch_size for s in local), default=1),
                max((-(-s.edit_batch_size // world) for s in self.sharded), default=1),
            )
        self.edits_per_rank = max(1, edits_per_rank)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.students]

    def describe(self) -> list[dict[str, Any]]:
        local = {d["name"]: d | {"sharding": "none"} for d in self.local.describe()} if self.local else {}
        world = current().world_size
        return [
            {**(s.describe() if isinstance(s, ShardedStudent) else local[s.name]), "world_size": world}
            for s in self.students
        ]

    def baselines(self, contexts: Iterable[Context], progress: bool = False) -> None:
        """Every rank scores its unsharded students on every context (each rank may get any edit); sharded
        students score together."""
        contexts = list(contexts)
        if self.local is not None:
            self.local.baselines(contexts, progress=progress and current().is_main)
        for s in self.sharded:
            s.baselines(contexts)

    def unadapted(self, edit: Edit, context: Context, reason: str) -> EditResult:
        """As :meth:`StudentPool.unadapted`: cached baselines, no student pass (the same on every rank)."""
        return unadapted_result(self.students, edit, context, reason)

    def evaluate(
        self,
        edits: list[Edit],
        contexts: dict[str, Context],
        run_seed: int,
        on_result: Callable[[EditResult], None] | None = None,
        progress: bool = False,
        desc: str = "adapting students",
    ) -> list[EditResult]:
        """As :meth:`StudentPool.evaluate`: one result per edit, in order, ``on_result`` called for each."""
        env = current()
        step = env.world_size * self.edits_per_rank
        results: list[EditResult] = []
        with tqdm(total=len(edits), desc=desc, disable=not (progress and env.is_main), unit="edit") as bar:
            for start in range(0, len(edits), step):
                chunk = edits[start : start + step]
                for result in self._evaluate_step(chunk, contexts, run_seed):
                    if on_result is not None:
                        on_result(result)
                    results.append(result)
                bar.update(len(chunk))
        return results

    def _evaluate_step(
        self, chunk: list[Edit], contexts: dict[str, Context], run_seed: int
    ) -> list[EditResult]:
        env = current()
        lo, hi = share(len(chunk), env.rank, env.world_size)

        def local_share() -> dict[str, dict[str, StudentOutcome]]:
            assert self.local is not None
            return {r.edit.key: r.per_student for r in self.local.evaluate(chunk[lo:hi], contexts, run_seed)}

        outcomes: dict[str, dict[str, StudentOutcome]] = {e.key: {} for e in chunk}
        if self.local is not None:
            for part in all_ranks(local_share):
                for key, per_student in (part or {}).items():
                    outcomes[key].update(per_student)
        texts, ctxs = [e.text for e in chunk], [contexts[e.context_id] for e in chunk]
        for s in self.sharded:  # every rank, every edit: LoRA edits batched up to adapt.edit_batch_size
            outs = s.evaluate_edits(texts, ctxs, [edit_seed(run_seed, e, s.name) for e in chunk])
            for e, o in zip(chunk, outs):
                outcomes[e.key][s.name] = o
        return [EditResult(edit=e, per_student={n: outcomes[e.key][n] for n in self.names}) for e in chunk]


def load_sharded_student(
    sc: StudentConfig, path: str, tokenizer: Any, task: Any, device: torch.device
) -> ShardedStudent:
    """Load a student for ``sc.sharding``. ZeRO-3 loads through ``zero.Init``: each rank keeps only its
    partition of every parameter. ZeRO-2 loads whole (it shards gradients and optimizer states)."""
    from core.models import load_causal_lm

    config = student_ds_config(sc, current().world_size)
    ctx = hf_zero3(config) if STAGES[sc.sharding] == 3 else nullcontext()
    with ctx:
        model = load_causal_lm(path, sc.model, device)
    return ShardedStudent(sc, model, tokenizer, task, config)
