"""Tensor-level pieces of GCG (see :mod:`alignkit.redteam.gcg`): candidate sampling, the
retokenisation filter, the allowed-token set, and exact candidate scoring that reuses KV caches.

Scoring never runs the fixed prompt prefix again: its KV cache is computed once per behaviour and
broadcast across each batch of candidates. Candidates that agree with the string they were
sampled from up to position ``p`` also share the cache of the optimised tokens before ``p``, so a
step costs roughly the tokens from the first changed position on, not the whole prompt.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from alignkit.errors import ConfigError
from alignkit.models.base import Message

PLACEHOLDER = "{optim_str}"


# ----------------------------------------------------------------------------- candidates


def allowed_tokens(
    tokenizer, vocab_rows: int, allow_non_ascii: bool = False, prefix: str = ""
) -> torch.Tensor:
    """Ids a candidate may use: never special tokens nor embedding rows past the tokenizer's
    vocabulary; unless ``allow_non_ascii``, only tokens decoding to printable ASCII; only tokens
    whose text starts with ``prefix``."""
    n = min(len(tokenizer), vocab_rows)
    texts = tokenizer.batch_decode([[i] for i in range(n)])
    keep = torch.tensor([bool(t) and t.startswith(prefix) for t in texts])
    if not allow_non_ascii:
        keep &= torch.tensor([t.isascii() and t.isprintable() for t in texts])
    banned = set(tokenizer.all_special_ids)
    banned |= {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    keep[[i for i in banned if i < n]] = False
    return keep.nonzero()[:, 0]


def sample_candidates(
    ids: torch.Tensor,
    grad: torch.Tensor,
    search_width: int,
    topk: int,
    n_replace: int,
    allowed: torch.Tensor,
    generator: torch.Generator | None = None,
    first_allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[search_width, len(ids)]`` candidates: each puts tokens drawn uniformly from the top-k
    (most negative gradient) ``allowed`` ids at ``n_replace`` distinct random positions of
    ``ids``; position 0 draws from ``first_allowed`` instead, when given."""
    n, device = ids.shape[0], ids.device
    scores = torch.full_like(grad, float("inf"))
    scores[:, allowed] = grad[:, allowed]
    k = min(topk, len(allowed))
    if first_allowed is not None:
        scores[0] = float("inf")
        scores[0, first_allowed] = grad[0, first_allowed]
        k = min(k, len(first_allowed))
    top = (-scores).topk(k, dim=1).indices  # [n, k]
    rand = torch.rand((search_width, n), generator=generator, device=device)
    positions = rand.argsort(dim=1)[:, : min(n_replace, n)]  # [W, r]
    picks = torch.randint(k, positions.shape, generator=generator, device=device)
    return ids.repeat(search_width, 1).scatter_(1, positions, top[positions, picks])


def retokenization_mask(tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """True for the rows of ``ids`` that decode -> encode back to the same token ids."""
    rows = ids.tolist()
    texts = tokenizer.batch_decode(rows)
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ok = [e == r for e, r in zip(encoded, rows, strict=True)]
    return torch.tensor(ok, dtype=torch.bool, device=ids.device)


class AttackBuffer:
    """The ``size`` best (loss, ids) seen; size 0 keeps only the latest (plain GCG)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: list[tuple[float, torch.Tensor]] = []

    def add(self, loss: float, ids: torch.Tensor) -> None:
        if self.size == 0:
            self.entries = [(loss, ids)]
            return
        if len(self.entries) < self.size:
            self.entries.append((loss, ids))
        elif loss < self.entries[-1][0]:
            self.entries[-1] = (loss, ids)
        self.entries.sort(key=lambda e: e[0])

    def best_ids(self) -> torch.Tensor:
        return self.entries[0][1]


# ----------------------------------------------------------------------------- scoring

KV = list[tuple[torch.Tensor, torch.Tensor]]
BUCKET_ROWS = 64  # candidates per bucket of shared-prefix scoring, at least
MAX_BUCKETS = 8


@dataclass
class Problem:
    """One behaviour tokenised around the optimised string, ``[before][optim][after][target]``
    (each ``[1, len]``); ``prefix`` is the KV cache of ``before`` (per layer: key, value)."""

    before_ids: torch.Tensor
    after_ids: torch.Tensor
    target_ids: torch.Tensor
    prefix: KV | None = None


@dataclass
class ScoreOptions:
    batch_size: int | None = None
    use_mellowmax: bool = False
    mellowmax_alpha: float = 1.0


def _cache_tensors(cache: Any) -> KV | None:
    """Per-layer (key, value) tensors of a transformers cache (None for cache kinds, such as
    recurrent or sliding-window states, that cannot simply be sliced and broadcast)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        ok = all(type(layer).__name__ == "DynamicLayer" for layer in layers)
        return [(layer.keys, layer.values) for layer in layers] if ok else None
    if hasattr(cache, "key_cache"):  # transformers 4.x DynamicCache
        return list(zip(cache.key_cache, cache.value_cache, strict=True))
    if isinstance(cache, tuple | list):  # the legacy format: per layer (key, value)
        return [(layer[0], layer[1]) for layer in cache]
    return None


def _expanded_cache(model, kv: KV, batch: int):
    """A fresh DynamicCache holding ``kv`` broadcast to ``batch`` rows (``kv`` itself is left
    unchanged: the model appends to the fresh cache)."""
    from transformers import DynamicCache

    data = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv]
    if hasattr(DynamicCache, "from_legacy_cache"):  # transformers 4.x
        return DynamicCache.from_legacy_cache(tuple(data))
    return DynamicCache(ddp_cache_data=data, config=model.config)


