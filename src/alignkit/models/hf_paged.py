"""Continuous batching with a paged KV cache: ``BackendOptions.kv_cache="paged"``.

Why: with the padded batches of the dynamic path a batch is as wide as its longest prompt and
shrinks as rows finish, so the GPU runs ever smaller batches of padded rows. transformers'
continuous batching (``ContinuousBatchingManager``, the engine behind ``generate_batch``)
schedules tokens instead of rows: prompts are packed without padding into a budget of tokens
per forward pass, finished requests leave at once and waiting ones take their place, and the KV
cache lives in fixed-size pages that requests borrow and return (paged attention, Kwon et al.
2023, "Efficient Memory Management for Large Language Model Serving with PagedAttention"). On
CUDA it also captures the decoding step in CUDA graphs.

Sampling keeps the rule of :mod:`alignkit.models.sampling`: transformers' own engine draws one
random stream for the whole batch, so a sample would depend on its neighbours. Here the engine
decodes greedily, and :class:`PagedGumbelSampler`, a per-request logits processor of the engine,
adds to each request's warped logits the Gumbel noise of its own key and step
(:mod:`~alignkit.models.hf_sampling`): the same noise the dynamic and static paths add, so a
completion equals theirs wherever the logits do. The engine's asynchronous double buffering is
turned off because it prepares a request's next step before its last token is counted.

Stop strings are not seen by the engine: a request runs to an end token or ``max_new_tokens``
and its text is cut afterwards (the static path does the same). The engine is built for each
``generate`` call and released after it, so its CUDA graphs are captured again per call: it
pays off on large calls (a red-team campaign, an evaluation suite), not on a handful of prompts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from alignkit.errors import BackendError, ModelError
from alignkit.models.base import GenerationConfig
from alignkit.models.hf_sampling import (
    _MASK,
    gumbel_from_bits,
    key_words,
    row_words,
    sampling_warpers,
    token_bits,
)
from alignkit.progress import counter

try:  # per-request logits processors of continuous batching: transformers 5.x
    from transformers import ContinuousBatchingConfig, LogitsProcessorList
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessor,
        ContinuousBatchingLogitsProcessorList,
    )
except ImportError:  # pragma: no cover - older transformers
    ContinuousBatchingLogitsProcessor = object  # type: ignore[assignment,misc]
    ContinuousBatchingConfig = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from alignkit.models.hf import HFBackend

CPU_PAGE_SIZE = 32
"""Tokens per cache page on CPU (transformers sizes pages and the cache itself on GPUs)."""

CPU_BATCH_TOKENS = 512
"""Most tokens per forward pass on CPU (prompts are prefilled in chunks of this size)."""

RESULT_WAIT_S = 1.0


def check_available() -> None:
    """Fail with one line where this transformers has no per-request continuous batching."""
    if ContinuousBatchingConfig is None:
        import transformers

        raise ModelError(
            "kv_cache='paged' needs transformers' continuous batching with per-request logits "
            f"processors (transformers 5.x; installed: {transformers.__version__})"
        )


class PagedGumbelSampler(ContinuousBatchingLogitsProcessor):
    """Each request's Gumbel noise, keyed on its ``sample_key`` and its step.

    The engine asks for one int32 per request before each forward pass
    (:meth:`prepare_tensor_args`): here that is the request's 32-bit row word, the hash of its
    key and the number of tokens it has generated. :meth:`__call__` warps the logits as
    ``do_sample=True`` would and adds the noise of each row word over the vocabulary.
    """

    supported_kwargs: dict[str, type] = {"sample_key": int}
    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self, config: GenerationConfig) -> None:
        self.warpers = sampling_warpers(config)

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(0)

    def prepare_tensor_args(self, requests_with_new_token: list) -> torch.Tensor:
        if not requests_with_new_token:
            return torch.zeros(0, dtype=torch.int32)
        states = [request.state for request in requests_with_new_token]
        keys = [state.logit_processor_kwargs.get("sample_key", 0) for state in states]
        steps = torch.tensor([state.generated_len() for state in states], dtype=torch.long)
        rows = row_words(key_words(keys), steps)
        return (rows - ((rows >> 31) << 32)).to(torch.int32)  # the same 32 bits, signed

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        rows = tensor_arg[: scores.shape[0]].to(torch.long) & _MASK
        for warper in self.warpers:
            scores = warper(None, scores)
        return scores + gumbel_from_bits(token_bits(rows, scores.shape[-1]))


def engine_config(backend: HFBackend, widest: int, max_new_tokens: int):
    """The engine's sizing: at most ``batch_size`` requests per forward pass; on CPU, pages of
    :data:`CPU_PAGE_SIZE` tokens and enough of them for ``batch_size`` requests of the widest
    prompt plus ``max_new_tokens`` (transformers' own sizing targets GPU memory and, on CPU,
    reserves gigabytes); on CUDA transformers sizes the cache from free memory."""
    size = backend.options.batch_size
    if backend.device.type != "cuda":
        pages = -(-(widest + max_new_tokens) // CPU_PAGE_SIZE) + 1
        return ContinuousBatchingConfig(
            page_size=CPU_PAGE_SIZE,
            num_blocks=size * pages,
            max_batch_tokens=max(CPU_BATCH_TOKENS, size),
            max_requests_per_batch=size,
            use_async_batching=False,
            use_cuda_graph=False,
        )
    return ContinuousBatchingConfig(max_requests_per_batch=size, use_async_batching=False)


def generate_paged(
    backend: HFBackend,
    encoded: list[list[int]],
    keys: list[int | None],
    config: GenerationConfig,
    show: bool,
) -> list[list[int]]:
    """The generated token ids of every prompt of a call, decoded by continuous batching."""
    check_available()
    hf_config = backend._hf_generation_config(config)
    widest = max(len(ids) for ids in encoded)
    manager = backend.model.init_continuous_batching(
        generation_config=hf_config,
        continuous_batching_config=engine_config(backend, widest, config.max_new_tokens),
    )
    sampled = config.temperature > 0
    if sampled:  # before the engine builds its batch tensors, which hold one line per processor
        processors = ContinuousBatchingLogitsProcessorList(
            LogitsProcessorList([PagedGumbelSampler(config)])
        )
        processors.tensors_required = 1
        manager.logit_processor = processors
    manager.start()  # on CUDA the engine captures its CUDA graphs as it meets each shape
    try:
        for index, ids in enumerate(encoded):
            manager.add_request(
                ids,
                request_id=str(index),
                max_new_tokens=config.max_new_tokens,
                eos_token_id=backend.end_token_ids or -1,
                **({"sample_key": keys[index]} if sampled else {}),
            )
        return _collect(backend, manager, len(encoded), show)
    finally:
        manager.stop(block=True)
        manager.destroy()


def _collect(backend: HFBackend, manager, n: int, show: bool) -> list[list[int]]:
    """Wait for all ``n`` requests; an engine that fails or dies is a :class:`BackendError`."""
    results: dict[int, list[int]] = {}
    with counter(f"generating ({backend.name}, paged)", n, show) as advance:
        while len(results) < n:
            result = manager.get_result(timeout=RESULT_WAIT_S)
            if result is None:
                if not manager.is_running():
                    raise BackendError(
                        f"{backend.name}: the continuous-batching engine stopped with "
                        f"{n - len(results)} of {n} prompts unfinished"
                    )
                continue
            if result.error is not None:
                raise BackendError(f"{backend.name}: prompt {result.request_id}: {result.error}")
            if result.is_finished():
                results[int(result.request_id)] = list(result.generated_tokens)
                advance()
    return [results[i] for i in range(n)]
