"""Where ``device: auto`` runs a local model (the pipeline's, and any Hugging Face backend's:
``alignkit eval``, ``redteam``, ``generate``...): on the GPU, unless the model is so small that
the CPU is faster.

A model of a few million parameters keeps a GPU waiting on kernel launches: on one H200 the
1.1M-parameter testbed ran the demo's baseline and red-team stages 6-7x slower than on 2 CPU
cores (8,339 kernel launches for 64 prompts, the GPU busy 16 ms of 383). Models under
:data:`TINY_PARAMETERS` therefore stay on the CPU; the threshold sits between the two sizes
measured (the testbed, and Qwen2-0.5B's shape, which trains and generates far faster on the
GPU) and is not a measured crossover.
"""

from __future__ import annotations

import functools

import torch

TINY_PARAMETERS = 20_000_000


def auto_device(model: str) -> str:
    """``"cuda"`` when a GPU is present and ``model`` (a model string) is not tiny, else
    ``"cpu"``. A model whose size cannot be read locally (a hub id not downloaded yet, a
    server) counts as large."""
    if not torch.cuda.is_available():
        return "cpu"
    count = parameter_count(model)
    return "cpu" if count is not None and count < TINY_PARAMETERS else "cuda"


@functools.cache
def parameter_count(model: str) -> int | None:
    """The parameters of a local model string's model (built on the meta device: no memory,
    no weights read), or None when it is not a local model or its config cannot be read."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from alignkit.models.base import ModelSpec

    spec = ModelSpec.parse(model)
    if spec.kind == "openai":
        return None
    if spec.kind == "testbed":
        from alignkit.testbed import ensure_testbed

        path = str(ensure_testbed())
    else:
        path = spec.path
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        with torch.device("meta"):
            built = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError):
        return None
    return sum(p.numel() for p in built.parameters())
