"""White-box access to a causal LM for training-time analysis: the embedding matrix and the
loss gradient w.r.t. input embeddings. (GCG's coordinate gradient lives with the attack, in
:func:`alignkit.redteam.gcg_ops.token_gradient`.)
"""

from __future__ import annotations

import torch

from alignkit.models.base import PromptTooLongError
from alignkit.models.hf_loading import context_length


def embedding_matrix(model: torch.nn.Module) -> torch.Tensor:
    """The input embedding weight, shape ``[vocab, hidden]``."""
    return model.get_input_embeddings().weight


def input_embedding_gradients(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient of the LM loss w.r.t. ``inputs_embeds``, shape ``input_ids.shape + (hidden,)``.

    ``labels`` follow the transformers convention: same shape as ``input_ids``, ``-100`` for
    positions without a loss, shifted inside the model. Accepts 1-D or 2-D (batched) inputs.
    Inputs longer than the model's context are refused (a ``PromptTooLongError``).
    """
    single = input_ids.dim() == 1
    ids = input_ids.unsqueeze(0) if single else input_ids
    context = context_length(model.config, None) if hasattr(model, "config") else None
    if context is not None and ids.shape[-1] > context:
        message = f"input of {ids.shape[-1]:,} tokens is longer than the {context:,}-token context"
        raise PromptTooLongError(message, 0, ids.shape[-1], context)
    labels = labels.unsqueeze(0) if single else labels
    device = embedding_matrix(model).device
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids.to(device))
    embeds.requires_grad_(True)
    mask = attention_mask.to(device) if attention_mask is not None else None
    if mask is not None and single:
        mask = mask.unsqueeze(0)
    loss = model(inputs_embeds=embeds, attention_mask=mask, labels=labels.to(device)).loss
    (grad,) = torch.autograd.grad(loss, embeds)
    return grad[0] if single else grad
