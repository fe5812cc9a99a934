"""GRPO (Shao et al., 2024) through TRL's ``GRPOTrainer``, unforked: the teacher's completions are edits, and the
student pool's reward for each edit is computed online, inside the trainer's step.

A round is ``algorithm.grpo.steps_per_round`` optimizer steps on the training contexts. Each step samples
``num_generations`` edits for each of ``prompts_per_step`` contexts; :class:`PoolReward` scores the whole batch
in one pool call (the same path as ReST-EM: :func:`~orchestrator.algorithms.base.score_batch`, so the same reward
registry, penalties and persisted records); TRL turns the rewards into group-relative advantages and updates the
teacher. Before a round's steps, the held-out contexts are scored exactly as ReST-EM scores them, so the two
algorithms' held-out curves compare. The last round (no update follows it) scores the training contexts as
ReST-EM does, so that configs with ``steps_per_round * prompts_per_step * num_generations`` equal to
``num_train_contexts * num_edits`` spend the same number of student evaluations per round.

Each round builds a fresh ``GRPOTrainer`` around the teacher's model (the optimizer state does not carry over
between rounds; a resumed run restarts the interrupted round from its first step). After training, a LoRA
adapter is merged, so ``teacher.model`` is always a plain model that the next round and ``propose`` sample from.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from typing import Any

from core.distributed import all_gather, on_rank0, ranks_missing
from core.prompts import render_prompt
from core.records import Context, Edit, EditResult
from orchestrator.algorithms.base import (
    Algorithm,
    RoundReport,
    RunContext,
    make_report,
    score_batch,
    score_edits,
)

log = logging.getLogger(__name__)


class PoolReward:
    """A TRL reward function: the batch's completions become edits of their prompts' contexts, scored by the
    student pool in one call per batch, every record persisted as it completes.

    TRL calls it on every rank with that rank's completions (one call per generation batch, equal sizes on all
    ranks), and it calls the pool exactly once per call, never branching on the rank, so a pool whose students
    are sharded across ranks does the same number of collective passes everywhere."""

    __name__ = "student_pool"  # TRL names the reward in its logs after this

    def __init__(self, ctx: RunContext, round_index: int, contexts: list[Context], rank: int, world: int):
        self.ctx, self.round = ctx, round_index
        self.by_id = {c.id: c for c in contexts}
        self.rank, self.world = rank, world
        self.results: list[EditResult] = []

        # Sample indices continue after records already in this round's file (a resumed, interrupted round),
        # so every edit key stays unique; each rank takes its own residue class.
        # Rank 0 reads the run directory (other nodes may not share its disk); every rank gets the counts.
        def counts() -> dict[str, int]:
            out: dict[str, int] = {}
            for r in ctx.rundir.edits(round_index):
                if not r.heldout:
                    cid = r.edit.context_id
                    out[cid] = max(out.get(cid, 0), r.edit.sample_index // world + 1)
            return out

        self.counts = on_rank0(counts)

    def __call__(
        self, prompts: list[Any], completions: list[Any], context_id: list[str], **kwargs: Any
    ) -> list[float]:
        state = kwargs.get("trainer_state")
        step = state.global_step if state is not None else 0
        edits = [self._edit(cid, completion_text(c), step) for cid, c in zip(context_id, completions)]
        results = score_batch(
            self.ctx,
            edits,
            self.by_id,
            self.round,
            heldout=False,
            desc=f"round {self.round} step {step}: grpo",
        )
        self.results.extend(results)
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            for name, value in per_student_rewards(results).items():
                log_metric(f"students/{name}/reward", value)
            log_metric("degenerate_edits", float(sum(r.penalty is not None for r in results)))
        return [r.reward for r in results]

    def _edit(self, context_id: str, text: str, step: int) -> Edit:
        n = self.counts.get(context_id, 0)
        self.counts[context_id] = n + 1
        teacher = self.ctx.teacher
        return Edit(
            context_id=context_id,
            format=teacher.cfg.prompt_format,
            sample_index=n * self.world + self.rank,
            text=text,
            teacher=f"round_{self.round}+grpo_step_{step}",
            prompt=teacher.prompt(self.by_id[context_id]),
            round=self.round,
        )


def completion_text(completion: Any) -> str:
    """TRL passes a plain string, or for chat prompts ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(completion, list):
        completion = "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion).strip()


