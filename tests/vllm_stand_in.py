"""A stand-in for vLLM's ``LLM`` (tests only: this machine has neither a GPU nor the vllm package).

It implements what TRL's ``VLLMGeneration`` (colocate mode) calls on vLLM's engine: construction from the
model's path, ``load_weights`` on the model runner, ``generate`` with per-request seeds and
``reset_prefix_cache``. It samples with transformers from its own copy of the weights, so TRL's real class and
the teacher's use of it run as they would on vLLM, and what reaches the engine can be checked."""

from __future__ import annotations

from types import SimpleNamespace

import torch


class StandInSamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class StandInLLM:
    """vLLM's ``LLM`` as TRL's ``VLLMGeneration`` (colocate mode) uses it; one process, on the CPU."""

    built: list[StandInLLM] = []

    def __init__(self, model: str, **kwargs):
        from transformers import AutoModelForCausalLM

        self.kwargs = kwargs
        self.net = AutoModelForCausalLM.from_pretrained(model).eval()  # its own copy, from the path
        runner = SimpleNamespace(model=SimpleNamespace(load_weights=self.load_weights))
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner))
        )
        self.requests: list[tuple[list[int], int]] = []
        self.loads = 0
        StandInLLM.built.append(self)

    def load_weights(self, weights):
        params = dict(self.net.named_parameters())
        for name, tensor in weights:
            params[name].data.copy_(tensor)
        self.loads += 1

    def reset_prefix_cache(self):
        pass

    @torch.no_grad()
    def generate(self, prompts, sampling_params, use_tqdm=False):
        outputs = []
        for p in prompts:
            ids = p["prompt_token_ids"]
            self.requests.append((list(ids), sampling_params.seed))
            torch.manual_seed(sampling_params.seed)  # each request from its own seed, as vLLM's
            out = self.net.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=True,
                temperature=sampling_params.temperature,
                top_p=sampling_params.top_p,
                top_k=0,
                max_new_tokens=sampling_params.max_tokens,
                pad_token_id=self.net.config.eos_token_id,
            )
            completion = SimpleNamespace(token_ids=out[0, len(ids) :].tolist(), logprobs=None)
            outputs.append(SimpleNamespace(prompt_token_ids=ids, outputs=[completion]))
        return outputs


def install() -> list[StandInLLM]:
    """Make TRL's ``VLLMGeneration`` build :class:`StandInLLM` engines (for a worker process; tests use the
    ``stand_in_vllm`` fixture, which undoes it). Returns the list the engines built are appended to."""
    import trl.generation.vllm_generation as vg

    vg.is_vllm_available, vg.LLM, vg.SamplingParams = (
        (lambda *a, **k: True),
        StandInLLM,
        StandInSamplingParams,
    )
    StandInLLM.built.clear()
    return StandInLLM.built
