"""How diverse a set of attack prompts is: self-BLEU and mean pairwise embedding distance.

**Self-BLEU** (Zhu et al. 2018, "Texygen: A Benchmarking Platform for Text Generation
Models") scores each text with BLEU against all the others as references and averages; 1
means every text repeats the others, values near 0 mean they share no n-grams. Lower is more
diverse. Our BLEU works on whitespace tokens (lower-cased), clips each n-gram count by its
largest count in any single reference, uses a brevity penalty against the reference length
closest to the hypothesis, and smooths orders with no matching n-gram by counting
``epsilon`` matches instead of zero (Chen & Cherry 2014, smoothing "method 1"), so one
missing 4-gram does not zero the score. The clipping counts come from a per-n-gram table of
the two largest counts over all texts, so scoring ``N`` texts is linear in their total length
rather than quadratic.

**Embedding distance**: given any embedding function (a sentence-transformers model's
``encode``, or :class:`MeanPooledEncoder` over a Hugging Face encoder), the mean cosine
distance ``1 - cos`` over all pairs of texts. Higher is more diverse.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

Embedder = Callable[[list[str]], Any]
"""A function from texts to one vector per text (a list of lists, an array or a tensor)."""


def _tokens(text: str) -> list[str]:
    return text.lower().split()


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


class _ClipTable:
    """For every n-gram: the largest count in any text, which text holds it, the runner-up.

    The clip count of an n-gram for hypothesis ``i`` against all other texts is the largest
    count if another text holds it, else the runner-up.
    """

    def __init__(self, counts: list[Counter]) -> None:
        self.best: dict[tuple, tuple[int, int, int]] = {}  # gram -> (top, owner, second)
        for i, counter in enumerate(counts):
            for gram, c in counter.items():
                top, owner, second = self.best.get(gram, (0, -1, 0))
                if c > top:
                    self.best[gram] = (c, i, top)
                else:
                    self.best[gram] = (top, owner, max(second, c))

    def clip(self, gram: tuple, count: int, i: int) -> int:
        top, owner, second = self.best[gram]
        return min(count, second if owner == i else top)


def _closest_length(lengths: list[int], own: int, hyp_len: int) -> int:
    """The length in sorted ``lengths`` (which contains ``own`` once for this text) closest
    to ``hyp_len`` after removing ``own``; ties go to the shorter, as in BLEU."""
    others = list(lengths)
    others.pop(bisect.bisect_left(others, own))
    j = bisect.bisect_left(others, hyp_len)
    near = [others[k] for k in (j - 1, j) if 0 <= k < len(others)]
    return min(near, key=lambda r: (abs(r - hyp_len), r))


def self_bleu(texts: Sequence[str], max_n: int = 4, epsilon: float = 0.1) -> float:
    """Mean BLEU of each text against all the others (lower = more diverse).

    Orders above a text's length are left out of its geometric mean (a 2-token text is scored
    on unigrams and bigrams). Empty texts score 0. Needs at least two texts.
    """
    if len(texts) < 2:
        raise ValueError(f"self-BLEU needs at least two texts, got {len(texts)}")
    tokens = [_tokens(t) for t in texts]
    lengths = sorted(len(t) for t in tokens)
    tables = []
    counts_by_order = []
    for n in range(1, max_n + 1):
        counts = [_ngrams(t, n) for t in tokens]
        counts_by_order.append(counts)
        tables.append(_ClipTable(counts))
    scores = []
    for i, hyp in enumerate(tokens):
        if not hyp:
            scores.append(0.0)
            continue
        log_precision = 0.0
        orders = min(max_n, len(hyp))
        for n in range(1, orders + 1):
            counts = counts_by_order[n - 1][i]
            total = sum(counts.values())
            matched = sum(tables[n - 1].clip(g, c, i) for g, c in counts.items())
            log_precision += math.log((matched or epsilon) / total)
        ref_len = _closest_length(lengths, len(hyp), len(hyp))
        brevity = 1.0 if len(hyp) >= ref_len else math.exp(1 - ref_len / len(hyp))
        scores.append(brevity * math.exp(log_precision / orders))
    return sum(scores) / len(scores)


def embedding_distance(texts: Sequence[str], embed: Embedder) -> float:
    """Mean pairwise cosine distance ``1 - cos(u, v)`` of the texts' embeddings."""
    if len(texts) < 2:
        raise ValueError(f"embedding distance needs at least two texts, got {len(texts)}")
    vectors = embed(list(texts))
    if not isinstance(vectors, torch.Tensor):
        vectors = torch.as_tensor(vectors)
    vectors = torch.nn.functional.normalize(vectors.detach().double().cpu(), dim=-1)
    sims = vectors @ vectors.T
    n = len(texts)
    off_diagonal = (sims.sum() - sims.diagonal().sum()) / (n * (n - 1))
    return float(1.0 - off_diagonal)


def diversity(texts: Sequence[str], embed: Embedder | None = None) -> dict[str, float | None]:
    """``{"self_bleu", "embedding_distance", "n"}`` of the texts (None where not computable)."""
    enough = len(texts) >= 2
    return {
        "n": len(texts),
        "self_bleu": self_bleu(texts) if enough else None,
        "embedding_distance": embedding_distance(texts, embed) if enough and embed else None,
    }


class MeanPooledEncoder:
    """An embedding function from a Hugging Face encoder: mean of the last hidden states over
    the non-padding tokens. ``MeanPooledEncoder("path/to/encoder")`` or pass a loaded
    ``(model, tokenizer)``; remote code is never trusted."""

    def __init__(
        self,
        model: str | Any,
        tokenizer: Any = None,
        batch_size: int = 32,
        max_length: int = 256,
        device: str = "cpu",
    ) -> None:
        if isinstance(model, str):
            from transformers import AutoModel, AutoTokenizer

            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModel.from_pretrained(model, use_safetensors=True)
        if tokenizer is None:
            raise ValueError("a loaded model needs its tokenizer")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        from alignkit.models.hf_padding import no_cache

        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch, **no_cache(self.model)).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
        return torch.cat(out).float().cpu()
