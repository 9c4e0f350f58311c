"""Loading a local (or cached) Hugging Face causal LM, its tokenizer and an optional LoRA adapter.

Every user-fixable problem becomes a one-line :class:`~alignkit.errors.ModelError` that names the
path: a missing directory, a hub id that is neither cached nor reachable (checked up front, so an
offline machine fails at once instead of after minutes of download retries), a checkpoint that is
not a causal LM, a missing adapter.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
)

from alignkit.errors import ModelError
from alignkit.models.base import BackendOptions, ModelSpec

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_HUB_PROBE_TIMEOUT_S = 3.0


def resolve_device(option: str) -> torch.device:
    """``'auto'`` is the first CUDA device when one is present, else the CPU."""
    if option == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(option)
    except RuntimeError as exc:
        raise ModelError(f"device {option!r} is not valid: {exc}") from None


def precise_float(device: torch.device) -> torch.dtype:
    """float64 where ``device`` has it, for statistics kept across steps; MPS has none: float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def resolve_dtype(option: str, device: torch.device) -> torch.dtype:
    """``'auto'`` is bfloat16 on a CUDA device that supports it, else float32."""
    if option == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, option)


def _looks_local(path: str) -> bool:
    """A path (absolute, relative with ./, ~, or more than one '/') rather than a hub id."""
    return (
        path.startswith(("/", ".", "~"))
        or "\\" in path
        or path.count("/") > 1
        or os.path.exists(path)
    )


def _hub_reachable() -> bool:
    """Whether the Hugging Face Hub answers a TCP connection within a few seconds."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=_HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def resolve_source(path: str, trust_remote_code: bool = False) -> tuple[str, bool]:
    """Check that ``path`` can be loaded; return ``(path, local_files_only)``.

    Local directories must exist and hold a ``config.json``. A hub id is used from the local
    cache when it is there, else only if the hub can be reached.
    """
    if _looks_local(path):
        local = Path(path).expanduser()
        if not local.is_dir():
            raise ModelError(f"model path {path!r} not found: no such directory")
        if not (local / "config.json").is_file():
            raise ModelError(f"model path {path!r} has no config.json: not a Hugging Face model")
        return str(local), True
    try:
        AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
        return path, True
    except (OSError, ValueError):
        pass
    if not _hub_reachable():
        raise ModelError(
            f"model {path!r} is neither a local directory nor in the Hugging Face cache, and the "
            "Hugging Face Hub cannot be reached (offline?)"
        )
    return path, False


def load_config(path: str, local_only: bool, trust_remote_code: bool) -> PretrainedConfig:
    """Load the model config; unreadable or unknown configs become a :class:`ModelError`."""
    try:
        return AutoConfig.from_pretrained(
            path, local_files_only=local_only, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot read the config of model {path!r}: {_first_line(exc)}") from None


def check_causal(config: PretrainedConfig, path: str) -> None:
    """Raise :class:`ModelError` unless ``config`` describes a decoder-only causal LM."""
    kind = getattr(config, "model_type", type(config).__name__)
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(f"model {path!r} ({kind}) is an encoder-decoder model, not a causal LM")
    remote = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING and not remote:
        raise ModelError(f"model {path!r} ({kind}) is not a causal language model")
    names = getattr(config, "architectures", None) or []
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if names and not any(n in causal or n.endswith(_CAUSAL_SUFFIXES) for n in names):
        raise ModelError(
            f"model {path!r} has architecture {', '.join(names)}, not a causal language model"
        )


def load_pretrained(spec: ModelSpec, options: BackendOptions, device: torch.device):
    """Load ``(model, tokenizer)`` for an ``hf:`` model spec, with its adapter if it names one."""
    path, local_only = resolve_source(spec.path or "", options.trust_remote_code)
    if spec.adapter:
        check_adapter_dir(spec.adapter)
    model = load_model(path, local_only, options, device)
    tokenizer = load_tokenizer(path, local_only, options)
    if spec.adapter:
        model = load_adapter(model, spec.adapter)
    return model, tokenizer


def load_model(
    path: str, local_only: bool, options: BackendOptions, device: torch.device
) -> torch.nn.Module:
    """Load the causal LM weights (safetensors preferred) onto ``device`` in eval mode."""
    check_causal(load_config(path, local_only, options.trust_remote_code), path)
    attention = options.attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=resolve_dtype(options.dtype, device),
            device_map=str(device),
            local_files_only=local_only,
            trust_remote_code=options.trust_remote_code,
            **({} if attention == "auto" else {"attn_implementation": attention}),
        )
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        raise ModelError(f"cannot load model {path!r}: {_first_line(exc)}") from None
    return model.eval()


def load_tokenizer(path: str, local_only: bool, options: BackendOptions):
    """Load the tokenizer that ships with the model; give it a pad token if it has none."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=local_only, trust_remote_code=options.trust_remote_code
        )
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(
            f"cannot load the tokenizer of model {path!r}: {_first_line(exc)}"
        ) from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_adapter_dir(adapter: str) -> Path:
    """The adapter's local directory; raise :class:`ModelError` unless it holds a PEFT adapter."""
    local = Path(adapter).expanduser()
    if not local.is_dir():
        raise ModelError(f"adapter path {adapter!r} not found: no such directory")
    if not (local / "adapter_config.json").is_file():
        raise ModelError(f"adapter path {adapter!r} has no adapter_config.json: not a PEFT adapter")
    return local


def load_adapter(model: torch.nn.Module, adapter: str) -> torch.nn.Module:
    """Wrap ``model`` with the LoRA adapter saved in the local directory ``adapter``."""
    from peft import PeftModel

    local = check_adapter_dir(adapter)
    try:
        return PeftModel.from_pretrained(model, str(local), is_trainable=False).eval()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelError(f"cannot load adapter {adapter!r}: {_first_line(exc)}") from None


_NO_LIMIT = 10**9
"""A tokenizer that knows no limit reports ``model_max_length = int(1e30)``."""


def context_length(config: PretrainedConfig, tokenizer) -> int | None:
    """The most tokens (prompt plus completion) the model can attend to, or None if unknown.

    The model's own position count (``max_position_embeddings`` or ``n_positions``) decides when
    the config has one; else the tokenizer's ``model_max_length``, if it is a real limit.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    known = [getattr(text, name, None) for name in ("max_position_embeddings", "n_positions")]
    positions = [n for n in known if isinstance(n, int) and n > 0]
    if positions:
        return min(positions)
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < _NO_LIMIT else None


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception message (errors stay one line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
