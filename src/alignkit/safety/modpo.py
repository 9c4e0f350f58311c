"""Multi-objective DPO (MODPO; Zhou et al. 2023, "Beyond One-Preference-Fits-All Alignment:
Multi-Objective Direct Preference Optimization", arXiv:2310.03708).

For a weight vector ``w`` over objectives, MODPO trains on the preference data of one target
objective ``k`` with the loss

    -log s( (beta / w_k) * (h_c - h_r)  -  w_other . (R_other(y_c) - R_other(y_r)) / w_k )

where ``h`` are the policy/reference log-ratios and ``R_other`` the reward models of the other
objectives. That is DPO with ``beta / w_k`` and a per-pair margin, which alignkit's DPO trainer
takes from a ``margin`` field of the data (see :func:`alignkit.dpo.losses.sigmoid_loss`); so
:func:`modpo_records` writes ordinary preference records and :func:`modpo_sweep` trains one
model per weight vector with the ordinary :class:`~alignkit.dpo.DPOTrainer` (same checkpoints,
resume and metrics). The implicit reward of the model trained for ``w`` approximates
``w . R``; a sweep over ``w`` gives a family of models along the objectives' trade-off.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from alignkit.errors import ConfigError
from alignkit.evaluation.rundir import write_jsonl


class RewardModel(Protocol):
    """What MODPO needs of a reward model: higher is better (``ValueModel.preference``)."""

    def preference(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]: ...


def check_weights(weights: Mapping[str, float], target: str) -> dict[str, float]:
    """Non-negative weights summing to 1 with a positive target weight; ConfigError otherwise."""
    bad = {k: v for k, v in weights.items() if not math.isfinite(v) or v < 0}
    if bad:
        raise ConfigError(f"MODPO weights must be non-negative numbers, got {bad}")
    if target not in weights or weights[target] <= 0:
        raise ConfigError(f"MODPO needs a positive weight for the target objective {target!r}")
    total = sum(weights.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"MODPO weights must sum to 1, got {total:g} ({dict(weights)})")
    return dict(weights)


def modpo_records(
    pairs: Sequence[Mapping[str, Any]],
    weights: Mapping[str, float],
    target: str,
    reward_models: Mapping[str, RewardModel],
) -> list[dict[str, Any]]:
    """Preference records (prompt, chosen, rejected, margin) of the target objective's pairs,
    the margin being ``w_other . (R_other(chosen) - R_other(rejected)) / w_target``."""
    weights = check_weights(weights, target)
    others = {d: w for d, w in weights.items() if d != target and w > 0}
    missing = sorted(set(others) - set(reward_models))
    if missing:
        raise ConfigError(f"MODPO: no reward model for objective(s) {missing}")
    prompts = [p["prompt"] for p in pairs]
    margins = [0.0] * len(pairs)
    for dimension, w in others.items():
        model = reward_models[dimension]
        chosen = model.preference(prompts, [p["chosen"] for p in pairs])
        rejected = model.preference(prompts, [p["rejected"] for p in pairs])
        for i, (c, r) in enumerate(zip(chosen, rejected, strict=True)):
            margins[i] += w * (c - r) / weights[target]
    return [
        {"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"], "margin": m}
        for p, m in zip(pairs, margins, strict=True)
    ]


def _name(weights: Mapping[str, float]) -> str:
    return "-".join(f"{k}{v:g}" for k, v in sorted(weights.items()))


def modpo_sweep(
    model: str,
    pairs: Sequence[Mapping[str, Any]],
    target: str,
    reward_models: Mapping[str, RewardModel],
    weight_grid: Sequence[Mapping[str, float]],
    config,
    output_dir: str | Path,
) -> list[tuple[dict[str, float], Path]]:
    """Train one model per weight vector of ``weight_grid`` from ``model`` with MODPO; returns
    ``(weights, model_dir)`` pairs. ``config`` is a :class:`~alignkit.dpo.DPOConfig` whose
    ``beta`` is divided by each run's target weight; runs already finished are kept."""
    from alignkit.dpo import DPOTrainer

    out = Path(output_dir)
    results = []
    for weights in weight_grid:
        run = out / _name(weights)
        final = run / "final"
        if not (final / "config.json").exists() and not (final / "adapter_config.json").exists():
            records = modpo_records(pairs, weights, target, reward_models)
            run.mkdir(parents=True, exist_ok=True)
            data = run / "modpo.jsonl"
            write_jsonl(data, records)
            settings = {
                "model": model,
                "data": data,
                "output_dir": run,
                "beta": config.beta / weights[target],
                "loss_type": "sigmoid",
                "resume": (run / "metrics.jsonl").exists(),
            }
            trainer = DPOTrainer(config=config.model_copy(update=settings))
            trainer.train()
            final = trainer.save_model(merge_lora=True)
        results.append((dict(weights), final))
    return results
