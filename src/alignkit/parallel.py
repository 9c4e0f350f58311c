"""Training loops without a trainer class (SFT, reward and cost models) under several processes
(``torchrun`` / ``accelerate launch``: data parallel, or FSDP2 with an FSDP config), through
accelerate.

Every process walks the same global batches, the ones a single process trains on, and takes every
N-th example of each (:func:`share`). The loop scales its loss so that accelerate's average of
the gradients over the processes is the gradient of the one-process loss, and sums the figures
it logs over the processes (:func:`sum_over_processes`), so the logged losses are the
one-process ones. In one process nothing is scaled, reduced or gathered: the loops compute what
they computed before they ran under accelerate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from accelerate import Accelerator, PartialState

from alignkit.dpo.sharding import check_engine, reset_accelerate_state
from alignkit.errors import ConfigError

T = TypeVar("T")


def training_accelerator(device: str, trainer: str) -> Accelerator:
    """A fresh ``Accelerator`` for one training loop: fp32 (these loops train in full precision
    whatever an accelerate config says) and one optimizer step per global batch.

    Refuses (ConfigError, named after ``trainer``) what :func:`~alignkit.dpo.sharding.check_engine`
    refuses (DeepSpeed, FSDP1) and an accelerate config with gradient
    accumulation, which would divide every loss by its steps while the loop steps each batch.
    """
    reset_accelerate_state()  # after an earlier trainer in this process: this loop's settings
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="no")
    check_engine(accelerator, trainer)
    if accelerator.gradient_accumulation_steps != 1:
        raise ConfigError(
            f"{trainer} takes one optimizer step per global batch: remove "
            "gradient_accumulation_steps from the accelerate config (or launch environment)"
        )
    return accelerator


@dataclass
class Optimisation:
    """What a training loop steps: the accelerator, the model and optimizer it prepared (wrapped
    for data parallelism, or sharded under FSDP) and the learning-rate schedule, which stays
    unprepared (accelerate would step it once per process): each process steps its own copy
    once per global batch."""

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: Any
    schedule: Any

    @classmethod
    def prepare(cls, accelerator: Accelerator, model, optimizer, schedule) -> Optimisation:
        model, optimizer = accelerator.prepare(model, optimizer)
        return cls(accelerator, model, optimizer, schedule)

    def step(self, loss: torch.Tensor, max_grad_norm: float | None) -> None:
        """Back-propagate ``loss`` (accelerate averages the gradients over the processes), clip
        the gradients' norm to ``max_grad_norm`` (None: no clipping), step the optimizer and
        the schedule."""
        self.accelerator.backward(loss)
        if max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), max_grad_norm)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)


def share(batch: Sequence[T], accelerator: Accelerator) -> tuple[list[T], float]:
    """This process's part of a global ``batch`` (every N-th item, from its rank on) and the
    fraction of the batch that part is.

    A process left without an item (a last batch smaller than the number of processes) gets the
    batch's first item with fraction 0: it must still run the forward and backward passes that
    synchronise the gradients (and, under FSDP, gather the shards), but its loss counts for
    nothing."""
    mine = list(batch[accelerator.process_index :: accelerator.num_processes])
    if not mine:
        return list(batch[:1]), 0.0
    return mine, len(mine) / len(batch)


def sum_over_processes(
    accelerator: Accelerator, values: Sequence[float] | torch.Tensor
) -> list[float]:
    """``values`` summed element by element over the processes (every process gets the sums);
    in one process the values themselves. A tensor is summed where it is and read back once
    (values still on the device are read after the work queued before them)."""
    if not torch.is_tensor(values):
        values = torch.tensor(list(values), dtype=torch.float64)
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values.to(accelerator.device), "sum")
    return values.tolist()


def on_main_process(action: Callable[[], object]) -> None:
    """Run ``action`` (a write to the output directory) on the main process only, then wait
    until every process gets here, so that none reads what is being written."""
    state = PartialState()
    if state.is_main_process:
        action()
    state.wait_for_everyone()
