"""The LM head only where a loss or a score needs it.

A causal LM's forward computes full-vocabulary logits at every position. The inner loop's loss needs them only
where the next token has a label (the completion: often under half of a padded batch), and gold-answer scoring
only on the answer's tokens. With a vocabulary large relative to the width (Gemma-3-270M: 262k x 640, 168M of
its 268M parameters in the embeddings / head) the head and its fp32 softmax are most of a step. Here the
model's body runs once for the hidden states, the rows that need logits are gathered, and the head runs on
those rows only, followed by whatever the model's own forward does to its logits after the head (Gemma 2 / 3:
``final_logit_softcapping``): the same logits as the full forward's at those positions.

Only architectures whose ``forward`` was read (transformers 5.24; :data:`_HEADS`) take this path. Any other
model, a peft prompt-learning model, or a head with hooks on it (a hook may depend on the batch shape, e.g. a
LoRA router) runs the full forward and gathers: slower, same results.
"""

from __future__ import annotations

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


def split_model(model: Any) -> tuple[Any, Any, float | None] | None:
    """``(body, head, softcap)`` of a causal LM (unwrapping a peft LoRA model: its LoRA layers sit inside the
    body), or None where calling them apart is not known to equal the model's forward."""
    if type(model).__module__.startswith("peft."):
        if model.active_peft_config.is_prompt_learning:  # its forward adds virtual tokens to the input
            return None
        model = model.get_base_model()
    caps = _HEADS.get(type(model).__name__)
    if caps is None:
        return None
    body, head = model.base_model, model.get_output_embeddings()
    if body is model or head is None or head._forward_hooks or head._forward_pre_hooks:
        return None
    softcap = getattr(model.config, "final_logit_softcapping", None) if caps else None
    return body, head, softcap


def logits_at(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """``(K, V)`` ``model(input_ids, attention_mask).logits[rows, cols]`` in the model's dtype, with the head
    run on those K positions only (:func:`split_model`)."""
    parts = split_model(model)
    if parts is None:
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[rows, cols]
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
