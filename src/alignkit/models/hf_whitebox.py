"""White-box access to a causal LM for gradient attacks (GCG) and training-time analysis.

:func:`token_gradients` is the coordinate gradient of Greedy Coordinate Gradient (Zou et al.,
2023, "Universal and Transferable Adversarial Attacks on Aligned Language Models"): the gradient
of the target tokens' cross-entropy w.r.t. a one-hot encoding of the tokens being optimised.
Large negative entries point at token substitutions that should lower the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def embedding_matrix(model: torch.nn.Module) -> torch.Tensor:
    """The input embedding weight, shape ``[vocab, hidden]``."""
    return model.get_input_embeddings().weight


def _embed_one_hot(model: torch.nn.Module, one_hot: torch.Tensor) -> torch.Tensor:
    """Embeddings of (relaxed) one-hot rows, matching what the embedding module outputs."""
    embed = model.get_input_embeddings()
    out = one_hot @ embed.weight
    scale = getattr(embed, "embed_scale", None)  # scaled embeddings (e.g. Gemma 3)
    return out * scale.to(out.dtype) if isinstance(scale, torch.Tensor) else out * (scale or 1.0)


def _check_slices(length: int, optim_slice: slice, target_slice: slice) -> None:
    """Raise ``ValueError`` for empty or out-of-range slices."""
    for name, s in (("optim_slice", optim_slice), ("target_slice", target_slice)):
        start, stop, step = s.indices(length)
        if step != 1 or stop <= start:
            raise ValueError(f"{name} {s} selects no contiguous tokens of a {length}-token input")
    if target_slice.indices(length)[0] < 1:
        raise ValueError("target_slice must start after position 0 (it is predicted from a prefix)")


def token_gradients(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    optim_slice: slice,
    target_slice: slice,
) -> torch.Tensor:
    """Gradient of the target loss w.r.t. one-hot optimised tokens, ``[len(optim), vocab]``.

    ``input_ids`` is one 1-D sequence. The loss is the mean cross-entropy of the tokens in
    ``target_slice``, each predicted from everything before it. Returns float32.
    """
    if input_ids.dim() != 1:
        raise ValueError(f"input_ids must be 1-D, got shape {tuple(input_ids.shape)}")
    weight = embedding_matrix(model)
    ids = input_ids.to(weight.device)
    _check_slices(len(ids), optim_slice, target_slice)
    opt_start, opt_stop, _ = optim_slice.indices(len(ids))
    tgt_start, tgt_stop, _ = target_slice.indices(len(ids))
    one_hot = F.one_hot(ids[opt_start:opt_stop], weight.shape[0]).to(weight.dtype)
    one_hot.requires_grad_(True)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids.unsqueeze(0))
    full = torch.cat(
        [embeds[:, :opt_start], _embed_one_hot(model, one_hot).unsqueeze(0), embeds[:, opt_stop:]],
        dim=1,
    )
    logits = model(inputs_embeds=full).logits[0, tgt_start - 1 : tgt_stop - 1]
    loss = F.cross_entropy(logits.float(), ids[tgt_start:tgt_stop])
    (grad,) = torch.autograd.grad(loss, one_hot)
    return grad.float()


def input_embedding_gradients(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient of the LM loss w.r.t. ``inputs_embeds``, shape ``input_ids.shape + (hidden,)``.

    ``labels`` follow the transformers convention: same shape as ``input_ids``, ``-100`` for
    positions without a loss, shifted inside the model. Accepts 1-D or 2-D (batched) inputs.
    """
    single = input_ids.dim() == 1
    ids = input_ids.unsqueeze(0) if single else input_ids
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
