"""Loading the policy, and saving / restoring its trainable weights in checkpoints."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from alignkit.errors import ModelError
from alignkit.models.base import BackendOptions, ModelSpec
from alignkit.models.hf_padding import base_model


def load_policy(config):
    """``(model, tokenizer)`` for ``config.model`` (``hf:PATH[+ADAPTER]`` or ``testbed``)."""
    from alignkit.models.hf_loading import load_pretrained, resolve_device

    spec = ModelSpec.parse(config.model)
    if spec.kind == "openai":
        raise ModelError(
            f"{config.model}: DPO trains weights, so it needs a local model (hf:PATH or testbed), "
            "not a server"
        )
    if spec.kind == "testbed":
        from alignkit.testbed import ensure_testbed

        spec = ModelSpec(kind="hf", path=str(ensure_testbed()))
    options = BackendOptions(
        device=config.device,
        trust_remote_code=config.trust_remote_code,
        dtype="float32",
        attn_implementation=config.attn_implementation,
    )
    model, tokenizer = load_pretrained(spec, options, resolve_device(config.device))
    if spec.adapter:  # continue training the given adapter
        for name, param in model.named_parameters():
            param.requires_grad_("lora_" in name)
    model.train()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def with_adapter(model, cfg):
    """``model`` prepared for training under ``cfg``: gradient checkpointing, and a new LoRA
    adapter when ``cfg.lora`` (a model that already has an adapter keeps it)."""
    if cfg.gradient_checkpointing:
        # transformers 5.25 renamed it (the old name warns, and goes in v6)
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)()
        model.config.use_cache = False
    if not cfg.lora:
        return model
    from peft import LoraConfig, get_peft_model

    if hasattr(model, "peft_config"):
        return model
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules or "all-linear",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _trainable_state(model, state: dict | None = None) -> dict:
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model, state_dict=state)
    return model.state_dict() if state is None else state


def save_weights(model, directory: Path, state: dict | None = None) -> None:
    """The trainable weights (the adapter for LoRA) as safetensors; ``state``: the model's whole
    state dict where ``model`` cannot give it (gathered from the shards under FSDP)."""
    state = {k: v.detach().cpu().contiguous() for k, v in _trainable_state(model, state).items()}
    seen: dict[int, str] = {}
    for key in list(state):  # tied weights share storage; safetensors wants one copy
        ptr = state[key].data_ptr()
        if ptr in seen:
            del state[key]
        else:
            seen[ptr] = key
    save_file(state, Path(directory) / "weights.safetensors")


def load_weights(model, checkpoint: Path, load=None) -> None:
    """Load what :func:`save_weights` wrote; ``load(state)``: how to put a whole state dict into
    ``model`` (returning the missing and unexpected keys), ``load_state_dict`` by default."""
    state = load_file(Path(checkpoint) / "weights.safetensors")
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
        return
    load = load or (lambda weights: model.load_state_dict(weights, strict=False))
    missing, unexpected = load(state)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ModelError(
            f"checkpoint {checkpoint} does not fit the model: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def compile_layers(model) -> int:
    """``torch.compile`` every decoder layer of ``model`` in place (the classes it names in
    ``_no_split_modules``), and return how many. In place, so parameter names, checkpoints and
    saved models stay as they are; the output head stays eager, so the fused log-prob path
    (:mod:`alignkit.dpo.fused_logps`) still reads it. Shapes change from batch to batch
    (length-bucketed rows): torch recompiles once, then marks the length dynamic."""
    base = base_model(model)
    names = set(getattr(base, "_no_split_modules", None) or [])
    # by class name along the MRO: FSDP2 swaps a sharded layer's class for a subclass
    layers = [m for m in base.modules() if any(c.__name__ in names for c in type(m).__mro__)]
    if not layers:
        raise ModelError(
            f"compile: {type(base).__name__} names no decoder layer class (_no_split_modules)"
        )
    for layer in layers:
        layer.compile()
    return len(layers)


def eager_layers():
    """A context in which layers compiled by :func:`compile_layers` run eager: generation
    changes the KV cache's shapes and strides at every decoding step, so compiled layers would
    recompile step after step until torch's recompile limit (then run eager anyway). Needs
    ``torch.compiler.set_stance`` (torch 2.6+); older torch gets a no-op context."""
    import contextlib

    import torch

    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()
