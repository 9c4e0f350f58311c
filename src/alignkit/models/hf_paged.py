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
and its text is cut afterwards (the static path does the same).

One :class:`PagedEngine` serves a backend for its lifetime: its page pool, batch tensors and (on
CUDA) captured graphs are kept from call to call, and its thread is stopped between calls, so
the model's attention implementation is restored and other work on the model (log-probs,
training) never meets a running engine. It is rebuilt only when a call needs more pages than it
holds (a wider prompt or more new tokens), after a failure, and released by
:meth:`HFBackend.close`. The pool is sized for ``batch_size`` requests of the call's widest
prompt plus ``max_new_tokens``, on CUDA too (transformers' own sizing takes 80-90% of free
GPU memory, which a kept engine would then hold between calls).
"""

from __future__ import annotations

import threading
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
    ``do_sample=True`` would and adds the noise of each row word over the vocabulary. A greedy
    call (:meth:`configure` with temperature 0) leaves the logits as they are.
    """

    supported_kwargs: dict[str, type] = {"sample_key": int}
    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self, config: GenerationConfig) -> None:
        self.configure(config)

    def configure(self, config: GenerationConfig) -> None:
        """Sample as ``config`` says for the requests of the next call."""
        self.sampled = config.temperature > 0
        self.warpers = sampling_warpers(config) if self.sampled else []

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
        if not self.sampled:
            return scores
        rows = tensor_arg[: scores.shape[0]].to(torch.long) & _MASK
        for warper in self.warpers:
            scores = warper(None, scores)
        return scores + gumbel_from_bits(token_bits(rows, scores.shape[-1]))


def page_size(device: torch.device) -> int:
    """Tokens per cache page: :data:`CPU_PAGE_SIZE` on CPU, transformers' default elsewhere."""
    return CPU_PAGE_SIZE if device.type != "cuda" else ContinuousBatchingConfig().page_size


def pages_needed(backend: HFBackend, widest: int, max_new_tokens: int) -> int:
    """Pages for ``batch_size`` requests of ``widest`` prompt tokens plus ``max_new_tokens``;
    per request a power of two, so that a slowly growing length rebuilds the engine rarely."""
    per_request = -(-(widest + max_new_tokens) // page_size(backend.device)) + 1
    return backend.options.batch_size * (1 << (per_request - 1).bit_length())


def engine_config(backend: HFBackend, pages: int):
    """The engine's sizing: ``pages`` cache pages, at most ``batch_size`` requests per forward
    pass; on CPU at most :data:`CPU_BATCH_TOKENS` tokens per pass and no CUDA graphs."""
    size = backend.options.batch_size
    if backend.device.type != "cuda":
        return ContinuousBatchingConfig(
            page_size=CPU_PAGE_SIZE,
            num_blocks=pages,
            max_batch_tokens=max(CPU_BATCH_TOKENS, size),
            max_requests_per_batch=size,
            use_async_batching=False,
            use_cuda_graph=False,
        )
    return ContinuousBatchingConfig(
        num_blocks=pages, max_requests_per_batch=size, use_async_batching=False
    )


class PagedEngine:
    """A backend's continuous-batching engine, kept between ``generate`` calls (see the module
    docstring). Calls are serialised: the engine runs one call's requests at a time."""

    def __init__(self, backend: HFBackend) -> None:
        check_available()
        self.backend = backend
        self.manager = None
        self.pages = 0
        self.calls = 0
        self.sampler = PagedGumbelSampler(GenerationConfig(temperature=0.0))
        self._lock = threading.Lock()

    def generate(
        self, encoded: list[list[int]], keys: list[int | None], config: GenerationConfig, show: bool
    ) -> list[list[int]]:
        """The generated token ids of every prompt of a call."""
        with self._lock:
            widest = max(len(ids) for ids in encoded)
            pages = pages_needed(self.backend, widest, config.max_new_tokens)
            if self.manager is None or pages > self.pages:
                self._build(pages, config)
            self.sampler.configure(config)
            self.calls += 1
            manager = self.manager
            manager.switch_to_cb_friendly_attn(
                manager.model, manager.continuous_batching_config.auto_switch_to_flash
            )  # a kept engine gave the model its own attention back when it stopped
            manager.start()  # on CUDA the engine captures its CUDA graphs as it meets each shape
            try:
                for index, ids in enumerate(encoded):
                    self._add(index, ids, keys[index], config)
                rows = _collect(self.backend, manager, len(encoded), f"{self.calls}:", show)
            except BaseException:
                self.close()  # a failed or interrupted call leaves nothing behind
                raise
            manager.stop(block=True, keep_for_next_session=True)
            manager.model.__dict__.pop("_cached_continuous_batching_manager", None)  # ours
            return rows

    def _build(self, pages: int, config: GenerationConfig) -> None:
        self.close()
        backend = self.backend
        manager = backend.model.init_continuous_batching(
            generation_config=backend._hf_generation_config(config),
            continuous_batching_config=engine_config(backend, pages),
        )
        # before the engine builds its batch tensors, which hold one line per processor
        processors = ContinuousBatchingLogitsProcessorList(LogitsProcessorList([self.sampler]))
        processors.tensors_required = 1
        manager.logit_processor = processors
        self.manager, self.pages = manager, pages

    def _add(self, index: int, ids: list[int], key: int | None, config: GenerationConfig) -> None:
        added = self.manager.add_request(
            ids,
            request_id=f"{self.calls}:{index}",
            max_new_tokens=config.max_new_tokens,
            eos_token_id=self.backend.end_token_ids or -1,
            sample_key=key or 0,
        )
        if added is None:
            name = self.backend.name
            raise BackendError(f"{name}: the continuous-batching engine refused prompt {index}")

    def close(self) -> None:
        """Stop the engine and release its cache (a later call builds a new one)."""
        manager, self.manager, self.pages = self.manager, None, 0
        if manager is not None:
            if manager._generation_thread is not None:  # running, or died and not yet joined:
                manager.stop(block=True, hard_stop=True)  # this also restores the attention
            manager.batch_processor = None
            manager.destroy()
            manager.model.__dict__.pop("_cached_continuous_batching_manager", None)


def _collect(backend: HFBackend, manager, n: int, prefix: str, show: bool) -> list[list[int]]:
    """Wait for all ``n`` requests (ids ``prefix + index``); an engine that fails or dies is a
    :class:`BackendError`."""
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
            call, _, index = result.request_id.partition(":")
            if f"{call}:" != prefix:  # not this call's (none are expected)
                continue
            if result.error is not None:
                raise BackendError(f"{backend.name}: prompt {index}: {result.error}")
            if result.is_finished():
                results[int(index)] = list(result.generated_tokens)
                advance()
    return [results[i] for i in range(n)]
