"""The teacher: a causal LM that writes k edits per context, and is fine-tuned on the edits that worked."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from core import faults
from core.config import TeacherConfig
from core.distributed import all_ranks, current, share
from core.prompts import render_prompt
from core.records import Context, Edit
from core.seeds import derive_seed
from teacher.training import sft_train
from teacher.vllm import VLLMSampler

log = logging.getLogger(__name__)


class Teacher:
    def __init__(self, cfg: TeacherConfig, model: Any, tokenizer: Any, checkpoint: str = "round_0"):
        self.cfg = cfg
        self.model = model
        self.tok = tokenizer
        self.checkpoint = checkpoint
        self.initial = str(getattr(model, "name_or_path", "") or "")  # what round_0 is: a path or hub id
        self.adapter: Any = (
            None  # the last LoRA update, kept beside the merged weights (teacher.train.method=lora)
        )
        self.vllm: VLLMSampler | None = None  # teacher.generation.backend=vllm: built on first use
        self.weights_version = 0  # raised by every update or reload (the vLLM engine re-reads the weights)
        self.model.eval()

    @property
    def uses_chat_template(self) -> bool:
        mode = self.cfg.use_chat_template
        return mode == "always" or (mode == "auto" and bool(getattr(self.tok, "chat_template", None)))

    def prompt(self, context: Context) -> str:
        """The exact text the teacher is conditioned on (chat template applied when configured)."""
        text = render_prompt(self.cfg.prompt_format, context)
        if self.uses_chat_template:
            text = self.tok.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return text

    def prompt_ids(self, prompt: str) -> list[int]:
        """``prompt``'s token ids as the teacher is conditioned on them (and trained: :meth:`sft_records`):
        special tokens added only when no chat template was applied (a rendered template already holds them)."""
        return self.tok(prompt, add_special_tokens=not self.uses_chat_template)["input_ids"]

    @torch.no_grad()
    def propose(
        self, contexts: list[Context], round_index: int, seed: int, progress: bool = False
    ) -> list[Edit]:
        """Sample ``generation.num_edits`` edits for every context (temperature / nucleus sampling), in the
        order of ``contexts``. One process samples them all from one random stream seeded with ``seed``.

        Under a launcher every rank samples its share (collective: every rank calls it alike): the contexts
        go in batches of ``generation.batch_size`` prompts, the same batches whatever the world size, each
        sampled from its own seed (``seed`` for the first, ``derive_seed(seed, batch index)`` for the others)
        on the rank whose contiguous share of batches holds it, and the ranks' edits are gathered in batch
        order. So every world size > 1 writes the same edits for the same seed (tested against
        :meth:`propose_batches` with ``per_batch_seeds`` in one process), and so does one process when the
        contexts fit one batch; with more batches a single process's one stream gives other edits."""
        if self.cfg.generation.backend == "vllm":
            return self.propose_vllm(contexts, round_index, seed)
        env = current()
        per_call = max(1, self.cfg.generation.batch_size // self.cfg.generation.num_edits)
        starts = list(range(0, len(contexts), per_call))
        if env.world_size == 1:
            return self.propose_batches(contexts, starts, round_index, seed, progress)
        lo, hi = share(len(starts), env.rank, env.world_size)
        parts = all_ranks(  # a rank that fails (e.g. out of memory) stops every rank with its error
            lambda: self.propose_batches(
                contexts, starts[lo:hi], round_index, seed, progress and env.is_main, per_batch_seeds=True
            )
        )
        return [e for part in parts for e in part or []]

    def propose_batches(
        self,
        contexts: list[Context],
        starts: list[int],
        round_index: int,
        seed: int,
        progress: bool = False,
        per_batch_seeds: bool = False,
    ) -> list[Edit]:
        """The edits of the batches of contexts that begin at ``starts`` (each ``batch_size // num_edits``
        contexts): from one stream seeded with ``seed``, or each batch from ``derive_seed(seed, index)``
        (``per_batch_seeds``; index = the batch's position among all of ``contexts``' batches)."""
        g = self.cfg.generation
        device = next(self.model.parameters()).device
        torch.manual_seed(seed)
        edits: list[Edit] = []
        per_call = max(1, g.batch_size // g.num_edits)
        bar = tqdm(
            total=sum(len(contexts[i : i + per_call]) for i in starts),
            desc=f"teacher round {round_index}: writing edits",
            disable=not progress,
            unit="ctx",
        )
        for i in starts:
            if per_batch_seeds:  # batch 0 from seed itself: one batch samples as one process does
                torch.manual_seed(seed if i == 0 else derive_seed(seed, i // per_call))
            chunk = contexts[i : i + per_call]
            prompts = [self.prompt(c) for c in chunk]
            enc = self.tok(
                prompts,
                return_tensors="pt",
                padding=True,
                padding_side="left",
                add_special_tokens=not self.uses_chat_template,
            ).to(device)
            out = self.model.generate(
                **enc,
                do_sample=True,
                temperature=g.temperature,
                top_p=g.top_p,
                top_k=0,
                max_new_tokens=g.max_new_tokens,
                num_return_sequences=g.num_edits,
                pad_token_id=self.tok.pad_token_id,
                eos_token_id=self.tok.eos_token_id,
                synced_gpus=False,  # whole on every rank: never step with the others (they sample other batches)
            )
            faults.point("generate")
            texts = self.tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for j, text in enumerate(texts):
                c, k = chunk[j // g.num_edits], j % g.num_edits
                edits.append(
                    Edit(
                        context_id=c.id,
                        format=self.cfg.prompt_format,
                        sample_index=k,
                        text=text.strip(),
                        teacher=self.checkpoint,
                        prompt=prompts[j // g.num_edits],
                        round=round_index,
                    )
                )
            bar.update(len(chunk))
        bar.close()
        return edits

    def propose_vllm(self, contexts: list[Context], round_index: int, seed: int) -> list[Edit]:
        """:meth:`propose` through vLLM (``teacher.generation.backend: vllm``, :mod:`teacher.vllm`): every rank
        samples its contiguous share of the contexts, sample ``k`` of each with seed ``derive_seed(seed, k)``,
        so the edits do not depend on the world size; gathered in context order."""
        g = self.cfg.generation
        if not contexts:
            return []
        if self.vllm is None:
            self.vllm = VLLMSampler(g.vllm, g.temperature, g.top_p, g.max_new_tokens)
        env = current()
        lo, hi = share(len(contexts), env.rank, env.world_size)
        mine = contexts[lo:hi]
        prompts = [self.prompt(c) for c in mine]
        ids = [self.prompt_ids(p) for p in prompts]
        # every rank sends as many prompts (TRL's server mode slices the results back by equal shares): pad
        # with copies of a prompt and drop what they return
        per_rank = -(-len(contexts) // env.world_size)
        filler = ids[:1] or [self.prompt_ids(self.prompt(contexts[0]))]
        padded = ids + filler * (per_rank - len(ids))
        seeds = [derive_seed(seed, k) for k in range(g.num_edits)]

        def sample() -> list[Edit]:
            completions = self.vllm.sample(
                self.model, self.tok, padded, g.num_edits, seeds, self.weights_version
            )
            faults.point("generate")
            edits = []
            for c, prompt, samples in zip(mine, prompts, completions):
                for k, text in enumerate(self.tok.batch_decode(samples, skip_special_tokens=True)):
                    edits.append(
                        Edit(
                            context_id=c.id,
                            format=self.cfg.prompt_format,
                            sample_index=k,
                            text=text.strip(),
                            teacher=self.checkpoint,
                            prompt=prompt,
                            round=round_index,
                        )
                    )
            return edits

        if env.world_size == 1:
            return sample()
        return [e for part in all_ranks(sample) for e in part or []]

    def sft_records(self, pairs: list[tuple[str, str]]) -> list[dict[str, list[int]]]:
        """(prompt, edit) pairs tokenized exactly as :meth:`propose` conditions on the prompt: special tokens
        added only when no chat template was applied (a rendered template already holds them; TRL tokenizing
        the rendered text again would add a second BOS for tokenizers that add one), then the edit's tokens and
        EOS. ``completion_mask`` marks the edit and EOS, the only tokens with a loss."""
        records = []
        for prompt, edit in pairs:
            p = self.prompt_ids(prompt)
            c = self.tok(edit, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            records.append({"input_ids": p + c, "completion_mask": [0] * len(p) + [1] * len(c)})
        return records

    def train(
        self,
        pairs: list[tuple[str, str]],
        seed: int,
        progress: bool = False,
        tracking: tuple[dict[str, Any], list[Any]] | None = None,
    ) -> float:
        """SFT on (prompt, edit) pairs through TRL's SFTTrainer (loss on the edit only), tokenized as sampled
        (:meth:`sft_records`). ``tracking``: a tracker's ``(TRL fields, callbacks)``
        (:meth:`orchestrator.tracking.Tracker.trainer_settings`). Returns the loss."""
        report, report_callbacks = tracking or ({}, [])
        t = self.cfg.train
        records = self.sft_records(pairs)
        # TRL truncates at max_length from the right: a record whose prompt fills it has no edit token left to
        # learn from (and TRL would drop it, leaving an empty dataset if all are)
        fits = [r for r in records if r["completion_mask"].index(1) < t.max_length]
        if len(fits) < len(records):
            shortest = min(r["completion_mask"].index(1) for r in records)
            message = (
                f"{len(records) - len(fits)} of {len(records)} kept edits have prompts of >= "
                f"teacher.train.max_length={t.max_length} tokens (shortest prompt: {shortest} tokens), so no edit "
                "token would be trained on; raise teacher.train.max_length (a run continues with "
                "`teachedit run --resume RUN_DIR teacher.train.max_length=N`)"
            )
            if not fits:
                raise ValueError(message)
            log.warning("%s; training on the other %d", message, len(fits))
        records = fits
        base = self.checkpoint
        self.model, loss, self.adapter = sft_train(
            self.model,
            self.tok,
            records,
            learning_rate=t.learning_rate,
            batch_size=t.batch_size,
            epochs=t.epochs,
            max_length=t.max_length,
            seed=seed,
            method=t.method,
            lora_r=t.lora_r,
            lora_alpha=t.lora_alpha,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            deepspeed=t.deepspeed,
            progress=progress,
            callbacks=[*faults.trainer_callbacks(), *report_callbacks],
            trainer_args=t.trainer_args,
            report=report,
        )
        self.weights_version += 1
        if self.adapter is not None:
            self.adapter.base = self.initial if base == "round_0" else base
        return loss

    def save(self, directory: Path) -> None:
        """Save weights (safetensors) and tokenizer atomically: written to a temp folder, then renamed.
        Under a launcher only rank 0 writes (every rank holds the same weights)."""
        import shutil

        if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return
        directory = Path(directory)
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written folder of a killed run: never reuse its files
        self.model.save_pretrained(tmp, safe_serialization=True)
        faults.point("checkpoint")
        self.tok.save_pretrained(tmp)
        if self.adapter is not None:  # the LoRA update that made these weights, on its own (peft's format)
            base = self.adapter.base
            if base.startswith("round_"):
                self.adapter.base = str((directory.parent / base).resolve())
            self.adapter.save(tmp / "adapter")
            self.adapter = None  # belongs to this checkpoint only
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)

    def replace_model(self, model: Any, adapter: Any = None) -> None:
        """Take the weights an update produced (GRPO: the trainer's model, its LoRA merged); ``adapter`` is that
        LoRA on its own, trained from the checkpoint the teacher holds now, saved with the next checkpoint."""
        self.model = model
        self.adapter = adapter
        self.weights_version += 1
        if adapter is not None:
            adapter.base = self.initial if self.checkpoint == "round_0" else self.checkpoint
        self.model.eval()

    def load_checkpoint(self, directory: Path, checkpoint: str, model_cfg: Any) -> None:
        """Load a saved checkpoint (``teacher/round_<k>``) in place of the current weights, on the same device."""
        from core.models import load_causal_lm

        device = next(self.model.parameters()).device
        self.model = load_causal_lm(str(directory), model_cfg, device)
        self.model.eval()
        self.checkpoint = checkpoint
        self.adapter = None
        self.weights_version += 1
