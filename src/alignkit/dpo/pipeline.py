"""``DPOPipeline``: optional SFT on the chosen responses, then DPO, evaluation and saving.

SFT writes a full model to ``output_dir/sft``; DPO then starts from it, so the DPO reference
is the SFT model, as in the DPO paper (Rafailov et al. 2023, section 4: "pi_ref = pi_SFT").
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignkit.dpo.config import DPOConfig


@dataclass
class PipelineResult:
    output_dir: Path
    model_path: Path
    metrics: dict[str, float] = field(default_factory=dict)
    data_report: dict = field(default_factory=dict)


def supervised_finetune(config: DPOConfig, out: Path, examples: Sequence | None = None) -> Path:
    """Fine-tune ``config.model`` on the chosen (best) responses of ``config.data``, or on the
    first completion of each of ``examples`` (:class:`~alignkit.data.PreferenceExample` objects,
    which may hold a single completion).

    The optimizer settings are the DPO config's (AdamW, ``scheduler`` with ``warmup_steps``,
    ``weight_decay``, ``max_grad_norm``). With ``config.lora`` a LoRA adapter is trained and
    merged into the weights that are saved, so ``out`` always holds a whole model that the next
    stage can start from.
    """
    from transformers import get_scheduler

    from alignkit.dpo.batching import epoch_batches
    from alignkit.dpo.forward import get_log_probs
    from alignkit.dpo.model_io import load_policy, with_adapter
    from alignkit.dpo.trainer import preference_dataset
    from alignkit.progress import training_progress

    torch.manual_seed(config.seed)
    model, tokenizer = load_policy(config)
    model = with_adapter(model, config)
    if examples is None:
        dataset = preference_dataset(config, config.data, tokenizer)
    else:
        from alignkit.data import DPODataset

        dataset = DPODataset(
            examples,
            tokenizer,
            max_length=config.max_length,
            max_prompt_length=config.prompt_limit,
            truncation_mode=config.truncation_mode,
        )
    lengths = [
        len(dataset[i].prompt_ids) + len(dataset[i].completion_ids[0]) for i in range(len(dataset))
    ]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    epochs = math.ceil(config.sft_epochs)
    per_epoch = math.ceil(len(dataset) / config.batch_size)
    total = max(1, round(config.sft_epochs * per_epoch))
    name = "constant_with_warmup" if config.scheduler == "constant" else config.scheduler
    scheduler = get_scheduler(name, optimizer, config.warmup_steps, total)
    pad = tokenizer.pad_token_id or 0
    step = 0
    with training_progress(total, description="sft") as update:
        for epoch in range(epochs):
            for batch in epoch_batches(lengths, config.batch_size, config.seed, epoch):
                if step >= total:
                    break
                examples = [dataset[i] for i in batch]
                chosen = [
                    type(ex)(ex.prompt_ids, ex.completion_ids[:1], ex.source) for ex in examples
                ]
                out_logps = get_log_probs(model, chosen, pad)
                loss = -out_logps.logps.sum() / out_logps.tokens.sum()
                loss.backward()
                if config.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                update(float(loss.detach()), int(out_logps.tokens.sum()))
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


class DPOPipeline:
    """SFT (if ``sft_epochs`` > 0) -> DPO -> evaluation -> save, all in ``output_dir``."""

    def __init__(self, config: DPOConfig | None = None, **overrides) -> None:
        base = config or DPOConfig()
        self.config = DPOConfig.model_validate({**base.model_dump(), **overrides})

    def run(self) -> PipelineResult:
        from alignkit.dpo.trainer import DPOTrainer

        config = self.config
        out = Path(config.output_dir)
        if config.sft_epochs > 0:
            sft_dir = out / "sft"
            if not (sft_dir / "config.json").exists():
                supervised_finetune(config, sft_dir)
            config = config.model_copy(update={"model": f"hf:{sft_dir}"})
        trainer = DPOTrainer(config=config)
        metrics = trainer.train()
        path = trainer.save_model()
        report = trainer.train_dataset.report.to_dict()
        summary = {"metrics": metrics, "data": report, "model": str(path)}
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        return PipelineResult(out, path, metrics, report)
