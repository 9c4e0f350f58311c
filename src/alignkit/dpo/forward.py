"""Sequence log-probabilities of completions under a causal LM, computed without waste.

All completions of a batch (chosen and rejected, or the K ranked responses) go through the
model in one forward pass. Rows are right-padded and run without an attention mask
(:func:`~alignkit.models.hf_padding.pad_right`: exact for a causal model, and the mask
builder reads the device once per forward instead of twice); logits are asked for from the
first position that predicts a completion token on (``logits_to_keep``): no vocabulary
projection or log-softmax over the prompt tokens before it, which dominates the cost for
large-vocabulary models. With a plain linear head only the completion-predicting positions
are projected (:mod:`alignkit.dpo.fused_logps`); else the log-softmax at the target ids is
taken chunk by chunk (:func:`token_log_probs`), so neither a float32 copy of the logits nor
the full log-softmax is held for the backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alignkit.dpo.fused_logps import fusable_head, linear_token_log_probs
from alignkit.dpo.prefix_sharing import (
    MASKED_IMPLEMENTATIONS,
    attention_implementation,
    attention_mask,
    shared_layout,
)
from alignkit.models.hf_padding import forward_parameters, no_cache, pad_right


@dataclass
class SequenceLogps:
    """Summed log-probs ``logps[b, k]`` of completion k of example b, and its token count."""

    logps: torch.Tensor  # [B, K] (float32)
    tokens: torch.Tensor  # [B, K] (float32); 0 where example b has fewer than k+1 completions

    @property
    def mask(self) -> torch.Tensor:
        return self.tokens > 0


_CHUNK_ELEMENTS = 1 << 24  # logits processed at once by token_log_probs (64 MiB in float32)


class _TokenLogProbs(torch.autograd.Function):
    """``log_softmax(logits.float())`` at the target ids, in chunks of rows.

    Neither a float32 copy of all the logits nor the full log-softmax is materialised: the
    forward saves the logits as they are (bf16 under autocast) and the per-position
    log-sum-exp, and the backward recomputes the softmax chunk by chunk
    (``d/dlogits = onehot(target) - softmax``). Same values and gradients as
    ``log_softmax(logits.float()).gather(...)``; with a 152k vocabulary the peak memory of a
    forward and backward fell by half under bf16 autocast and by a quarter in float32.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        rows, steps = targets.shape
        out = torch.empty((rows, steps), dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(out)
        for start, end in _row_chunks(logits, steps):
            chunk = logits[start:end, :steps].float()
            lse[start:end] = torch.logsumexp(chunk, dim=-1)
            picked = chunk.gather(-1, targets[start:end].unsqueeze(-1)).squeeze(-1)
            out[start:end] = picked - lse[start:end]
        ctx.save_for_backward(logits, targets, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        steps = targets.shape[1]
        grad = torch.zeros(logits.shape, dtype=logits.dtype, device=logits.device)
        for start, end in _row_chunks(logits, steps):
            g = grad_out[start:end].float().unsqueeze(-1)
            chunk = logits[start:end, :steps].to(torch.float32, copy=True)
            chunk.sub_(lse[start:end].unsqueeze(-1)).exp_().mul_(-g)  # -softmax * g
            chunk.scatter_add_(-1, targets[start:end].unsqueeze(-1), g)
            grad[start:end, :steps] = chunk
        return grad, None


def _row_chunks(logits: torch.Tensor, steps: int):
    per_row = max(1, steps * logits.shape[-1])
    size = max(1, _CHUNK_ELEMENTS // per_row)
    for start in range(0, logits.shape[0], size):
        yield start, min(start + size, logits.shape[0])


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits[:, :T].float(), -1)`` gathered at ``targets`` ([R, T] ids), as
    float32 [R, T]; differentiable, with a memory-lean backward (see :class:`_TokenLogProbs`).
    ``logits`` is [R, T', V] with T' >= T; positions from T on are ignored."""
    return _TokenLogProbs.apply(logits, targets)


def _keep_argument(model) -> str | None:
    """The name under which ``model.forward`` accepts "logits for the last N positions"."""
    params = forward_parameters(model)
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return name
    return None


def batch_rows(examples: Sequence[Any]) -> tuple[list[list[int]], list[int], list[tuple[int, int]]]:
    """Flatten examples into rows ``prompt + completion``; return rows, completion lengths and
    the (example, completion) index of each row."""
    rows, lengths, where = [], [], []
    for b, ex in enumerate(examples):
        for k, completion in enumerate(ex.completion_ids):
            rows.append(list(ex.prompt_ids) + list(completion))
            lengths.append(len(completion))
            where.append((b, k))
    return rows, lengths, where


def to_device(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """Host integers as a long tensor on ``device``, copied without waiting for the work
    already queued there (a blocking copy to a GPU first drains its stream)."""
    return torch.tensor(values, dtype=torch.long).to(device, non_blocking=True)


def _plain_sums(model, name, ids, starts, lengths) -> torch.Tensor:
    """Per-row summed completion log-probs from the model's logits, kept from the first
    position that predicts a completion token on."""
    device = ids.device
    first = max(min(starts) - 1, 0)  # the first position whose logits are needed
    keep = ids.shape[1] - first
    # position first + j predicts token first + j + 1
    target = torch.arange(first + 1, ids.shape[1], device=device).unsqueeze(0)
    lens, begin = to_device(lengths, device).unsqueeze(1), to_device(starts, device).unsqueeze(1)
    kwargs = {name: keep} if name is not None else {}
    kwargs |= no_cache(model)
    logits = model(input_ids=ids, **kwargs).logits  # right-padded: no mask (see pad_right)
    if logits.shape[1] != keep:  # the model ignored logits_to_keep (or has no such argument)
        logits = logits[:, -keep:]
    token_logps = token_log_probs(logits, ids[:, first + 1 :])
    in_completion = (target >= begin) & (target < begin + lens)
    return torch.where(in_completion, token_logps, 0.0).sum(-1)


def _head_input(model, head, name, ids, mask, positions) -> torch.Tensor | None:
    """The final hidden states ``[rows, T, d]`` that ``head`` projects to logits; None when the
    model's last hidden state is not what its head reads. Checked on the first forward through
    ``head``, on the one position whose logits the forward returns (reading the verdict waits
    for the device, so once per head, not per batch: it is a property of the architecture); the
    head is then marked to be fused from then on, or never again."""
    checked = getattr(head, "_alignkit_fused_checked", False)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                output_hidden_states=True, **{name: 1}, **no_cache(model))  # fmt: skip
    hidden = out.hidden_states[-1]
    if checked:
        return hidden
    head._alignkit_fused_checked = True
    with torch.no_grad():
        expected = out.logits[:, -1].float()
        ours = torch.nn.functional.linear(hidden[:, -1], head.weight, head.bias)  # as fused
        error = (ours.float() - expected).abs().max()
        if error > 1e-2 * expected.abs().max() + 1e-5:  # (bf16 rounding passes; a pre-norm or
            head._alignkit_unfused = True  # rescaled hidden state does not): never again
            return None
    return hidden


def _shared_sums(model, examples, pad_id, name, head) -> torch.Tensor | None:
    """Per-completion summed log-probs with each example's prompt computed once and examples
    packed into rows (:mod:`alignkit.dpo.prefix_sharing`); None where that layout cannot run
    (an attention implementation without custom masks, an empty prompt, an unfusable head)."""
    implementation = attention_implementation(model)
    layout = shared_layout(examples, pad_id) if implementation in MASKED_IMPLEMENTATIONS else None
    if layout is None:
        return None
    weight = next(model.parameters())
    layout = layout.to(weight.device)
    mask = attention_mask(layout, implementation, weight.dtype)
    if head is not None:
        hidden = _head_input(model, head, name, layout.ids, mask, layout.positions)
        if hidden is None:
            return None
        logps = linear_token_log_probs(hidden[layout.row, layout.at], head, layout.target)
    else:
        kwargs = {name: 0} if name is not None else {}  # 0: the logits of every position
        kwargs |= no_cache(model)
        out = model(input_ids=layout.ids, attention_mask=mask, position_ids=layout.positions,
                    **kwargs)  # fmt: skip
        picked = out.logits[layout.row, layout.at]
        logps = token_log_probs(picked[None], layout.target[None])[0]
    sums = torch.zeros(len(layout.lengths), dtype=logps.dtype, device=logps.device)
    return sums.index_add(0, layout.sequence, logps)


def _fused_sums(model, head, name, ids, starts, lengths) -> torch.Tensor | None:
    """The same sums from the final hidden states of the completion-predicting positions only,
    through :func:`~alignkit.dpo.fused_logps.linear_token_log_probs`; None when the model's
    last hidden state is not what its head reads (checked on the one position whose logits the
    forward returns), so that the caller takes the plain path."""
    device = ids.device
    row = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    offset = torch.cat([torch.arange(n) for n in lengths])
    at = torch.tensor(starts)[row] - 1 + offset  # position predicting the token
    row, at = row.to(device, non_blocking=True), at.to(device, non_blocking=True)
    hidden = _head_input(model, head, name, ids, None, None)  # right-padded: no mask
    if hidden is None:
        return None
    logps = linear_token_log_probs(hidden[row, at], head, ids[row, at + 1])
    sums = torch.zeros(len(lengths), dtype=logps.dtype, device=device)
    return sums.index_add(0, row, logps)


def get_log_probs(
    model, examples: Sequence[Any], pad_id: int = 0, fused: bool = True, share_prompt: bool = False
) -> SequenceLogps:
    """Summed log-probs of every completion of ``examples`` (TokenizedExample-like objects with
    ``prompt_ids`` and ``completion_ids``) under ``model``; differentiable.

    Rows are padded on the right and run causally with no mask (see
    :func:`~alignkit.models.hf_padding.pad_right`). With left padding, a row's pad positions
    attend to nothing; CUDA's memory-efficient attention returns finite outputs for such fully
    masked rows but NaN gradients for them (seen on an H200 with torch 2.11: a finite loss,
    then every weight NaN after the update), and the NaN reaches the shared weights however
    the loss masks them. Right-padded pad positions see their row's real tokens.
    Logits are kept only from the first position that predicts a completion token on; with
    ``fused`` (and a plain linear head) only the completion-predicting positions are projected,
    chunk by chunk, and the full logits never exist (:mod:`alignkit.dpo.fused_logps`). With
    ``share_prompt`` each example's prompt is computed once for all of its completions and
    examples are packed into rows (:mod:`alignkit.dpo.prefix_sharing`), where the model's
    attention implementation takes a custom mask; else the rows above are used.
    """
    device = next(model.parameters()).device
    rows, lengths, where = batch_rows(examples)
    name = _keep_argument(model)
    head = fusable_head(model) if fused and name is not None else None
    sums = _shared_sums(model, examples, pad_id, name, head) if share_prompt else None
    if sums is None:  # one padded row per completion
        starts = [len(row) - n for row, n in zip(rows, lengths, strict=True)]  # first completion
        ids = pad_right(rows, pad_id).to(device, non_blocking=True)
        args = (ids, starts, lengths)
        if head is not None:
            sums = _fused_sums(model, head, name, *args)
        if sums is None:
            sums = _plain_sums(model, name, *args)
    lens = to_device(lengths, device).unsqueeze(1)
    n_examples = len(examples)
    n_completions = max(len(ex.completion_ids) for ex in examples)
    logps = torch.zeros((n_examples, n_completions), device=device)
    tokens = torch.zeros((n_examples, n_completions), device=device)
    index = to_device([b * n_completions + k for b, k in where], device)
    logps = logps.view(-1).index_put((index,), sums).view(n_examples, n_completions)
    tokens = tokens.view(-1).index_put((index,), lens.squeeze(1).float())
    return SequenceLogps(logps, tokens.view(n_examples, n_completions))


@torch.no_grad()
def get_ref_log_probs(
    reference, examples: Sequence[Any], pad_id: int = 0, share_prompt: bool = False
) -> SequenceLogps:
    """Log-probs under the reference: a frozen model, or a PEFT model with its adapter disabled
    (the reference of LoRA training, with no second model in memory)."""
    if hasattr(reference, "disable_adapter"):
        with reference.disable_adapter():
            return get_log_probs(reference, examples, pad_id, share_prompt=share_prompt)
    return get_log_probs(reference, examples, pad_id, share_prompt=share_prompt)
