"""Padding token id lists into batches, stopping a padded batch's rows at stop strings, and
what a model's forward takes (forwards that build no KV cache)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence

import torch
from transformers import StoppingCriteria


class StopOnStrings(StoppingCriteria):
    """Marks a sequence finished as soon as its generated text holds a stop string.

    Generated text starts at column ``start`` (the batch is left-padded); only the last few
    tokens are decoded each step, so a stop string is caught the step it appears.
    """

    def __init__(self, tokenizer, stops: Sequence[str], start: int) -> None:
        self.tokenizer = tokenizer
        self.stops = list(stops)
        self.start = start
        self.window = 4 * max(len(s) for s in stops) + 4

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        start = max(self.start, input_ids.shape[1] - self.window)
        texts = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
        hits = [any(s in t for s in self.stops) for t in texts]
        return torch.tensor(hits, dtype=torch.bool, device=input_ids.device)


def pad_token_ids(
    seqs: Sequence[list[int]], pad_id: int, left: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists to one ``[batch, max_len]`` tensor; return ``(ids, attention_mask)``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, cols] = torch.tensor(seq, dtype=torch.long)
        mask[row, cols] = 1
    return ids, mask


def pad_right(seqs: Sequence[list[int]], pad_id: int) -> torch.Tensor:
    """Right-padded ``[batch, max_len]`` ids for a causal LM forward that is read at real
    positions only, to be passed with no attention mask and no position ids.

    A causal model's position i sees positions <= i only, so a right-padded row's real tokens,
    which all come before its padding, are computed exactly as without the padding, and the
    default positions 0, 1, ... are theirs (pad positions see the real tokens and the pads
    before them: finite, and never read). The padding mask would buy nothing and cost, in
    transformers' mask builder: two reads of it back from the device per forward (is there
    padding? is it only past the query?), each a host sync on a GPU, and a 4-D mask, which
    rules out SDPA's causal fast path (FlashAttention). Without it SDPA runs ``is_causal``
    and the builder reads once (the position ids, which the model makes itself when none are
    given, checked for packed sequences). Bit for bit the masked forward on CPU for the
    testbed (``tests/test_dpo_trainer.py``).
    """
    return pad_token_ids(seqs, pad_id, left=False)[0]


def no_cache(model) -> dict:
    """``{"use_cache": False}`` where ``model``'s forward takes ``use_cache``, else ``{}``: the
    keyword for a forward that only reads logits or hidden states (training, scoring).

    A decoder's forward builds a KV cache by default (``config.use_cache``); nothing reads it
    there, and it costs more than memory: each layer writes its own cache slot, so a layer
    compiled with ``torch.compile`` guards on that slot and recompiles once per layer, and past
    torch's ``recompile_limit`` (8) the remaining layers silently run eager (measured on a
    12-layer Qwen2: 8 graphs and 4 eager layers with the cache, one graph for all 12 without).
    """
    return {"use_cache": False} if "use_cache" in forward_parameters(model) else {}


def base_model(model):
    """The transformers model inside a DistributedDataParallel and a PEFT wrapper, if any."""
    base = getattr(model, "module", model)  # DistributedDataParallel
    return base.get_base_model() if hasattr(base, "get_base_model") else base  # PEFT


def forward_parameters(model) -> frozenset[str]:
    """The keyword names that ``model``'s (unwrapped) forward takes."""
    return _forward_parameters(type(base_model(model)))


@functools.cache
def _forward_parameters(cls) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)
