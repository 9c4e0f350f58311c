"""Listwise DPO over ranked responses: the Plackett-Luce loss of the DPO paper, appendix A.3.

For one prompt with K responses ranked best to worst and implicit rewards
``r_k = beta * (log pi(y_k | x) - log pi_ref(y_k | x))``, the Plackett-Luce model gives the
ranking the probability ``prod_k exp(r_k) / sum_{j >= k} exp(r_j)``; the loss is its negative
log::

    loss = - sum_{k=1}^{K} [ r_k - logsumexp_{j >= k} r_j ]

(the last term is always zero). With K = 2 it is exactly the sigmoid DPO loss
``-log sigmoid(r_1 - r_2)``. Examples with fewer responses are padded and masked: a masked
response takes no part in any term, so the loss equals that of the example without it.

It is registered as ``loss_type: plackett_luce`` (:mod:`alignkit.dpo.losses`), the one loss
declared for rankings: ranked data trains with it only when the config says so, and a pair then
trains as a ranking of two (the sigmoid DPO loss), whatever else shares its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RankedLogps", "ranked_kl_penalty", "ranked_loss"]


@dataclass
class RankedLogps:
    """Sequence log-probs of ranked lists: ``[B, K]`` tensors, each row ordered best -> worst.

    ``policy`` / ``ref`` are summed completion log-probs (``ref`` None without a reference),
    ``tokens`` the completion lengths, 0 where example b has fewer than k + 1 responses (the
    mask); None: every response is real and lengths are unknown.
    """

    policy: Tensor
    ref: Tensor | None = None
    tokens: Tensor | None = None

    def __post_init__(self) -> None:
        if self.policy.dim() != 2:
            raise ValueError(f"ranked log-probs must be [B, K], got {tuple(self.policy.shape)}")
        for name in ("ref", "tokens"):
            value = getattr(self, name)
            if value is not None and value.shape != self.policy.shape:
                raise ValueError(
                    f"{name} has shape {tuple(value.shape)}, expected {tuple(self.policy.shape)}"
                )

    @property
    def mask(self) -> Tensor:
        """``[B, K]`` bool, True for real responses."""
        if self.tokens is None:
            return torch.ones_like(self.policy, dtype=torch.bool)
        return self.tokens > 0


def ranked_kl_penalty(logps: RankedLogps) -> Tensor:
    """Constrained-DPO penalty per example for lists: ``0.5 * mean_k (h_k / n_k) ** 2``.

    The k2 estimator of :func:`alignkit.dpo.losses.kl_penalty`, averaged over the real
    responses of each list instead of over chosen and rejected; with two responses it is that
    function exactly.
    """
    if logps.ref is None or logps.tokens is None:
        raise ValueError("the KL penalty needs reference log-probs and completion lengths")
    mask = logps.mask
    # padded entries may hold anything: replaced before any arithmetic (NaN-free backward)
    per_token = (logps.policy - logps.ref).masked_fill(~mask, 0.0) / logps.tokens.clamp(min=1)
    return 0.5 * (per_token**2).sum(-1) / mask.sum(-1).clamp(min=1)


def ranked_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    mask: Tensor | None = None,
    beta: float | Tensor = 0.1,
) -> Tensor:
    """Plackett-Luce loss per example ``[B]``.

    Args:
        policy_logps: ``[B, K]`` summed completion log-probs under the policy, each row ordered
            best -> worst.
        ref_logps: ``[B, K]`` the same under the reference model.
        mask: ``[B, K]`` bool, True for real responses (None: all real). Examples with fewer
            than two real responses get loss 0.
        beta: the DPO temperature (a 0-dim tensor: beta-DPO's per-batch beta, positive by
            construction and not read back from its device).
    """
    if policy_logps.dim() != 2 or policy_logps.shape != ref_logps.shape:
        raise ValueError(
            "policy_logps and ref_logps must both have shape [B, K], got "
            f"{tuple(policy_logps.shape)} and {tuple(ref_logps.shape)}"
        )
    if not isinstance(beta, Tensor) and beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if mask is None:
        mask = torch.ones_like(policy_logps, dtype=torch.bool)
    elif mask.shape != policy_logps.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(policy_logps.shape)}")
    # padded entries may hold anything (0, -inf, NaN): they are replaced before any arithmetic
    rewards = (beta * (policy_logps - ref_logps)).masked_fill(~mask, 0.0)
    num = rewards.shape[1]
    later = torch.ones(num, num, dtype=torch.bool, device=rewards.device).triu()  # j >= k
    # allowed[b, k, j]: response j competes at position k (both real, j at or below k)
    allowed = later & mask[:, None, :] & mask[:, :, None]
    # rows of masked positions keep a finite dummy entry (their term is dropped below), so that
    # logsumexp never sees an all -inf row and backward stays NaN-free
    allowed = allowed | (~mask[:, :, None] & torch.eye(num, dtype=torch.bool, device=mask.device))
    scores = rewards[:, None, :].expand(-1, num, -1).masked_fill(~allowed, float("-inf"))
    terms = rewards - torch.logsumexp(scores, dim=-1)
    return -torch.where(mask, terms, torch.zeros_like(terms)).sum(dim=-1)