@functools.cache
def _forward_params(forward: Any) -> frozenset[str]:
    return frozenset(inspect.signature(forward).parameters)


def _forward(model, kv: KV | None, keep: int = 0, want_cache: bool = False, **inputs: Any):
    """``model(**inputs)`` continuing from the cached ``kv`` (if any); only the last ``keep``
    positions get logits when the model supports it (0: all)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    params = _forward_params(type(base).forward)
    kwargs: dict[str, Any] = {"use_cache": want_cache or bool(kv)}
    if keep and "logits_to_keep" in params:
        kwargs["logits_to_keep"] = keep
    if kv:
        batch = next(iter(inputs.values())).shape[0]
        name = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5
        kwargs[name] = _expanded_cache(model, kv, batch)
    return model(**inputs, **kwargs)


def _output_cache(out) -> KV | None:
    return _cache_tensors(out.get("cache") or out.get("past_key_values"))


def cache_prefix(model, problem: Problem) -> None:
    """Run the fixed prefix once and keep its KV cache on ``problem`` (when the model's cache
    can be reused; otherwise candidates are scored without one)."""
    if problem.before_ids.shape[1]:
        with torch.no_grad():
            out = _forward(model, None, keep=1, want_cache=True, input_ids=problem.before_ids)
        problem.prefix = _output_cache(out)


def _target_logits(out, n_target: int) -> torch.Tensor:
    """The logits that predict the last ``n_target`` input tokens."""
    return out.logits[:, -n_target - 1 : -1]


def target_loss(logits: torch.Tensor, target: torch.Tensor, options: ScoreOptions) -> torch.Tensor:
    """Per-row loss ``[batch]``: mean cross-entropy of the target tokens, or the mellowmax of
    their negated logits."""
    logits = logits.float()
    if options.use_mellowmax:
        picked = -logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        a = options.mellowmax_alpha
        return (torch.logsumexp(a * picked, dim=-1) - math.log(picked.shape[-1])) / a
    flat = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
    return flat.view(target.shape).mean(dim=-1)


def _embed_one_hot(model, one_hot: torch.Tensor) -> torch.Tensor:
    """Embeddings of (relaxed) one-hot rows, matching what the embedding module outputs."""
    embed = model.get_input_embeddings()
    out = one_hot @ embed.weight
    scale = getattr(embed, "embed_scale", None)  # scaled embeddings (e.g. Gemma 3)
    return out * scale.to(out.dtype) if isinstance(scale, torch.Tensor) else out * (scale or 1.0)


def token_gradient(
    model, problem: Problem, optim_ids: torch.Tensor, options: ScoreOptions
) -> torch.Tensor:
    """d loss / d one-hot(optim_ids) for one behaviour, ``[n_optim, vocab]`` float32."""
    embed = model.get_input_embeddings()
    one_hot = F.one_hot(optim_ids, embed.weight.shape[0]).to(embed.weight.dtype)
    one_hot.requires_grad_(True)
    head = [] if problem.prefix else [embed(problem.before_ids)]
    tail = [embed(problem.after_ids), embed(problem.target_ids)]
    embeds = torch.cat([*head, _embed_one_hot(model, one_hot).unsqueeze(0), *tail], dim=1)
    n_target = problem.target_ids.shape[1]
    out = _forward(model, problem.prefix, n_target + 1, inputs_embeds=embeds)
    loss = target_loss(_target_logits(out, n_target), problem.target_ids, options)
    (grad,) = torch.autograd.grad(loss.sum(), one_hot)
    return grad.float()


def _shared_prefix_groups(
    cands: torch.Tensor, current: torch.Tensor
) -> list[tuple[int, torch.Tensor]]:
    """Candidates in at most :data:`MAX_BUCKETS` groups by where they first differ from
    ``current``: ``(start, rows)``, every row of a group equal to ``current`` before ``start``."""
    n = cands.shape[1]
    first = (cands != current).to(torch.int8).argmax(dim=1)
    count = max(1, min(MAX_BUCKETS, n, len(cands) // BUCKET_ROWS))
    edges = torch.linspace(0, n, count + 1).long().tolist()
    groups = []
    for lo, hi in itertools.pairwise(edges):
        rows = ((first >= lo) & (first < hi)).nonzero()[:, 0]
        if len(rows):
            groups.append((int(first[rows].min()), rows))
    return groups


def candidate_losses(
    model,
    problem: Problem,
    cands: torch.Tensor,
    options: ScoreOptions,
    current: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss ``[B]`` of every candidate and whether its teacher-forced argmax is the target.

    Candidates continue from the prefix KV cache when ``problem.prefix`` is set. With
    ``current`` (the string they were sampled from) the cache also covers the optimised tokens
    up to where a group of candidates first differs from it, so a candidate that changes
    position ``p`` costs only the tokens from ``p`` on. A forward pass holds at most
    ``options.batch_size`` candidates.
    """
    n_prefix, n_target = problem.before_ids.shape[1], problem.target_ids.shape[1]
    loss = torch.empty(len(cands), device=cands.device)
    exact = torch.empty(len(cands), dtype=torch.bool, device=cands.device)
    tail = torch.cat([problem.after_ids, problem.target_ids], dim=1)
    with torch.inference_mode():
        kv, groups = problem.prefix, [(0, torch.arange(len(cands), device=cands.device))]
        if current is not None:
            head = problem.before_ids[:, n_prefix if kv else 0 :]
            out = _forward(model, kv, 1, True, input_ids=torch.cat([head, current[None]], 1))
            shared = _output_cache(out)
            if shared is not None:
                kv, groups = shared, _shared_prefix_groups(cands, current)
        for start, rows in groups:
            cached = min(kv[0][0].shape[2], n_prefix + start) if kv else 0  # tokens in cache
            cut = [(k[:, :, :cached], v[:, :, :cached]) for k, v in kv] if cached else None
            head = problem.before_ids[:, cached:]
            for chunk in rows.split(options.batch_size or len(rows)):
                optim = cands[chunk, max(0, cached - n_prefix) :]
                ids = torch.cat([p.expand(len(chunk), -1) for p in (head, optim, tail)], dim=1)
                logits = _target_logits(_forward(model, cut, n_target + 1, input_ids=ids), n_target)
                target = problem.target_ids.expand(len(chunk), -1)
                loss[chunk] = target_loss(logits, target, options)
                exact[chunk] = (logits.argmax(-1) == target).all(-1)
    return loss, exact


