"""Training reward (Bradley-Terry) and cost (Safe RLHF) models: :func:`train_value_model`.

Training runs in one process or under ``torchrun`` / ``accelerate launch`` with several, data
parallel or FSDP2 (:mod:`alignkit.parallel`). ``batch_size`` stays the number of pairs per
optimizer step: every process walks the same shuffled global batches and takes every N-th pair
of each, its mean loss weighted by its share of the batch, so the gradient that accelerate
averages over the processes, the logged loss and accuracy, and the weights are the one-process
ones. After training every process scores the whole held-out set (figures equal on all of them):
under FSDP each forward of the sharded model needs every process, so they run the same batches
in step; under data parallelism each process scores with its own (equal) copy. The main process
alone writes the model (gathered from the shards under FSDP), ``metrics.json`` and the trackers.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from alignkit.atomic import write_text
from alignkit.errors import ConfigError
from alignkit.models.hf_loading import precise_float
from alignkit.safety.value_config import ValueModelConfig
from alignkit.safety.value_losses import (
    bradley_terry_loss,
    cost_model_loss,
    pairwise_hit_rate,
    safety_signs,
)
from alignkit.safety.value_model import (
    ValueModel,
    check_records,
    evaluate_pairwise,
    load_backbone,
)


def pair_loss(
    value_model: ValueModel, batch: Sequence[Mapping[str, Any]], config: ValueModelConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, pairwise accuracy)`` of a batch of records, both 0-dim tensors on the model's
    device (nothing is read back from it); chosen and rejected conversations go through the
    model in one forward pass. Margins and safety signs are copied to the device before it."""
    device = value_model.device
    margins = [config.margin if r.get("margin") is None else float(r["margin"]) for r in batch]
    margin = torch.tensor(margins).to(device, non_blocking=True)
    signs = [
        safety_signs([r.get(key) for r in batch]).to(device, non_blocking=True)
        for key in (("chosen_safe", "rejected_safe") if config.kind == "cost" else ())
    ]
    prompts = [r["prompt"] for r in batch] * 2
    responses = [r["chosen"] for r in batch] + [r["rejected"] for r in batch]
    scores = value_model.forward(value_model.encode(prompts, responses))
    chosen, rejected = scores[: len(batch)], scores[len(batch) :]
    if config.kind == "reward":
        loss = bradley_terry_loss(chosen, rejected, margin, config.center_coef)
        return loss, pairwise_hit_rate(chosen, rejected)
    loss = cost_model_loss(chosen, rejected, *signs, margin)
    return loss, pairwise_hit_rate(-chosen, -rejected)  # the better response costs less


def _optimizer(model: torch.nn.Module, config: ValueModelConfig, total_steps: int):
    """AdamW over the trainable parameters and its linear schedule with warm-up."""
    from transformers import get_linear_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, total_steps)
    return optimizer, schedule


