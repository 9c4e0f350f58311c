"""The memory-bandwidth bound of batched decoding, for ``benchmarks/generation.py``.

A decoding step reads every weight once (whatever the batch size) and, for each live row, the
keys and values of all its earlier tokens. Dividing those bytes by the wall time gives the
bandwidth the run achieved; over the device's peak it is the fraction of the bound reached
(1.0 would mean decoding at the speed of reading memory, nothing else in the way). The count
follows the backend's batching: prompts sorted by length, longest first, in chunks of the batch
size, each chunk decoding for as many steps as its longest completion. It counts what must be
read, not what a static cache's padded slots add.
"""

from __future__ import annotations

PEAK_GBPS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100": 2039.0}
"""HBM bandwidth (GB/s) by GPU name, first match wins (H100 SXM, A100 80GB SXM)."""


def peak_bandwidth(device_name: str | None, given_gbps: float | None) -> float | None:
    """Peak bytes/s: ``given_gbps`` if set, else by the GPU's name, else None (unknown)."""
    if given_gbps:
        return given_gbps * 1e9
    for key, gbps in PEAK_GBPS.items():
        if device_name and key in device_name:
            return gbps * 1e9
    return None


def kv_bytes_per_token(config, element_size: int) -> int:
    """Bytes of keys and values one token keeps in every layer's cache."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * element_size


def decode_bytes(prompt_lengths: list[int], new_tokens: list[int], batch_size: int,
                 weight_bytes: int, kv_per_token: int) -> tuple[int, int]:  # fmt: skip
    """``(decoding steps, bytes read)`` for prompts of ``prompt_lengths`` tokens that generated
    ``new_tokens`` tokens each, batched as the backend batches them."""
    order = sorted(range(len(prompt_lengths)), key=lambda i: -prompt_lengths[i])
    steps = total = 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        batch_steps = max(new_tokens[i] for i in batch)
        steps += batch_steps
        total += batch_steps * weight_bytes
        for i in batch:  # step t reads the prompt and the t tokens before it
            n = new_tokens[i]
            total += (n * prompt_lengths[i] + n * (n - 1) // 2) * kv_per_token
    return steps, total


def bandwidth_figures(backend, prompts, completions, seconds: float, batch_size: int,
                      given_gbps: float | None = None) -> dict:  # fmt: skip
    """Steps, bytes read, achieved GB/s and (where the peak is known) the fraction of it."""
    import torch

    model = backend.model
    params = list(model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    kv = kv_bytes_per_token(model.config, params[0].element_size())
    lengths = [len(backend.encode_prompt(p)) for p in prompts]
    steps, total = decode_bytes(
        lengths, [c.num_tokens for c in completions], batch_size, weight_bytes, kv
    )
    name = torch.cuda.get_device_name() if backend.device.type == "cuda" else None
    peak = peak_bandwidth(name, given_gbps)
    achieved = total / seconds
    return {"decode_steps": steps, "bytes_read": total, "achieved_gbps": achieved / 1e9,
            "peak_gbps": peak / 1e9 if peak else None,
            "bandwidth_fraction": achieved / peak if peak else None}  # fmt: skip
