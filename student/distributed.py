"""The student pool under a launcher: ZeRO-sharded students and edits split across ranks.

Per student, ``sharding`` picks the placement:

- ``none``: every rank holds the whole student. The edits are split across the ranks; each rank evaluates
  its share through :class:`student.pool.StudentPool` (so the pool's own inner loop runs unchanged).
- ``zero2`` / ``zero3``: every rank takes part in every edit through a DeepSpeed engine. Under ZeRO-3 the
  parameters are partitioned when the student is loaded (each rank holds ~1/world of every tensor) and stay
  so. Each edit's LoRA adapter (or full fine-tuning) trains through an engine built for that edit; the
  edit's batch is split across the ranks and the engine averages the gradients. After scoring, the engine
  is destroyed (its hooks removed) and the adapter unloaded: the base is bit-exact (tested).

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
from core.distributed import all_ranks, current
from core.records import Context, Edit, EditResult, StudentOutcome, StudentScore
from core.task import TrainingItem
from student.lifecycle import EditError, edit_seed, inject_lora, lora_config, non_finite_loss, set_train_mode
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

    A :class:`Student` whose :meth:`baseline` and :meth:`adapted` go through DeepSpeed engines; everything
    else, :meth:`Student.evaluate_edit` included (edit cleaning, cutting, recorded failures), is inherited, so
    a sharded and an unsharded student treat an edit alike. Every method is collective: all ranks call it with
    the same arguments in the same order."""

    edit_batch_size = 1  # one edit at a time through the engine (no multi-adapter batching here)

    def __init__(self, cfg: StudentConfig, model: Any, tokenizer: Any, task: Any, ds_config: dict[str, Any]):
        super().__init__(cfg, model, tokenizer, task)
        self.ds_config = ds_config
        self.stage = int(ds_config["zero_optimization"]["stage"])
        self._engine_alive: Any = None  # the engine of the edit being scored, inside adapted()

    @property
    def gathers_for_scoring(self) -> bool:
        """ZeRO-3 scoring gathers the whole student once per call (``gather_for_generation``), unless the
        student may never be whole on a rank (``zero3_max_live_parameters``)."""
        return (
            self.stage == 3 and self.cfg.gather_for_generation and self.cfg.zero3_max_live_parameters is None
        )

    def score(self, context: Context) -> StudentScore:
        """As :meth:`Student.score`. Under ZeRO-3 with :attr:`gathers_for_scoring`, the parameters are gathered
        once for the whole call and the engine's per-layer hooks are lifted meanwhile (TRL's ``remove_hooks`` /
        ``add_hooks``, as its ``unwrap_model_for_generation`` does), so no decoding step gathers a layer."""
        if not self.gathers_for_scoring:
            return super().score(context)
        import deepspeed
        from trl.models.utils import add_hooks, remove_hooks

        engine = self._engine_alive
        if engine is not None:
            remove_hooks(engine)
        try:
            with deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None):
                return super().score(context)
        finally:
            if engine is not None:
                add_hooks(engine)

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

    @contextmanager
    def _engine(
        self, model: Any, params: list[torch.Tensor] | None = None, adapt: AdaptConfig | None = None
    ) -> Iterator[Any]:
        """A DeepSpeed engine over ``model`` (an AdamW over ``params`` with ``adapt``'s rate and clipping, or
        none for scoring only), destroyed on exit: its ZeRO-3 hooks leave the modules and its optimizer
        buffers are dropped."""
        import deepspeed

        a = adapt or self.cfg.adapt
        config = copy.deepcopy(self.ds_config)
        config["gradient_clipping"] = a.max_grad_norm
        opt = torch.optim.AdamW(params, lr=a.learning_rate, weight_decay=0.0) if params else None
        # ZeRO-3's setup calls gc.collect(), which would scan every long-lived object of the process (~1 s
        # a call on CPU): frozen objects are skipped, and unfreezing puts them back as they were.
        gc.freeze()
        try:
            engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
        finally:
            gc.unfreeze()
        try:
            yield engine
        finally:
            engine.destroy()
            # destroy() (DeepSpeed 0.19.8) leaves the engine's two module-level forward hooks behind: they
            # would keep the dead engine alive and run its prologue on every later forward.
            for handle in (engine.module_forward_pre_hook, engine.module_forward_post_hook):
                if handle is not None:
                    handle.remove()

    # -- scoring -------------------------------------------------------------------------------------------
    def baselines(self, contexts: Iterable[Context]) -> None:
        """Score the unadapted student on the contexts not yet scored (cached). Under ZeRO-3 the forward
        passes run through a scoring-only engine, whose hooks gather each layer's parameters."""
        missing = [c for c in contexts if c.id not in self._baselines]
        if not missing:
            return
        # ZeRO-3: gathered once per call (score), or a scoring-only engine whose hooks gather layer by layer
        hooks = (
            self._engine(self.model) if self.stage == 3 and not self.gathers_for_scoring else nullcontext()
        )
        with self._zero3(), hooks:
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
        set them per edit) and ``self.model`` is the adapted model, its engine alive for scoring; on exit the
        engine is destroyed and the base restored bit-exactly (the adapter unloaded, or the rank's saved
        partitions copied back after full fine-tuning)."""
        a, base = adapt or self.cfg.adapt, self.model
        with self._zero3():
            torch.manual_seed(seed)
            snapshot: list[torch.Tensor] | None = None
            if a.method == "lora":
                model = inject_lora(base, lora_config(a, self.model_type))
            else:
                snapshot = [_local_tensor(p).detach().clone() for p in base.parameters()]
                for p in base.parameters():
                    p.requires_grad_(True)
                model = base
            try:
                params = [p for p in model.parameters() if p.requires_grad]
                with self._engine(model, params, a) as engine:
                    loss = self._train(engine, model, items, seed, a)
                    self.model, self._engine_alive = model, engine
                    try:
                        yield loss
                    finally:
                        self._engine_alive = None
            finally:
                self.model = self._restore(model, base, snapshot)

    def _restore(self, model: Any, base: Any, snapshot: list[torch.Tensor] | None) -> Any:
        if snapshot is None:
            model = model.unload()  # drops the LoRA layers; the base layers are untouched
        else:
            with torch.no_grad():
                for p, saved in zip(base.parameters(), snapshot):
                    _local_tensor(p).copy_(saved)
                    p.requires_grad_(False)
            model = base
        model.eval()
        return model

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


def share(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[lo, hi)`` of this rank's contiguous share of n items; shares differ in size by at most one."""
    return rank * n // world_size, (rank + 1) * n // world_size


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
        if edits_per_rank is None:  # per rank per step: one batch of the unsharded students' inner loop
            edits_per_rank = max((s.edit_batch_size for s in local), default=1)
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
        for e in chunk:
            for s in self.sharded:
                seed = edit_seed(run_seed, e, s.name)
                outcomes[e.key][s.name] = s.evaluate_edit(e.text, contexts[e.context_id], seed)
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
