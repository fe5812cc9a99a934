"""The LM head only where a loss or a score needs it.

A causal LM's forward computes full-vocabulary logits at every position. The inner loop's loss needs them only
where the next token has a label (the completion: often under half of a padded batch), and gold-answer scoring
only on the answer's tokens. With a vocabulary large relative to the width (Gemma-3-270M: 262k x 640, 168M of
its 268M parameters in the embeddings / head) the head and its fp32 softmax are most of a step. Here the
model's body runs once for the hidden states, the rows that need logits are gathered, and the head runs on
those rows only, followed by whatever the model's own forward does to its logits after the head (Gemma 2 / 3:
``final_logit_softcapping``): the same logits as the full forward's at those positions.

Only architectures whose ``forward`` was read (transformers 5.24; :data:`_HEADS`) take this path, with no hook
on the head. Otherwise, where the model's own forward slices its hidden states with transformers'
``slice_logits_to_keep`` (every causal LM of transformers 5), the forward runs with ``logits_to_keep`` set to a
boolean mask of the positions needed: the head sees those rows only, and the model does what it does after
the head itself (Granite's scaling, Cohere's). That path is taken when the head carries hooks that do not
depend on the batch's shape, which are DeepSpeed ZeRO-3's (they gather the head's weights): a sharded
student's training steps compute logits at their label positions only, as an unsharded one's. Any other hook
on the head (one may depend on the batch shape, e.g. a LoRA router), a peft prompt-learning model or a
model without ``logits_to_keep`` runs the full forward and gathers: slower, same results.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F

from student.sequences import IGNORE, Batch

# CausalLM classes whose forward is ``logits = lm_head(body(...).last_hidden_state)``, then (True) Gemma's
# ``tanh(logits / c) * c`` with ``c = config.final_logit_softcapping`` when that is set. Granite (divides by
# logits_scaling) and Cohere (multiplies by logit_scale) do more: they are not listed, so they run in full.
_HEADS = {
    "LlamaForCausalLM": False,
    "MistralForCausalLM": False,
    "Qwen2ForCausalLM": False,
    "Qwen3ForCausalLM": False,
    "SmolLM3ForCausalLM": False,
    "Phi3ForCausalLM": False,
    "Olmo2ForCausalLM": False,
    "GPT2LMHeadModel": False,
    "GemmaForCausalLM": False,
    "Gemma2ForCausalLM": True,
    "Gemma3ForCausalLM": True,
}


def _causal_lm(model: Any) -> Any | None:
    """The causal LM under a peft LoRA model (its LoRA layers sit inside it), the model itself otherwise, or
    None for a peft prompt-learning model (its forward adds virtual tokens to the input)."""
    if type(model).__module__.startswith("peft."):
        return None if model.active_peft_config.is_prompt_learning else model.get_base_model()
    return model


def split_model(model: Any) -> tuple[Any, Any, float | None] | None:
    """``(body, head, softcap)`` of a causal LM (unwrapping a peft LoRA model: its LoRA layers sit inside the
    body), or None where calling them apart is not known to equal the model's forward."""
    model = _causal_lm(model)
    if model is None:
        return None
    caps = _HEADS.get(type(model).__name__)
    if caps is None:
        return None
    body, head = model.base_model, model.get_output_embeddings()
    if body is model or head is None or head._forward_hooks or head._forward_pre_hooks:
        return None
    softcap = getattr(model.config, "final_logit_softcapping", None) if caps else None
    return body, head, softcap


def _deepspeed_hooks_only(module: Any) -> bool:
    hooks = [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]
    return all(getattr(h, "__module__", "").startswith("deepspeed.") for h in hooks)


def keeps_logits(model: Any) -> bool:
    """Whether ``model``'s forward takes a boolean ``logits_to_keep`` mask (transformers'
    ``slice_logits_to_keep``) and its head has no hook other than DeepSpeed's."""
    model = _causal_lm(model)
    if model is None:
        return False
    head = model.get_output_embeddings()
    module = sys.modules.get(type(model).__module__)
    return head is not None and hasattr(module, "slice_logits_to_keep") and _deepspeed_hooks_only(head)


def head_path(model: Any) -> str:
    """How :func:`logits_at` computes ``model``'s logits: ``split`` (body, then the head on the needed rows),
    ``keep`` (the model's forward with a ``logits_to_keep`` mask) or ``full`` (every position, then gathered)."""
    if split_model(model) is not None:
        return "split"
    return "keep" if keeps_logits(model) else "full"


def logits_at(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """``(K, V)`` ``model(input_ids, attention_mask).logits[rows, cols]`` in the model's dtype, with the head
    run on the needed positions only where that is known to give the same logits (:func:`head_path`)."""
    parts = split_model(model)
    if parts is None:
        if not keeps_logits(model):
            return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[
                rows, cols
            ]
        keep = torch.zeros_like(input_ids, dtype=torch.bool)
        keep[rows, cols] = True
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep)
        # the kept positions come row-major; each requested (row, col) is found among them
        flat = (keep.flatten().cumsum(0) - 1).view_as(keep)
        return out.logits[flat[rows, cols]]
    body, head, softcap = parts
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    logits = head(hidden[rows, cols])
    if softcap is not None:  # as Gemma3ForCausalLM.forward, step by step
        logits = logits / softcap
        logits = torch.tanh(logits)
        logits = logits * softcap
    return logits


def token_losses(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(losses, rows)``, both ``(K,)``: the fp32 next-token cross-entropy at every position whose next token
    has a label (labels shifted by one, as transformers' ``ForCausalLMLoss``), row-major, and the batch row of
    each. Logits are computed at those K positions only."""
    shift = F.pad(batch.labels, (0, 1), value=IGNORE)[:, 1:]
    rows, cols = (shift != IGNORE).nonzero(as_tuple=True)
    logits = logits_at(model, batch.input_ids, batch.attention_mask, rows, cols)
    return F.cross_entropy(logits.float(), shift[rows, cols], reduction="none"), rows


def mean_loss(model: Any, batch: Batch) -> torch.Tensor:
    """The batch's mean next-token loss over its label tokens (NaN if it has none), as
    ``model(..., labels=batch.labels).loss``."""
    return token_losses(model, batch)[0].mean()