def train_value_model(
    config: ValueModelConfig,
    train_records: Sequence[Mapping[str, Any]],
    eval_records: Sequence[Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> ValueModel:
    """Train a reward (Bradley-Terry) or cost (Safe RLHF) model on pairwise value records.

    Records of other dimensions than ``config.dimension`` are left out. The returned model
    carries ``history`` (loss and accuracy per step) and, with ``eval_records``, ``metrics``
    from :func:`evaluate_pairwise`; with ``config.output_dir`` both are saved there too, and go
    to ``config.report_to``'s trackers (run ``reward-model`` or ``cost-model``). Under several
    processes every process returns the trained model (under FSDP still sharded: score it from
    every process together, or load the saved directory); DeepSpeed is refused (ConfigError).
    """
    from alignkit.parallel import Optimisation, training_accelerator
    from alignkit.tracking import Tracking

    if config.report_to and config.output_dir is None:
        raise ConfigError("report_to needs output_dir: the trackers write there")
    records = check_records(train_records, config.dimension)
    held_out = check_records(eval_records, config.dimension, "eval") if eval_records else None
    accelerator = training_accelerator(config.device, "value-model training")
    value_model = load_backbone(config)
    optimizer, schedule = _optimizer(value_model.model, config, _total_steps(records, config))
    loop = Optimisation.prepare(accelerator, value_model.model, optimizer, schedule)
    value_model.model = loop.model  # wrapped (data parallel) or sharded (FSDP) for training
    settings = config.model_dump(mode="json", exclude={"report_to"})
    tracking = Tracking(
        config.report_to, config.output_dir or ".", f"{config.kind}-model", settings,
        enabled=accelerator.is_main_process,
    )  # fmt: skip
    with tracking:
        _train(value_model, records, config, loop, tracking, progress)
        value_model.model = accelerator.unwrap_model(value_model.model).eval()
        if held_out:
            value_model.metrics = evaluate_pairwise(value_model, held_out)
            tracking.log({"eval": value_model.metrics}, len(value_model.history))
    if config.output_dir is not None:
        _save(value_model, Path(config.output_dir), accelerator)
    return value_model


def _total_steps(records: Sequence, config: ValueModelConfig) -> int:
    return math.ceil(len(records) / config.batch_size) * config.epochs


def _train(value_model, records, config, loop, tracking, progress: bool) -> None:
    """``config.epochs`` passes over ``records``, shuffled with ``config.seed``, in global
    batches of ``config.batch_size`` pairs; each batch's loss and accuracy go to ``history``,
    the progress bar (main process) and the trackers."""
    from alignkit.progress import training_progress

    rng = random.Random(config.seed)
    value_model.model.train()
    show = progress and loop.accelerator.is_main_process
    description = f"{config.kind} model"
    with training_progress(_total_steps(records, config), show, description) as update:
        for epoch in range(config.epochs):
            order = list(records)
            rng.shuffle(order)
            for start in range(0, len(order), config.batch_size):
                batch = order[start : start + config.batch_size]
                loss, accuracy = _step(value_model, batch, config, loop)
                value_model.history.append({"epoch": epoch, "loss": loss, "accuracy": accuracy})
                update(loss, 2 * len(batch))
                rate = loop.schedule.get_last_lr()[0]
                tracking.log(
                    {**value_model.history[-1], "learning_rate": rate}, len(value_model.history)
                )


def _step(value_model, batch, config, loop) -> tuple[float, float]:
    """One optimizer step on this process's share of the global ``batch``; returns the loss and
    accuracy of the whole batch.

    The one-process loss is the mean over the batch. A process's share with fraction ``f`` of
    the batch contributes ``f`` x its own mean; times N, because accelerate averages the
    gradients over the N processes (a process without a pair of its own has ``f`` = 0)."""
    from alignkit.parallel import share, sum_over_processes

    mine, fraction = share(batch, loop.accelerator)
    loss, accuracy = pair_loss(value_model, mine, config)
    processes = loop.accelerator.num_processes
    loop.step(loss if processes == 1 else loss * (fraction * processes), config.max_grad_norm)
    # read back once, after the step is queued (a read before the backward idles a GPU)
    figures = torch.stack([loss.detach(), accuracy]).to(precise_float(loss.device)) * fraction
    loss_sum, accuracy_sum = sum_over_processes(loop.accelerator, figures)
    return loss_sum, accuracy_sum


def _save(value_model: ValueModel, out: Path, accelerator) -> None:
    """The model and ``metrics.json`` in ``out``, written by the main process; under FSDP every
    process first takes part in gathering the whole state dict from the shards."""
    from alignkit.dpo.sharding import gather_weights

    accelerator.wait_for_everyone()
    weights = gather_weights(accelerator, value_model.model)  # None without FSDP
    if accelerator.is_main_process:
        value_model.save(out, weights)
        metrics = {"train": value_model.history, "eval": value_model.metrics}
        write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    accelerator.wait_for_everyone()