def per_student_rewards(results: list[EditResult]) -> dict[str, float]:
    """Mean reward per student over ``results``."""
    out: dict[str, list[float]] = {}
    for r in results:
        for name, o in r.per_student.items():
            out.setdefault(name, []).append(o.reward)
    return {name: sum(v) / len(v) for name, v in out.items()}


class GRPO(Algorithm):
    name = "grpo"

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self._tracking: tuple[dict[str, Any], list[Any]] = ({}, [])

    def train(self, round_index: int) -> RoundReport:
        ctx, cfg = self.ctx, self.ctx.cfg
        started = time.time()
        heldout = score_edits(ctx, ctx.task.heldout_contexts(), round_index, heldout=True)
        if round_index < cfg.algorithm.rounds:
            train, loss = self._train_round(round_index)
            self.save_checkpoint(round_index + 1)
        else:
            train, loss = score_edits(ctx, ctx.task.train_contexts(), round_index, heldout=False), None
        return make_report(
            ctx, round_index, train, heldout, len(train) if loss is not None else 0, started, loss
        )

    def _train_round(self, round_index: int) -> tuple[list[EditResult], float]:
        """``steps_per_round`` GRPO steps; returns the scored training edits and TRL's mean loss."""
        ctx, g = self.ctx, self.ctx.cfg.algorithm.grpo
        contexts = ctx.task.train_contexts()
        ctx.pool.baselines(contexts, progress=ctx.progress)
        model = ctx.teacher.model
        name_or_path = getattr(model.config, "_name_or_path", "")
        if g.beta > 0:
            # With full fine-tuning TRL loads the KL reference from the model's name_or_path: point it at the
            # teacher as it was at the start of this round (LoRA: the reference is the adapter-free model, the same).
            model.config._name_or_path = self._round_start_path(round_index)
        self._tracking = ctx.tracker.trainer_settings(f"teacher_round_{round_index}")
        with tempfile.TemporaryDirectory(prefix="teachedit-grpo-") as workdir:
            args = self._grpo_config(round_index, workdir)
            reward = PoolReward(ctx, round_index, contexts, args.process_index, args.world_size)
            trainer = self._trainer(round_index, args, reward, contexts)
            try:
                loss = float(trainer.train().training_loss)
            finally:
                ctx.teacher.replace_model(*_plain_model(trainer, g.method))
                ctx.teacher.model.config._name_or_path = name_or_path
                del trainer
        if not math.isfinite(loss):
            from teacher.training import TrainingError

            raise TrainingError(f"GRPO loss is {loss}; lower algorithm.grpo.learning_rate")
        results = [r for part in all_gather(reward.results) for r in part]  # every rank's edits (launcher)
        log.info(
            "round %d: %d GRPO steps on %d scored edits (mean reward %+.3f)",
            round_index,
            g.steps_per_round,
            len(results),
            sum(r.reward for r in results) / max(1, len(results)),
        )
        return results, loss

    def _trainer(self, round_index: int, args: Any, reward: PoolReward, contexts: list[Context]) -> Any:
        from datasets import Dataset
        from transformers.trainer_callback import PrinterCallback
        from trl import GRPOTrainer

        trainer = GRPOTrainer(
            model=self.ctx.teacher.model,
            reward_funcs=reward,
            args=args,
            train_dataset=Dataset.from_list(
                [{"prompt": self._prompt(c), "context_id": c.id} for c in contexts]
            ),
            processing_class=self.ctx.teacher.tok,
            peft_config=self._peft_config(),
            callbacks=[_round_log(self.ctx, round_index), *self._tracking[1]],
        )
        trainer.remove_callback(PrinterCallback)  # libraries log; HF's printer writes to stdout
        return trainer

    def _prompt(self, context: Context) -> Any:
        """The teacher's prompt as TRL wants it: a conversation when the teacher uses a chat template (TRL
        applies it, with the generation prompt), else the plain text ``Teacher.propose`` conditions on."""
        teacher = self.ctx.teacher
        if teacher.uses_chat_template:
            return [{"role": "user", "content": render_prompt(teacher.cfg.prompt_format, context)}]
        return teacher.prompt(context)

    def _grpo_config(self, round_index: int, workdir: str) -> Any:
        from trl import GRPOConfig

        from core import trl_args

        cfg = self.ctx.cfg
        g, gen = cfg.algorithm.grpo, cfg.teacher.generation
        on_cpu = next(self.ctx.teacher.model.parameters()).device.type == "cpu"
        defaults = dict(
            output_dir=workdir,  # nothing is saved there (save_strategy="no")
            max_steps=g.steps_per_round,
            per_device_train_batch_size=g.prompts_per_step * g.num_generations,
            gradient_accumulation_steps=1,
            num_generations=g.num_generations,
            max_completion_length=g.max_edit_tokens or gen.max_new_tokens,
            temperature=gen.temperature,
            top_p=gen.top_p,
            top_k=0,
            learning_rate=g.learning_rate,
            lr_scheduler_type="constant",
            beta=g.beta,
            loss_type=g.loss_type,
            scale_rewards=g.scale_rewards,
            gradient_checkpointing=g.gradient_checkpointing,
            seed=cfg.run.seed + round_index,
            use_cpu=on_cpu,
            bf16=False if on_cpu else None,
            trust_remote_code=cfg.teacher.model.trust_remote_code,
            deepspeed=cfg.teacher.train.deepspeed,
            remove_unused_columns=False,  # the reward needs the context_id column
            save_strategy="no",
            report_to="none",
            logging_steps=1,
            disable_tqdm=not self.ctx.progress,
        )
        defaults.update(self._tracking[0])
        return trl_args.build(GRPOConfig, defaults, g.trainer_args, "algorithm.grpo.trainer_args")

    def _peft_config(self) -> Any:
        g = self.ctx.cfg.algorithm.grpo
        if g.method != "lora":
            return None
        from peft import LoraConfig

        return LoraConfig(
            r=g.lora_r, lora_alpha=g.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"
        )

    def _round_start_path(self, round_index: int) -> str:
        path = self.ctx.rundir.teacher_dir(round_index)
        if not (round_index > 0 and on_rank0(path.is_dir)):  # rank 0's view: every rank takes one branch
            return self.ctx.initial_teacher
        missing = ranks_missing(path)  # TRL loads the KL reference from this folder on every rank
        if missing:
            from orchestrator.rundir import RunDirError

            raise RunDirError(
                f"rank(s) {missing} cannot see {path}, the KL reference rank 0 wrote: GRPO with "
                "algorithm.grpo.beta > 0 on several nodes needs the run directory on a shared file system "
                "(or algorithm.grpo.beta=0, or method=lora, whose reference is the adapter-free model)"
            )
        return str(path)


