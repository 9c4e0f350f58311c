"""Losses of value models: a Bradley-Terry reward model and a Safe RLHF cost model.

Both are pure functions of per-response scalar scores (one score per response, as a value head
or a one-label sequence-classification head produces them), so they can be checked by hand and
reused by any trainer.

- :func:`bradley_terry_loss`: ``-log sigmoid(r_chosen - r_rejected - margin)``, the pairwise
  Bradley-Terry objective of reward modelling, with the per-pair margin of Llama 2 (Touvron et
  al. 2023, "Llama 2: Open Foundation and Fine-Tuned Chat Models", section 3.2.2) and the
  reward-centring auxiliary term ``eta * (r_chosen + r_rejected)^2`` of Eisenstein et al. 2023
  ("Helping or Herding? Reward Model Ensembles Mitigate but do not Eliminate Reward Hacking"),
  which pins the mean reward of a pair at zero so rewards from different models are comparable.
- :func:`cost_model_loss`: the cost-model objective of Safe RLHF (Dai et al. 2023, "Safe RLHF:
  Safe Reinforcement Learning from Human Feedback", section 3, the cost model loss): the pairwise
  term ``-log sigmoid(c_worse - c_better)`` on the safety-ordered pair plus the sign terms
  ``-log sigmoid(s_worse * c_worse) - log sigmoid(s_better * c_better)`` with ``s = +1`` for an
  unsafe response and ``s = -1`` for a safe one, so that a cost above zero means unsafe.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _as_margin(margin: torch.Tensor | float | None, like: torch.Tensor) -> torch.Tensor:
    """``margin`` as a tensor broadcastable to ``like`` (zeros when None)."""
    if margin is None:
        return torch.zeros_like(like)
    return torch.as_tensor(margin, dtype=like.dtype, device=like.device)


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Mean Bradley-Terry reward-model loss over a batch of pairs.

    Per pair: ``-log sigmoid(r_c - r_r - m) + center_coef * (r_c + r_r)^2``.

    Args:
        chosen_rewards: ``[B]`` rewards of the preferred responses.
        rejected_rewards: ``[B]`` rewards of the other responses.
        margin: the margin ``m`` by which the chosen reward should exceed the rejected one;
            a float for every pair or a ``[B]`` tensor per pair (Llama 2 derives it from how
            much better the chosen response was rated). None means no margin.
        center_coef: weight ``eta`` of the reward-centring term (Eisenstein et al. 2023);
            0 turns it off.
    """
    margin_t = _as_margin(margin, chosen_rewards)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards - margin_t)
    if center_coef:
        loss = loss + center_coef * (chosen_rewards + rejected_rewards) ** 2
    return loss.mean()


def safety_signs(
    safe_flags: Sequence[bool | None], device: torch.device | str | None = None
) -> torch.Tensor:
    """Safe RLHF sign labels from safety flags: ``-1`` safe, ``+1`` unsafe, ``0`` unknown."""
    signs = [0.0 if flag is None else (-1.0 if flag else 1.0) for flag in safe_flags]
    return torch.tensor(signs, dtype=torch.float32, device=device)


def cost_model_loss(
    better_costs: torch.Tensor,
    worse_costs: torch.Tensor,
    better_signs: torch.Tensor | None = None,
    worse_signs: torch.Tensor | None = None,
    margin: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Mean Safe RLHF cost-model loss over a batch of safety-ordered pairs.

    Per pair: ``-log sigmoid(c_w - c_b - m) - log sigmoid(s_w c_w) - log sigmoid(s_b c_b)``,
    where ``w`` is the less safe (worse) response and ``b`` the safer (better) one. A sign term
    is only added where that response's safety is known (sign ``+1`` unsafe or ``-1`` safe, see
    :func:`safety_signs`); a sign of ``0`` means unknown, so a pair without safety flags
    contributes only the pairwise term.

    Args:
        better_costs: ``[B]`` costs of the safer responses.
        worse_costs: ``[B]`` costs of the less safe responses.
        better_signs: ``[B]`` signs of the safer responses (None: all unknown).
        worse_signs: ``[B]`` signs of the less safe responses (None: all unknown).
        margin: optional margin on the pairwise term, a float or a ``[B]`` tensor.
    """
    margin_t = _as_margin(margin, better_costs)
    loss = -F.logsigmoid(worse_costs - better_costs - margin_t)
    for costs, signs in ((worse_costs, worse_signs), (better_costs, better_signs)):
        if signs is None:
            continue
        signs = signs.to(costs)
        loss = loss - torch.where(signs != 0, F.logsigmoid(signs * costs), 0.0)
    return loss.mean()


def pairwise_hit_rate(better_scores: torch.Tensor, worse_scores: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs whose better response scores strictly higher (ties count as wrong), as
    a 0-dim tensor where the scores are (not read back; NaN for no pairs)."""
    return (better_scores > worse_scores).float().mean()


def pairwise_accuracy(better_scores: torch.Tensor, worse_scores: torch.Tensor) -> float:
    """:func:`pairwise_hit_rate` as a float."""
    if better_scores.numel() == 0:
        return float("nan")
    return pairwise_hit_rate(better_scores, worse_scores).item()
