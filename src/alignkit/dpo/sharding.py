"""DPO, SFT and the value models under FSDP2 (``accelerate launch`` with an FSDP config): the
policy (and DPO's frozen reference) is sharded across the processes, and checkpoints and saved
models are gathered into the format one process writes (whole tensors, optimizer parameters
numbered in order). A LoRA adapter trains on the sharded base: its checkpoints gather the
adapter alone, and a merge happens in an unsharded copy built from the gathered weights.

Without FSDP every function here does what the trainer did before: nothing is gathered, only the
main process reads the optimizer state. Under FSDP every process must call them (they gather
and scatter through collectives); the gathered tensors land on the main process only.
"""

from __future__ import annotations

from typing import Any

from accelerate import Accelerator
from accelerate.utils import DistributedType

from alignkit.errors import ConfigError


def is_sharded(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def check_engine(accelerator: Accelerator, trainer: str = "alignkit dpo") -> None:
    """Refuse the distributed set-ups whose checkpoints and saved models ``trainer`` (named in
    the message: DPO, SFT, the value models) cannot gather exactly."""
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        raise ConfigError(
            f"{trainer} does not train under DeepSpeed: ZeRO partitions the model and optimizer "
            "state per process, and alignkit gathers only FSDP2 shards into the one full copy "
            "its checkpoints and saved models keep; launch with an FSDP config instead "
            "(examples/accelerate/fsdp.yaml)"
        )
    if kind == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ConfigError(
            f"{trainer} supports FSDP2 only: set fsdp_version: 2 in the accelerate config "
            "(see examples/accelerate/fsdp.yaml)"
        )


def reset_accelerate_state() -> None:
    """Forget the settings of this process's last ``Accelerator`` (accelerate keeps one state per
    process) but not its process group, so that the next ``Accelerator`` (the DPO trainer after
    SFT, the next trial of method selection) chooses its own.

    accelerate (1.16) writes ``FSDP`` into the process state when an ``Accelerator`` turns FSDP
    on; the next one would read it from there, skip the branch that keeps its FSDP plugin and
    fail without one. The type that branch expects, the one the process state chose itself
    (e.g. ``MULTI_GPU``), is put back."""
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=False)
    shared = PartialState._shared_state
    if shared.get("distributed_type") == DistributedType.FSDP:
        state = PartialState()
        shared["distributed_type"] = state._prepare_backend(shared.get("_cpu", False))[1]


def shard_reference(accelerator: Accelerator, reference):
    """The frozen reference on this process: sharded like the policy under FSDP (each process
    then runs its part of every reference forward), else a whole copy on the device."""
    if is_sharded(accelerator):
        return accelerator.prepare(reference)
    return reference.to(accelerator.device)


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def gather_weights(
    accelerator: Accelerator, model, trainable_only: bool = False
) -> dict[str, Any] | None:
    """The whole state dict of a sharded ``model`` on the main process; None without FSDP (the
    model's own state dict is complete) and on the other processes.

    ``trainable_only``: only the parameters that train (a LoRA adapter, a value model's head),
    for checkpoints and adapters: the frozen base of a large model is never gathered onto the
    main process's host memory for them."""
    if not is_sharded(accelerator):
        return None
    if trainable_only:  # torch's ignore_frozen_params would still gather a tied output layer
        return _gather_trainable(accelerator, model)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    if not accelerator.is_main_process:
        return None
    # tied weights (an embedding used as the output layer) come back as copies: make them one
    # tensor again, as in one process, so that they are saved once
    first: dict[int, str] = {}
    for key, tensor in accelerator.unwrap_model(model).state_dict(keep_vars=True).items():
        original = first.setdefault(id(tensor), key)
        if original != key and original in state and key in state:
            state[key] = state[original]
    return state


