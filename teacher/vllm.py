"""The teacher's vLLM sampler (``teacher.generation.backend: vllm``): TRL's ``VLLMGeneration``, as its
trainers use it, for ReST-EM's proposals and every held-out proposal.

TRL's class does the work (building the engine, colocated with ``distributed_executor_backend=
"external_launcher"`` or a ``trl vllm-serve`` server; pushing the teacher's weights into it; sampling). This
module adds only what the teacher needs around it:

- TRL's class takes an ``accelerate.Accelerator``. The teacher has none (TRL's trainers make their own, with
  their own DeepSpeed plugin, and a second ``Accelerator`` in the process would clash with theirs), so
  :class:`LaunchState` gives it what it reads of one, from the launcher's environment. The teacher samples
  whole on every rank (after a ZeRO update it is gathered), so there is no DeepSpeed or FSDP plugin: weights
  are read as they are.
- After every teacher update (SFT, GRPO, a loaded checkpoint: ``Teacher.weights_version``) the weights are pushed
  before the next sampling (``sync_weights``; once after the engine is built too, so a resumed teacher samples
  from its own weights whatever ``name_or_path`` says).
- Reproducibility: vLLM seeds each request (``SamplingParams.seed``) instead of one stream per batch, so the
  ``k``-th edit of every context is sampled with ``derive_seed(seed, k)``: one generate call per sample
  index, all of the rank's contexts in it. A request's sample depends on its prompt and seed only, so the edits
  do not depend on the world size or the batching (up to kernel numerics). They are not the edits
  transformers' ``generate`` writes for the same seed. Contexts in one call share their random numbers (common
  random numbers), which leaves each context's ``k`` edits independent samples.
- Prompts are token ids, tokenized as the hf path and SFT tokenize them (:meth:`Teacher.prompt_ids`), so the
  teacher is trained on exactly the tokens it was conditioned on.

Server mode gathers every rank's prompts on rank 0 and slices the results back by equal shares, so every rank
sends the same number of prompts: a rank pads its share with copies of its first prompt and drops what they
return.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from core.distributed import current

log = logging.getLogger(__name__)

# VLLMGeneration's own arguments that the teacher sets from teacher.generation: not accepted in teacher.generation.vllm.
SET_BY_TEACHER = frozenset(
    {
        "model",
        "accelerator",
        "processing_class",
        "temperature",
        "top_p",
        "top_k",
        "max_completion_length",
        "logprobs",
        "generation_kwargs",
    }
)


def allowed_options() -> list[str]:
    """The ``teacher.generation.vllm`` keys: TRL's ``VLLMGeneration`` arguments the teacher does not set."""
    from trl.generation.vllm_generation import VLLMGeneration

    params = inspect.signature(VLLMGeneration.__init__).parameters
    return sorted(p for p in params if p != "self" and p not in SET_BY_TEACHER)


class LaunchState:
    """What TRL's ``VLLMGeneration`` reads of an ``accelerate.Accelerator``, from the launcher's environment
    (``core.distributed``): the process indices, a barrier, and no DeepSpeed or FSDP plugin (the teacher
    samples whole)."""

    class _State:
        deepspeed_plugin = None
        fsdp_plugin = None

    state = _State()

    def __init__(self) -> None:
        env = current()
        self.process_index = env.rank
        self.local_process_index = env.local_rank
        self.num_processes = env.world_size
        self.is_main_process = env.rank == 0
        import torch

        self.device = (
            torch.device("cuda", env.local_rank) if torch.cuda.is_available() else torch.device("cpu")
        )

    def wait_for_everyone(self) -> None:
        from core.distributed import barrier

        barrier()


class VLLMSampler:
    """One vLLM engine for the teacher, built on first use and kept for the run."""

    def __init__(self, options: dict[str, Any], temperature: float, top_p: float, max_new_tokens: int):
        self.options = dict(options)
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.generation: Any = None  # trl VLLMGeneration
        self.version: int | None = None  # the teacher's weights_version the engine holds

    def _engine(self, model: Any, tokenizer: Any, version: int) -> Any:
        if self.generation is None:
            from trl.generation.vllm_generation import VLLMGeneration

            log.info("teacher: starting vLLM (%s)", self.options.get("mode", "colocate"))
            self.generation = VLLMGeneration(
                model=model,
                accelerator=LaunchState(),
                processing_class=tokenizer,
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=0,  # no top-k cut, as the hf path (TRL's default too)
                max_completion_length=self.max_new_tokens,
                logprobs=None,
                **self.options,
            )
        elif self.version == version:
            return self.generation
        # built, or the teacher was updated (or reloaded) since the last sampling: push its weights
        self.generation.model = model
        self.generation.sync_weights()
        self.version = version
        return self.generation

    def sample(
        self,
        model: Any,
        tokenizer: Any,
        prompt_ids: list[list[int]],
        num_edits: int,
        seeds: list[int],
        version: int,
    ) -> list[list[list[int]]]:
        """Completion token ids, ``[context][sample index]``, for this rank's prompts: sample ``k`` of every
        prompt with seed ``seeds[k]``, from ``model``'s weights (pushed first when ``version``, the teacher's
        ``weights_version``, changed). Collective under a launcher (every rank calls it, with the same number
        of prompts in server mode: see the module's docstring)."""
        gen = self._engine(model, tokenizer, version)
        out: list[list[list[int]]] = [[] for _ in prompt_ids]
        for k in range(num_edits):
            gen.generation_kwargs = {"seed": seeds[k]}
            _, completions, _, _ = gen.generate(prompt_ids, images=None, num_generations=1)
            for i, ids in enumerate(completions):
                out[i].append(list(ids))
        return out
