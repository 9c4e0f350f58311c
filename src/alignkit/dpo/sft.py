"""Supervised fine-tuning on the chosen (best) responses: the first stage of ``DPOPipeline``
(``sft_epochs``) and of Constitutional AI training (SL-CAI).

It runs in one process or under ``torchrun`` / ``accelerate launch`` with several, data parallel
or FSDP2 (:mod:`alignkit.parallel`): ``batch_size`` is per process, as for the DPO trainer
that shares the config, so a global batch holds ``batch_size`` x processes examples and each
process takes every N-th of them. The loss is the mean negative log-likelihood per completion
token over the whole global batch, the one-process loss whatever the number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from alignkit.dpo.config import DPOConfig


def supervised_finetune(config: DPOConfig, out: Path, examples: Sequence | None = None) -> Path:
    """Fine-tune ``config.model`` on the chosen (best) responses of ``config.data``, or on the
    first completion of each of ``examples`` (:class:`~alignkit.data.PreferenceExample` objects,
    which may hold a single completion). The model is saved to ``out`` (by the main process; the
    others return once it is written); the loss and learning rate go to ``config.report_to``'s
    trackers as run ``sft`` in ``config.output_dir``.

    The optimizer settings are the DPO config's (AdamW, ``scheduler`` with ``warmup_steps``,
    ``weight_decay``, ``max_grad_norm``). With ``config.lora`` a LoRA adapter is trained and
    merged into the weights that are saved, so ``out`` always holds a whole model that the next
    stage can start from (under FSDP the gathered adapter is merged into an unsharded copy).
    """
    from transformers import get_scheduler

    from alignkit.dpo.model_io import load_policy, with_adapter
    from alignkit.parallel import Optimisation, training_accelerator

    accelerator = training_accelerator(config.device, "SFT")
    torch.manual_seed(config.seed)
    model, tokenizer = load_policy(config)
    model = with_adapter(model, config)
    dataset = _dataset(config, tokenizer, examples)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    global_batch = config.batch_size * accelerator.num_processes
    total = max(1, round(config.sft_epochs * math.ceil(len(dataset) / global_batch)))
    name = "constant_with_warmup" if config.scheduler == "constant" else config.scheduler
    scheduler = get_scheduler(name, optimizer, config.warmup_steps, total)
    loop = Optimisation.prepare(accelerator, model, optimizer, scheduler)
    _train(config, loop, dataset, tokenizer.pad_token_id or 0, total)
    _save(accelerator, loop.model, tokenizer, out)
    return out


def _dataset(config: DPOConfig, tokenizer, examples: Sequence | None):
    """The tokenized SFT data: ``config.data`` read as preference data, or ``examples``."""
    if examples is None:
        from alignkit.dpo.trainer import preference_dataset

        return preference_dataset(config, config.data, tokenizer)
    from alignkit.data import DPODataset

    return DPODataset(
        examples,
        tokenizer,
        max_length=config.max_length,
        max_prompt_length=config.prompt_limit,
        truncation_mode=config.truncation_mode,
    )


def _train(config: DPOConfig, loop, dataset, pad: int, total: int) -> None:
    """``total`` optimizer steps over length-bucketed global batches (``batch_size`` examples
    per process), logging each one's loss to the progress bar and the trackers of the main
    process."""
    from alignkit.dpo.batching import epoch_batches
    from alignkit.dpo.trainer import NOT_TRACKED
    from alignkit.parallel import share
    from alignkit.progress import training_progress
    from alignkit.tracking import Tracking

    lengths = [
        len(dataset[i].prompt_ids) + len(dataset[i].completion_ids[0]) for i in range(len(dataset))
    ]
    global_batch = config.batch_size * loop.accelerator.num_processes
    settings = config.model_dump(mode="json", exclude=NOT_TRACKED)
    main = loop.accelerator.is_main_process
    tracking = Tracking(config.report_to, Path(config.output_dir), "sft", settings, enabled=main)
    step = 0
    with tracking, training_progress(total, enabled=main, description="sft") as update:
        for epoch in range(math.ceil(config.sft_epochs)):
            for batch in epoch_batches(lengths, global_batch, config.seed, epoch):
                if step >= total:
                    break
                mine, _ = share(batch, loop.accelerator)
                examples = [dataset[i] for i in mine]
                chosen = [
                    type(ex)(ex.prompt_ids, ex.completion_ids[:1], ex.source) for ex in examples
                ]
                loss, tokens = _step(config, loop, chosen, pad)
                step += 1
                update(loss, tokens)
                tracking.log({"loss": loss, "learning_rate": loop.schedule.get_last_lr()[0],
                              "epoch": epoch}, step)  # fmt: skip


def _step(config: DPOConfig, loop, chosen, pad: int) -> tuple[float, int]:
    """One optimizer step on this process's share of a global batch; returns the global
    batch's loss and its number of completion tokens.

    The one-process loss is ``-sum(log-probs) / tokens`` over the whole batch. With N processes
    each scales its own sum by ``N / tokens of all processes``: accelerate averages the gradients
    over the processes, which then gives the gradient of the one-process loss."""
    from alignkit.dpo.forward import get_log_probs
    from alignkit.parallel import sum_over_processes

    # the completion tokens are known on the host: counted (and summed over the processes)
    # before the forward, not read back from the device between the forward and the backward
    tokens = sum(len(c) for ex in chosen for c in ex.completion_ids)
    processes = loop.accelerator.num_processes
    if processes > 1:
        tokens = sum_over_processes(loop.accelerator, [float(tokens)])[0]
    logps = get_log_probs(loop.model, chosen, pad)
    if processes == 1:
        loss = -logps.logps.sum() / tokens
    else:
        loss = -logps.logps.sum() * (processes / tokens)
    loop.step(loss, config.max_grad_norm)
    (mean,) = sum_over_processes(loop.accelerator, [float(loss.detach()) / processes])
    return mean, int(tokens)


def _save(accelerator, model, tokenizer, out: Path) -> None:
    """The trained model (a LoRA adapter merged in) and the tokenizer in Hugging Face format at
    ``out``, written by the main process; under FSDP every process first takes part in
    gathering the whole state dict from the shards."""
    from alignkit.dpo.sharding import gather_weights, is_adapter, merged

    accelerator.wait_for_everyone()
    weights = gather_weights(accelerator, model)  # None without FSDP: the model's own
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(model)
        if is_adapter(model):
            model, weights = merged(model, weights)
        model.save_pretrained(out, safe_serialization=True, state_dict=weights)
        tokenizer.save_pretrained(out)
    accelerator.wait_for_everyone()
