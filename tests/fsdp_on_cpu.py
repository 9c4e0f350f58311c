"""Run the alignkit CLI under accelerate's FSDP2 on CPU processes (gloo), for the tests.

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_on_cpu.py dpo ...

with the environment ``accelerate launch --config_file examples/accelerate/fsdp.yaml`` sets
(``ACCELERATE_USE_FSDP``, ``FSDP_VERSION``, ...). torch's ``fully_shard`` runs on CPU with gloo,
but accelerate 1.16 turns FSDP on only for accelerator devices: ``AcceleratorState.__init__``
(accelerate/state.py) sets ``DistributedType.FSDP`` in its ``MULTI_GPU``/``MULTI_XPU``/... branch,
so on CPU (``MULTI_CPU``) the FSDP plugin is silently dropped and the processes run plain data
parallel. This launcher lifts that one gate: accelerate then prepares, shards, clips and gathers
as on GPUs. Each process also appends to ``rank<N>.jsonl`` in ``$ALIGNKIT_FSDP_RECORD`` a line
per model accelerate shards (the policy, and the frozen reference when there is one): its
parameter elements in all and on this process, so a test can tell that the run was sharded, not
silently replicated.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import accelerate.accelerator
import accelerate.state
from accelerate.utils import DistributedType

_init_state = accelerate.state.AcceleratorState.__init__
_prepare_model = accelerate.accelerator.fsdp2_prepare_model


def _state_init(self, *args, **kwargs):
    _init_state(self, *args, **kwargs)
    plugin = kwargs.get("fsdp_plugin")
    if self.distributed_type == DistributedType.MULTI_CPU and plugin is not None:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = plugin
        accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def _record(accelerator, model):
    model = _prepare_model(accelerator, model)
    params = list(model.parameters())
    record = {
        "trainable": any(p.requires_grad for p in params),  # the policy; else the reference
        "total": sum(p.numel() for p in params),
        "local": sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params),
    }
    folder = Path(os.environ["ALIGNKIT_FSDP_RECORD"])
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"rank{accelerator.process_index}.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    return model


accelerate.state.AcceleratorState.__init__ = _state_init
accelerate.accelerator.fsdp2_prepare_model = _record

if __name__ == "__main__":
    from alignkit.cli import main

    sys.argv[0] = "alignkit"
    main()
