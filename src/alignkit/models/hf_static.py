"""Decoding with a preallocated (static) KV cache: ``BackendOptions.kv_cache="static"``.

Why: on a GPU a small model's decoding step is bound by kernel launches, not by arithmetic or
memory (a 0.5B model launches several hundred kernels per token; ``alignkit demo --device cuda``
measured 8,339 launches for 64 prompts with the GPU busy 16 ms of 383). With a static cache the
shapes of a decoding step never change, and transformers then compiles the step with
``torch.compile`` (mode ``reduce-overhead``: CUDA graphs, one graph launch per token) whenever
the model runs on CUDA (``GenerationMixin._valid_auto_compile_criteria``). On CPU the same path
runs eagerly: it is how the tests check that it generates what the dynamic path generates.

Three things keep recompilation bounded (torch recompiles for every new shape, and gives up
after a few):

* the cache length is rounded up to a multiple of :data:`CACHE_STEP` tokens and sized once per
  ``generate`` call for its widest prompt (transformers keeps the largest length it has seen);
* a batch is padded with copies of its last row to the next power of two (at most the backend's
  ``batch_size``), so a run meets at most ``log2(batch_size) + 1`` batch shapes; the copies'
  outputs are dropped, and since every row samples from its own key
  (:mod:`~alignkit.models.hf_sampling`), no row sees the others;
* rows are not dropped from the batch as they finish (the dynamic path's refill rounds would
  change the cache's batch size); a finished row costs a padded step until the batch ends.

Completions equal the dynamic path's wherever the logits do: the static cache attends over its
whole length with the empty slots masked, which can round float sums differently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from transformers import CompileConfig

from alignkit.models.base import GenerationConfig
from alignkit.models.hf_sampling import GumbelSampler

if TYPE_CHECKING:
    from alignkit.models.hf import HFBackend

CACHE_STEP = 256
"""Static cache lengths are multiples of this many tokens."""

COMPILE_ON_CPU = False
"""Compile the decoding step on CPU too (transformers compiles it only on accelerators): the
tests set it to run on CPU the compiled path a GPU takes; a first batch then waits ~25 s for
the compiler (the testbed model)."""


def cache_length(widest_prompt: int, max_new_tokens: int, context: int | None) -> int:
    """Tokens a static cache holds for prompts up to ``widest_prompt`` tokens: the prompt and
    ``max_new_tokens``, rounded up to :data:`CACHE_STEP`, but not past the model's context
    (when the context is known and holds the unrounded length)."""
    need = widest_prompt + max_new_tokens
    rounded = -(-need // CACHE_STEP) * CACHE_STEP
    if context is not None and need <= context < rounded:
        return context
    return rounded


def padded_rows(rows: int, batch_size: int) -> int:
    """The batch size ``rows`` prompts are padded to: the next power of two, at most
    ``batch_size`` (and never fewer than ``rows``)."""
    size = 1
    while size < rows:
        size *= 2
    return max(rows, min(size, batch_size))


def generate_static(
    backend: HFBackend,
    encoded: list[list[int]],
    keys: list[int | None],
    config: GenerationConfig,
    stops: list[str],
    max_cache_len: int,
) -> list[list[int]]:
    """The generated token ids of each row of one batch, decoded with a static cache in one
    ``generate`` call of ``config.max_new_tokens`` steps (rows that end early are padded)."""
    from alignkit.models.hf_padding import pad_token_ids

    rows = len(encoded)
    extra = padded_rows(rows, backend.options.batch_size) - rows
    encoded = [*encoded, *[encoded[-1]] * extra]
    keys = [*keys, *[keys[-1]] * extra]
    ids, mask = pad_token_ids(encoded, backend.pad_id, left=True)
    ids, mask = ids.to(backend.device), mask.to(backend.device)
    width = ids.shape[1]
    hf_config = backend._hf_generation_config(config)
    hf_config.cache_implementation = "static"
    hf_config.max_cache_len = max_cache_len
    if COMPILE_ON_CPU and backend.device.type == "cpu":
        hf_config.compile_config = CompileConfig(mode="default")  # no CUDA graphs on CPU
        hf_config.compile_config._compile_all_devices = True
    processors = []
    if config.temperature > 0:
        processors.append(GumbelSampler(config, keys, width, backend.device))  # type: ignore[arg-type]
    out = backend._decode(ids, mask, hf_config, stops, width, processors)
    return out[:rows, width:].tolist()
