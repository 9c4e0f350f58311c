"""From policy and reference log-probs to a loss and the metrics DPO users watch.

``config.loss_type`` decides the objective, never the batch: a loss declared for rankings
(``plackett_luce``) sees every example as a ranked list (a pair is a list of two); a pairwise
loss sees pairs, and a batch holding a longer list is an error (the trainer refuses such data
before training, :func:`alignkit.dpo.registry.check_data`). With
:class:`~alignkit.dpo.adaptive.AdaptiveDPO` beta is chosen per batch and some examples may be
filtered out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from alignkit.dpo.forward import SequenceLogps
from alignkit.dpo.losses import (
    PreferenceLogps,
    RankedLogps,
    compute_loss,
    compute_ranked_loss,
    get_loss,
)
from alignkit.errors import ConfigError


@dataclass
class StepResult:
    """A micro-batch's loss and metrics: detached 0-dim tensors where computed on the device
    (read together, once per step, by :meth:`stack`), plain floats where known on the host."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor | float] = field(default_factory=dict)

    @staticmethod
    def stack(results: list[StepResult], device) -> tuple[list[str], torch.Tensor]:
        """The sorted metric names and their means over ``results`` as one float32 tensor on
        ``device``, built without waiting on the device (host floats are copied in without a
        synchronising copy)."""
        keys = sorted({k for r in results for k in r.metrics})
        means = {k: sum(r.metrics.get(k, 0.0) for r in results) / len(results) for k in keys}
        host = [k for k in keys if not torch.is_tensor(means[k])]
        on_host = torch.tensor([float(means[k]) for k in host], dtype=torch.float32)
        moved = dict(zip(host, on_host.to(device, non_blocking=True), strict=True))
        column = [moved[k] if k in moved else means[k].to(device, torch.float32) for k in keys]
        return keys, torch.stack(column) if column else torch.zeros(0, device=device)

    @staticmethod
    def average(results: list[StepResult]) -> dict[str, float]:
        """The metrics' means over ``results`` as floats (one read from the device)."""
        if not results:
            return {}
        keys, values = StepResult.stack(results, results[0].loss.device)
        return dict(zip(keys, values.tolist(), strict=True))


def pair_view(policy: SequenceLogps, ref: SequenceLogps | None) -> PreferenceLogps:
    """The best and the worst valid completion of each example as a (chosen, rejected) pair."""
    last = policy.mask.long().sum(1) - 1
    rows = torch.arange(policy.logps.shape[0], device=policy.logps.device)

    def pick(t: torch.Tensor, k) -> torch.Tensor:
        return t[rows, k] if isinstance(k, torch.Tensor) else t[:, k]

    return PreferenceLogps(
        policy_chosen=pick(policy.logps, 0),
        policy_rejected=pick(policy.logps, last),
        ref_chosen=None if ref is None else pick(ref.logps, 0),
        ref_rejected=None if ref is None else pick(ref.logps, last),
        chosen_tokens=pick(policy.tokens, 0),
        rejected_tokens=pick(policy.tokens, last),
    )


def adapt(adaptive, pairs: PreferenceLogps, gather=None, rank: int = 0):
    """beta-DPO's beta and kept examples for this micro-batch, and the divisor of the summed
    loss. With data parallelism the margins of every process are gathered first, so all
    processes share one beta and one running state (``gather`` concatenates in rank order);
    the divisor is the number of examples kept over all processes per process, so averaging
    gradients over processes gives the mean over all kept examples, as one process would."""
    margins = adaptive.margins(pairs)
    if gather is None:
        step = adaptive.update(margins)
        return step, float(max(step.kept, 1))
    everyone = gather(margins)
    step = adaptive.update(everyone)
    size, processes = margins.shape[0], everyone.shape[0] // margins.shape[0]
    divisor = max(step.kept, 1) / processes
    step.mask = step.mask[rank * size : (rank + 1) * size].to(margins.device)
    return step, divisor


def soft_smoothing(examples, config) -> torch.Tensor | None:
    """Per-pair label smoothing ``1 - soft_label`` for a batch with AI-feedback soft labels
    (pairs without one get ``config.label_smoothing``); None when no pair has one, or when
    ``config.use_soft_labels`` is off."""
    if not config.use_soft_labels or all(ex.soft_label is None for ex in examples):
        return None
    return torch.tensor(
        [
            config.label_smoothing if ex.soft_label is None else 1.0 - ex.soft_label
            for ex in examples
        ]
    )


def pair_margins(examples) -> torch.Tensor | None:
    """Per-pair margins of a batch whose data has a ``margin`` field (0 where a pair has none);
    None when no pair has one."""
    if all(ex.margin is None for ex in examples):
        return None
    return torch.tensor([0.0 if ex.margin is None else ex.margin for ex in examples])


def preference_step(
    policy: SequenceLogps,
    ref: SequenceLogps | None,
    config,
    adaptive=None,
    gather=None,
    rank: int = 0,
    smoothing: torch.Tensor | None = None,
    margin: torch.Tensor | None = None,
) -> StepResult:
    """Loss (mean over kept examples) and metrics for one micro-batch; ``smoothing`` is the
    per-pair label smoothing of :func:`soft_smoothing`, ``margin`` that of :func:`pair_margins`."""
    pairs = pair_view(policy, ref)
    if margin is not None:
        pairs.margin = margin.to(pairs.policy_chosen.device, non_blocking=True)
    beta, keep, divisor, extra = config.beta, None, 1.0, {}
    if adaptive is not None:
        adapted, divisor = adapt(adaptive, pairs, gather, rank)
        beta, keep = adapted.beta, adapted.mask
        extra.update(adapted.metrics())
    params = config.loss_params()
    if smoothing is not None:
        params["label_smoothing"] = smoothing.to(pairs.policy_chosen.device, non_blocking=True)
    if get_loss(config.loss_type).rankings:
        if margin is not None:
            raise ConfigError(f"loss_type {config.loss_type!r} does not use per-pair margins")
        lists = RankedLogps(policy.logps, None if ref is None else ref.logps, policy.tokens)
        out = compute_ranked_loss(lists, config.loss_type, beta, **params)
    elif policy.logps.shape[1] > 2:
        raise ConfigError(
            f"loss_type {config.loss_type!r} is defined for pairs, but this batch holds a ranked "
            f"list of {policy.logps.shape[1]} responses; use a loss defined for rankings"
        )
    else:
        out = compute_loss(pairs, loss_type=config.loss_type, beta=beta, **params)
    losses, chosen, rejected = out.losses, out.chosen_rewards, out.rejected_rewards
    extra.update(out.metrics)
    loss = (losses * keep).sum() / divisor if keep is not None else losses.mean()
    chosen, rejected = chosen.detach(), rejected.detach()
    metrics = {  # tensors, not floats: reading them here would wait on the device mid-step
        "loss": loss.detach(),
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/accuracies": (chosen > rejected).float().mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "logps/chosen": pairs.policy_chosen.detach().mean(),
        "logps/rejected": pairs.policy_rejected.detach().mean(),
        "beta": beta,
        **extra,
    }
    return StepResult(loss, metrics)
