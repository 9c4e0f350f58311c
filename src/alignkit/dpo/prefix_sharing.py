"""Prefix sharing: a pair's prompt goes through the model once, for all of its completions.

Wang et al. (2024), "Accelerating Direct Preference Optimization with Prefix Sharing": instead of
two rows ``prompt + chosen`` and ``prompt + rejected``, one sequence ``prompt + chosen +
rejected`` with an attention mask under which each completion sees the prompt and itself, never
the other completion, and position ids that restart each completion where the prompt ends. Every
completion token then has exactly the context it has in its own row, so the log-probs are the
same (up to float rounding), while the prompt's tokens are computed once instead of twice (on
preference data with ~150-token prompts and ~270-token responses, 18% fewer tokens).

Sequences are also packed: several examples share a row (first fit, longest first, rows no
longer than the longest example), and examples in one row never attend to each other, so
little of a batch is padding. The masks are built for the model's attention implementation: a
boolean ``[rows, 1, T, T]`` mask for ``sdpa``, an additive one for ``eager``, a FlexAttention
``BlockMask`` for ``flex_attention`` (the efficient one on GPUs: it skips masked blocks); others
(FlashAttention, which takes no custom mask) are not supported and the caller keeps the plain
layout. The dense masks cost ``T^2`` per row and attention over whole rows, so on CPU this pays
only where the saved prompt tokens outweigh that (measured in ``benchmarks/dpo_vs_trl.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alignkit.models.hf_padding import base_model

MASKED_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention")


@dataclass
class SharedLayout:
    """Packed rows and, for every completion token, where it is predicted from.

    ``ids``/``positions``/``doc``/``segment`` are ``[rows, T]``: token ids, position ids, the
    example each token belongs to (-1: padding) and its part (0: prompt, k + 1: completion k).
    ``row``/``at``/``target`` give, per completion token, the row and position whose hidden state
    predicts it and the token; ``sequence`` numbers the completions in ``(example, completion)``
    order, whose lengths are ``lengths``.
    """

    ids: torch.Tensor
    positions: torch.Tensor
    doc: torch.Tensor
    segment: torch.Tensor
    row: torch.Tensor
    at: torch.Tensor
    target: torch.Tensor
    sequence: torch.Tensor
    lengths: list[int]

    def to(self, device) -> SharedLayout:
        moved = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                 for k, v in vars(self).items()}  # fmt: skip
        return SharedLayout(**moved)


def _bins(sizes: list[int]) -> list[list[int]]:
    """First-fit decreasing: example indices grouped into rows of at most ``max(sizes)``."""
    capacity = max(sizes)
    rows: list[list[int]] = []
    used: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        slot = next((r for r, u in enumerate(used) if u + sizes[i] <= capacity), None)
        if slot is None:
            rows.append([i])
            used.append(sizes[i])
        else:
            rows[slot].append(i)
            used[slot] += sizes[i]
    return rows


def shared_layout(examples: Sequence[Any], pad_id: int) -> SharedLayout | None:
    """The packed prefix-sharing layout of ``examples`` (objects with ``prompt_ids`` and
    ``completion_ids``); None if an example has no prompt token (nothing would predict its
    completions' first tokens)."""
    if any(len(ex.prompt_ids) == 0 for ex in examples):
        return None
    sizes = [len(ex.prompt_ids) + sum(map(len, ex.completion_ids)) for ex in examples]
    first_seq = [0]
    for ex in examples:
        first_seq.append(first_seq[-1] + len(ex.completion_ids))
    bins = _bins(sizes)
    width = max(sizes)
    ids = torch.full((len(bins), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(bins), width), dtype=torch.long)
    doc = torch.full((len(bins), width), -1, dtype=torch.long)
    segment = torch.full((len(bins), width), -1, dtype=torch.long)
    row, at, target, sequence = [], [], [], []
    for r, members in enumerate(bins):
        offset = 0
        for b in members:
            prompt = list(examples[b].prompt_ids)
            n = len(prompt)
            ids[r, offset : offset + n] = torch.tensor(prompt)
            positions[r, offset : offset + n] = torch.arange(n)
            segment[r, offset : offset + n] = 0
            start = offset + n
            for k, completion in enumerate(examples[b].completion_ids):
                m = len(completion)
                ids[r, start : start + m] = torch.tensor(list(completion), dtype=torch.long)
                positions[r, start : start + m] = torch.arange(n, n + m)
                segment[r, start : start + m] = k + 1
                # token j is predicted by the token before it; the first by the prompt's last
                at += [offset + n - 1, *range(start, start + m - 1)]
                target += list(completion)
                row += [r] * m
                sequence += [first_seq[b] + k] * m
                start += m
            doc[r, offset:start] = b
            offset = start
    lengths = [len(c) for ex in examples for c in ex.completion_ids]
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return SharedLayout(ids, positions, doc, segment, as_long(row), as_long(at),
                        as_long(target), as_long(sequence), lengths)  # fmt: skip


def allowed(doc: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """``[rows, T, T]``: query i may attend to key j (same example, j <= i, and j is in the
    prompt or in i's own part). Padding attends to itself, so no query row is fully masked."""
    index = torch.arange(doc.shape[1], device=doc.device)
    causal = index[:, None] >= index[None, :]
    same_doc = doc[:, :, None] == doc[:, None, :]
    visible = (segment[:, None, :] == 0) | (segment[:, :, None] == segment[:, None, :])
    return causal[None] & same_doc & visible


def attention_mask(layout: SharedLayout, implementation: str, dtype: torch.dtype):
    """The mask of ``layout`` in the form ``implementation`` takes (see the module docstring)."""
    if implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        doc, segment = layout.doc, layout.segment

        def mask_mod(b, h, q, kv):
            visible = (segment[b, kv] == 0) | (segment[b, kv] == segment[b, q])
            return (q >= kv) & (doc[b, q] == doc[b, kv]) & visible

        rows, width = doc.shape
        return create_block_mask(mask_mod, rows, None, width, width, device=doc.device)
    mask = allowed(layout.doc, layout.segment)[:, None]
    if implementation == "sdpa":
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, torch.finfo(dtype).min
    )


def attention_implementation(model) -> str | None:
    """The attention implementation ``model`` runs (``config._attn_implementation``)."""
    config = getattr(base_model(model), "config", None)
    return getattr(config, "_attn_implementation", None)