def _gather_trainable(accelerator: Accelerator, model) -> dict[str, Any] | None:
    """The parameters that train, each all-gathered from its shards (every process takes part),
    on the main process's CPU."""
    state = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            whole = param.full_tensor() if hasattr(param, "full_tensor") else param
            if accelerator.is_main_process:
                state[name] = whole.detach().cpu()
    return state if accelerator.is_main_process else None


def is_adapter(model) -> bool:
    """Whether ``model`` (unwrapped: DDP's wrapper hides it) is a PEFT model with an adapter."""
    return hasattr(model, "peft_config")


def merged(model, weights: dict[str, Any] | None, keep: bool = False) -> tuple[Any, None]:
    """``(model, state dict)`` to save for the PEFT ``model`` with its adapter merged in. Sharded
    (``weights``: gathered by :func:`gather_weights`): an unsharded merged copy; else peft's
    ``merge_and_unload``, on a copy if ``keep`` (it merges in place). The state dict is None:
    the returned model's own is complete."""
    import copy

    if weights is not None:
        return merged_copy(model, weights), None
    return (copy.deepcopy(model) if keep else model).merge_and_unload(), None


def merged_copy(model, state: dict[str, Any]):
    """The PEFT ``model``, sharded under FSDP, with its adapter merged in: a new unsharded model
    of the same classes on the CPU, built on the meta device, given the gathered whole
    ``state`` and merged by peft (``merge_and_unload``). The sharded model is left as it is."""
    import copy

    from accelerate import init_empty_weights
    from peft import get_peft_model
    from torch.distributed.fsdp import FSDPModule

    base = model.get_base_model()
    # FSDP2 swaps each sharded module's class for a subclass of it and FSDPModule
    cls = next(c for c in type(base).__mro__ if not issubclass(c, FSDPModule))
    adapter = model.active_adapter
    with init_empty_weights(include_buffers=False):
        skeleton = cls._from_config(copy.deepcopy(base.config))
        skeleton = get_peft_model(skeleton, copy.deepcopy(model.peft_config[adapter]), adapter)
    skeleton.load_state_dict(state, strict=True, assign=True)
    return skeleton.merge_and_unload()


def gather_optimizer(accelerator: Accelerator, model, optimizer) -> dict[str, Any] | None:
    """The optimizer state as one process has it (parameters numbered in order, the format of
    ``torch.optim.Optimizer.state_dict``), on the main process; None on the others."""
    if not is_sharded(accelerator):
        return optimizer.state_dict() if accelerator.is_main_process else None
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, _inner(optimizer), options=_options())
    if not accelerator.is_main_process:
        return None
    index = {name: i for i, name in enumerate(_param_names(by_name))}
    return {
        "state": {index[name]: value for name, value in by_name["state"].items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]}
            for group in by_name["param_groups"]
        ],
    }


def weight_loader(accelerator: Accelerator, model):
    """Under FSDP, the function that loads a whole state dict into the sharded ``model`` (torch's
    loader, which scatters each tensor into the processes' shards); None without FSDP."""
    if not is_sharded(accelerator):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=True, strict=False)
    return lambda state: set_model_state_dict(model, state, options=options)


def load_optimizer(accelerator: Accelerator, model, optimizer, state: dict[str, Any]) -> None:
    """Load what :func:`gather_optimizer` returned (every process loads the same file)."""
    if not is_sharded(accelerator):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    # torch's names of the parameters, in the order the optimizer numbers them (read locally)
    local = get_optimizer_state_dict(model, _inner(optimizer))
    names = _param_names(local)
    saved = sum(len(group["params"]) for group in state["param_groups"])
    if saved != len(names):
        raise ConfigError(
            f"the checkpoint's optimizer holds {saved} parameters, this model trains {len(names)}"
        )
    by_name = {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[i] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(
        model,
        _inner(optimizer),
        by_name,
        options=StateDictOptions(full_state_dict=True, strict=False),
    )


def _param_names(by_name: dict[str, Any]) -> list[str]:
    return [name for group in by_name["param_groups"] for name in group["params"]]


def _inner(optimizer):
    """The torch optimizer under accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)