def _plain_model(trainer: Any, method: str) -> tuple[Any, Any]:
    """The trained teacher as a plain ``PreTrainedModel`` (unwrapped, LoRA merged, TRL's patches removed) and
    the LoRA adapter it merged (None for full fine-tuning)."""
    from teacher.training import merge_lora, release_deepspeed

    if trainer.is_deepspeed_enabled:  # under the launcher: ZeRO shards gathered, the engine's hooks gone
        return release_deepspeed(trainer, method, trainer.args.device)
    model, adapter = trainer.accelerator.unwrap_model(trainer.model), None
    if method == "lora":
        model, adapter = merge_lora(model)
    # GRPOTrainer replaces the instance's ``forward`` with a fused-LM-head wrapper (trl.trainer.utils.
    # add_fused_lm_head); it is transparent for generate(), but each round would wrap it again.
    model.__dict__.pop("forward", None)
    if getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()
    model.eval()
    return model, adapter


def _round_log(ctx: RunContext, round_index: int) -> Any:
    """A callback that persists TRL's per-step logs (reward mean/std, per-student rewards, KL, entropy, lengths)
    to ``grpo/train_log.jsonl`` as they are written, and logs a one-line summary per step. (Built here so that
    importing this module does not import transformers' trainer.)"""
    from transformers import TrainerCallback

    class RoundLog(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if not logs or "reward" not in logs or not state.is_world_process_zero:
                return
            (ctx.rundir.path / "grpo").mkdir(exist_ok=True)
            ctx.rundir.append_jsonl(
                "grpo/train_log.jsonl", {"round": round_index, "step": state.global_step, **logs}
            )
            students = ", ".join(
                f"{k.split('/')[1]} {v:+.3f}" for k, v in logs.items() if k.startswith("students/")
            )
            log.info(
                "round %d grpo step %d: reward %+.3f (std %.3f; %s), loss %.4f",
                round_index,
                state.global_step,
                logs["reward"],
                logs.get("reward_std", float("nan")),
                students,
                logs.get("loss", float("nan")),
            )

    return RoundLog()
