"""Reference log-probs computed once and cached on disk, so training runs no reference forward.

The cache key covers the reference model (its path, adapter and weight files' names, sizes and
modification times) and the data (every token id of every example), so a changed model or
dataset never reuses stale numbers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from alignkit.atomic import temporary_path
from alignkit.dpo.forward import SequenceLogps, get_ref_log_probs
from alignkit.paths import cache_dir


def model_fingerprint(model) -> str:
    """Identify a model by where its weights came from (cheap: no hashing of the weights)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    source = str(getattr(base.config, "_name_or_path", "") or "")
    parts: list[Any] = [source, base.config.to_json_string()]
    path = Path(source)
    if path.is_dir():
        parts += [
            (f.name, f.stat().st_size, f.stat().st_mtime_ns)
            for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
        ]
    if hasattr(model, "peft_config"):
        parts.append(json.dumps({k: str(v) for k, v in model.peft_config.items()}))
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def data_fingerprint(examples: Sequence[Any]) -> str:
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(
            json.dumps([list(ex.prompt_ids), [list(c) for c in ex.completion_ids]]).encode()
        )
    return digest.hexdigest()


def precompute_reference(
    reference,
    examples: Sequence[Any],
    batch_size: int = 16,
    pad_id: int = 0,
    cache: bool = True,
    progress=None,
    share_prompt: bool = False,
) -> SequenceLogps:
    """Reference log-probs of every example, from the disk cache when present
    (``share_prompt``: see :func:`~alignkit.dpo.forward.get_log_probs`)."""
    key = hashlib.sha256(
        (model_fingerprint(reference) + data_fingerprint(examples)).encode()
    ).hexdigest()[:24]
    path = cache_dir() / "ref_logps" / f"{key}.safetensors"
    if cache and path.exists():
        saved = load_file(path)
        return SequenceLogps(saved["logps"], saved["tokens"])
    was_training = reference.training
    reference.eval()
    parts: list[SequenceLogps] = []
    width = max(len(ex.completion_ids) for ex in examples)
    # batches of similar length (little padding); results go back to dataset order below
    order = sorted(
        range(len(examples)),
        key=lambda i: len(examples[i].prompt_ids) + max(map(len, examples[i].completion_ids)),
    )
    for start in range(0, len(examples), batch_size):
        batch = [examples[i] for i in order[start : start + batch_size]]
        part = get_ref_log_probs(reference, batch, pad_id, share_prompt)
        pad = width - part.logps.shape[1]
        parts.append(
            SequenceLogps(
                torch.nn.functional.pad(part.logps.cpu(), (0, pad)),
                torch.nn.functional.pad(part.tokens.cpu(), (0, pad)),
            )
        )
        if progress is not None:
            progress(len(batch))
    reference.train(was_training)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    result = SequenceLogps(
        torch.cat([p.logps for p in parts])[inverse], torch.cat([p.tokens for p in parts])[inverse]
    )
    if cache:
        with temporary_path(path) as tmp:  # processes of one launch may race
            tensors = {"logps": result.logps.contiguous(), "tokens": result.tokens.contiguous()}
            save_file(tensors, tmp)
    return result
