"""Batch-invariant sampling for the Hugging Face backend: Gumbel-max with counter-based noise.

Each row of a batch carries its prompt's 64-bit sample key (:mod:`alignkit.models.sampling`).
At generation step ``t`` (the number of tokens the row has generated so far) token ``v`` gets
the uniform number ``hash(key, t, v)``: a keyed integer hash computed elementwise on the
device, i.e. a counter-based random number generator in the sense of Salmon et al. (2011),
"Parallel random numbers: as easy as 1, 2, 3". No generator state is shared between rows, so
a row's noise is the same whatever else is in its batch, whether it runs alone or in a batch of
64, on CPU or CUDA.

The token is then drawn by the Gumbel-max trick (Gumbel 1954; see Maddison, Tarlow and Minka
2014, "A* Sampling"): ``argmax_v (s_v + G_v)`` with ``G_v = -log(-log U_v)`` is a sample of
``softmax(s)``. ``s`` are the model's float32 next-token logits after transformers' own
temperature, top-k and top-p warpers (in that order, as transformers applies them), so the
distribution is exactly the one ``do_sample=True`` samples from; generation itself runs with
``do_sample=False`` and this processor last, and transformers' argmax makes the draw.

Sampled text is then as batch-invariant as the logits are: the noise is identical, and a draw
can only change where the model's logits differ between batch shapes by more than the gap
between the two best perturbed scores (rounding of float32 matrix products of other shapes;
large with bfloat16 weights).
"""

from __future__ import annotations

import torch
from transformers import (
    LogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from alignkit.models.base import GenerationConfig

_MASK = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _mul32_(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for int64 ``x`` in [0, 2**32), without overflowing int64; in place
    (one temporary: a [rows, vocab] hash runs at memory speed, not allocation speed)."""
    lo, hi = c & 0xFFFF, c >> 16
    high = x * hi
    high &= 0xFFFF
    high <<= 16
    x *= lo
    x += high
    x &= _MASK
    return x


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser: a bijection of [0, 2**32) with full avalanche. Overwrites
    ``h`` (every caller passes a fresh tensor) and returns it."""
    h ^= h >> 16
    _mul32_(h, 0x85EBCA6B)
    h ^= h >> 13
    _mul32_(h, 0xC2B2AE35)
    h ^= h >> 16
    return h


def key_words(keys: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """64-bit sample keys as a ``[rows, 2]`` int64 tensor of their two 32-bit halves."""
    return torch.tensor([[k >> 32, k & _MASK] for k in keys], dtype=torch.long, device=device)


def row_words(words: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """``[rows]`` int64 words in [0, 2**32): one per (row key, step). ``step`` is one int for all
    rows or an int64 tensor with each row's own step (continuous batching)."""
    h = _fmix32(words[:, 0] ^ _GOLDEN)
    h = _fmix32(h ^ words[:, 1])
    return _fmix32(h ^ (step & _MASK))


def token_bits(row: torch.Tensor, vocab: int) -> torch.Tensor:
    """``[rows, vocab]`` int64 hashes in [0, 2**32) of each row word and token id."""
    salt = _fmix32(row ^ _GOLDEN)
    tokens = torch.arange(vocab, device=row.device, dtype=torch.long)
    bits = _fmix32(row[:, None] ^ tokens[None, :])
    bits ^= salt[:, None]
    return _fmix32(bits)


def uniform_bits(words: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """``[rows, vocab]`` int64 hashes in [0, 2**32), a function of (row key, step, token) only."""
    return token_bits(row_words(words, step), vocab)


def gumbel_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log U)`` in float32 from 32-bit hashes,
    ``U = (bits + 0.5) / 2**32``.

    ``-log U`` is computed from whichever of ``U`` and ``1 - U`` is smaller, so float32 keeps
    its precision at both ends (``U`` close to 1 would otherwise round to 1 and give infinity).
    """
    low = bits < 2**31
    tail = (torch.where(low, bits, _MASK - bits).to(torch.float32) + 0.5) * 2.0**-32
    exponential = torch.where(low, -torch.log(tail), -torch.log1p(-tail))
    return -torch.log(exponential)


def gumbel_noise(words: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """Each row's standard Gumbel noise over the vocabulary at ``step`` (float32)."""
    return gumbel_from_bits(uniform_bits(words, step, vocab))


def sampling_warpers(config: GenerationConfig) -> list[LogitsProcessor]:
    """transformers' temperature, top-k and top-p warpers for ``config``, in the order
    ``do_sample=True`` applies them."""
    warpers: list[LogitsProcessor] = []
    if config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k > 0:
        warpers.append(TopKLogitsWarper(config.top_k))
    if config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(config.top_p))
    return warpers


class GumbelSampler(LogitsProcessor):
    """Warp the logits as ``do_sample=True`` would and add each row's own Gumbel noise.

    ``start`` is the column where generated tokens begin (the padded prompt width), so the step
    of a row is ``input_ids.shape[1] - start``. :meth:`select` keeps the rows that stay in the
    batch when finished rows leave it (the backend's refill rounds).
    """

    def __init__(self, config: GenerationConfig, keys: list[int], start: int, device) -> None:
        self.warpers = sampling_warpers(config)
        self.words = key_words(keys, device)
        self.start = start

    def select(self, index: torch.Tensor) -> None:
        """Keep only the rows at ``index`` (positions in the current batch)."""
        self.words = self.words.index_select(0, index.to(self.words.device))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        scores = scores.to(torch.float32)
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        noise = gumbel_noise(self.words, input_ids.shape[1] - self.start, scores.shape[-1])
        return scores + noise.to(scores.device)
