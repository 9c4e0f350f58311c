"""Sequence log-probabilities of completions under a causal LM, computed without waste.

All completions of a batch (chosen and rejected, or the K ranked responses) go through the
model in one forward pass. Rows are left-padded, so every completion ends at the right edge of
the batch and the model is asked for logits of the last ``max completion length`` positions
only (``logits_to_keep``): no vocabulary projection or log-softmax over prompt tokens, which
dominates the cost for large-vocabulary models. Explicit position ids keep left padding exact
for every position-embedding scheme.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class SequenceLogps:
    """Summed log-probs ``logps[b, k]`` of completion k of example b, and its token count."""

    logps: torch.Tensor  # [B, K] (float32)
    tokens: torch.Tensor  # [B, K] (float32); 0 where example b has fewer than k+1 completions

    @property
    def mask(self) -> torch.Tensor:
        return self.tokens > 0


def _keep_argument(model) -> str | None:
    """The name under which ``model.forward`` accepts "logits for the last N positions"."""
    base = getattr(model, "module", model)  # DistributedDataParallel wraps the model
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    params = inspect.signature(base.forward).parameters
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


def get_log_probs(model, examples: Sequence[Any], pad_id: int = 0) -> SequenceLogps:
    """Summed log-probs of every completion of ``examples`` (TokenizedExample-like objects with
    ``prompt_ids`` and ``completion_ids``) under ``model``; differentiable."""
    device = next(model.parameters()).device
    rows, lengths, where = batch_rows(examples)
    width = max(len(r) for r in rows)
    keep = max(lengths) + 1
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    kwargs = {}
    name = _keep_argument(model)
    if name is not None:
        kwargs[name] = keep
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs).logits
    logits = logits[:, -keep:-1].float()  # predictions for the last keep-1 tokens
    targets = ids[:, -keep + 1 :]
    token_logps = torch.gather(logits.log_softmax(-1), 2, targets.unsqueeze(-1)).squeeze(-1)
    span = torch.arange(keep - 1, device=device).unsqueeze(0)
    lens = torch.tensor(lengths, device=device).unsqueeze(1)
    in_completion = span >= (keep - 1 - lens)
    sums = (token_logps * in_completion).sum(-1)
    n_examples = len(examples)
    n_completions = max(len(ex.completion_ids) for ex in examples)
    logps = torch.zeros((n_examples, n_completions), device=device)
    tokens = torch.zeros((n_examples, n_completions), device=device)
    index = torch.tensor([b * n_completions + k for b, k in where], device=device)
    logps = logps.view(-1).index_put((index,), sums).view(n_examples, n_completions)
    tokens = tokens.view(-1).index_put((index,), lens.squeeze(1).float())
    return SequenceLogps(logps, tokens.view(n_examples, n_completions))


@torch.no_grad()
def get_ref_log_probs(reference, examples: Sequence[Any], pad_id: int = 0) -> SequenceLogps:
    """Log-probs under the reference: a frozen model, or a PEFT model with its adapter disabled
    (the reference of LoRA training, with no second model in memory)."""
    if hasattr(reference, "disable_adapter"):
        with reference.disable_adapter():
            return get_log_probs(reference, examples, pad_id)
    return get_log_probs(reference, examples, pad_id)
