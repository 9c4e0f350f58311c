"""Log-probs of target tokens straight from the final hidden states: the output projection,
log-softmax and gather fused chunk by chunk, so the ``[tokens x vocabulary]`` logits never
exist whole (the idea of Liger-Kernel's fused linear cross-entropy, in plain torch).

Only the positions that predict a completion token are projected: no prompt positions of the
longer prompts in a batch, no padding. The forward keeps the hidden states of those positions
and one log-sum-exp per position; the backward recomputes each chunk's logits and turns them
into the gradients of the hidden states and of the output weight
(``d/dlogits = g * (onehot(target) - softmax)``). Peak memory for the head is one chunk of
logits instead of all of them twice (logits and their gradient): with a 152k vocabulary and
sequences of ~1,000 tokens that is gigabytes per batch. Values and gradients equal the plain
path's (``log_softmax(lm_head(h)).gather``) within float32 rounding (tests).
"""

from __future__ import annotations

import torch

CHUNK_ELEMENTS = 1 << 24  # logits of one chunk: 64 MiB in float32


def _chunks(rows: int, vocab: int):
    size = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    for start in range(0, rows, size):
        yield start, min(start + size, rows)


class _LinearTokenLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        # under autocast the projection runs in its dtype (bf16); log-softmax is in float32
        out = torch.empty(targets.shape, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        dtype = hidden.dtype
        for start, end in _chunks(hidden.shape[0], weight.shape[0]):
            logits = torch.nn.functional.linear(hidden[start:end], weight, bias)
            dtype = logits.dtype
            logits = logits.float()
            lse[start:end] = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(-1, targets[start:end].unsqueeze(-1)).squeeze(-1)
            out[start:end] = picked - lse[start:end]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.compute_dtype = dtype  # the backward's projections match the forward's
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        dtype = ctx.compute_dtype
        w = weight.to(dtype)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_bias = None if bias is None else torch.zeros(bias.shape, dtype=torch.float32,
                                                          device=bias.device)  # fmt: skip
        b = None if bias is None else bias.to(dtype)
        for start, end in _chunks(hidden.shape[0], weight.shape[0]):
            h = hidden[start:end].to(dtype)
            g = grad_out[start:end].float().unsqueeze(-1)
            logits = torch.nn.functional.linear(h, w, b).float()
            grad = logits.sub_(lse[start:end].unsqueeze(-1)).exp_().mul_(-g)  # -softmax * g
            grad.scatter_add_(-1, targets[start:end].unsqueeze(-1), g)
            grad_hidden[start:end] = (grad.to(dtype) @ w).to(hidden.dtype)
            grad_weight.addmm_(grad.t(), h.float())
            if grad_bias is not None:
                grad_bias += grad.sum(0)
        grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight.to(weight.dtype), grad_bias, None


def linear_token_log_probs(
    hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor
) -> torch.Tensor:
    """``log_softmax(head(hidden).float())`` at ``targets``: ``hidden`` [M, d] final hidden
    states, ``targets`` [M] token ids; float32 [M], differentiable in ``hidden`` and the head."""
    return _LinearTokenLogProbs.apply(hidden, head.weight, head.bias, targets)


def fusable_head(model) -> torch.nn.Linear | None:
    """The model's output projection when the fused path computes exactly what its forward
    does: a plain ``nn.Linear`` head (not a LoRA-wrapped one) and no logit soft-capping or
    scaling in the config; else None (the caller takes the plain path)."""
    base = getattr(model, "module", model)  # DistributedDataParallel
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or getattr(head, "_alignkit_unfused", False):
        return None
    config = getattr(base, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(text, name, None) not in (None, 1, 1.0):
            return None
    return head