def build_problem(backend, messages: list[Message], target: str, init: str) -> tuple[Problem, str]:
    """Tokenise a prompt holding ``{optim_str}`` around the optimised string.

    Spaces right before the placeholder start the optimised string when that reproduces how
    the whole prompt tokenises (with ``init`` in place; byte-level BPE), else they end the
    prefix; returns the problem and the spaces that lead the optimised string ("" or them).
    """
    tok = backend.tokenizer
    text = backend.render(messages)
    if text.count(PLACEHOLDER) != 1:
        raise ConfigError(f"the prompt must hold {PLACEHOLDER} exactly once")
    before, after = text.split(PLACEHOLDER)

    def encode(s: str) -> list[int]:
        return tok(s, add_special_tokens=False)["input_ids"] if s else []

    stripped = before.rstrip(" ")
    spaces = before[len(stripped) :]
    head, lead = before, ""
    if spaces and encode(stripped) + encode(spaces + init) == encode(before + init):
        head, lead = stripped, spaces
    head_ids = encode(head)
    bos = tok.bos_token_id
    if bos is not None and backend.encode_prompt(messages)[:1] == [bos] and head_ids[:1] != [bos]:
        head_ids = [bos, *head_ids]
    device = next(backend.model.parameters()).device

    def tensor(x: list[int]) -> torch.Tensor:
        return torch.tensor([x], dtype=torch.long, device=device).reshape(1, -1)

    return Problem(tensor(head_ids), tensor(encode(after)), tensor(encode(target))), lead
