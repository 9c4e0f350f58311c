"""Listwise DPO over ranked responses: the Plackett-Luce loss of the DPO paper, appendix A.3.

For one prompt with K responses ranked best to worst and implicit rewards
``r_k = beta * (log pi(y_k | x) - log pi_ref(y_k | x))``, the Plackett-Luce model gives the
ranking the probability ``prod_k exp(r_k) / sum_{j >= k} exp(r_j)``; the loss is its negative
log::

    loss = - sum_{k=1}^{K} [ r_k - logsumexp_{j >= k} r_j ]

(the last term is always zero). With K = 2 it is exactly the sigmoid DPO loss
``-log sigmoid(r_1 - r_2)``. Examples with fewer responses are padded and masked: a masked
response takes no part in any term, so the loss equals that of the example without it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ranked_loss"]


def ranked_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    mask: Tensor | None = None,
    beta: float = 0.1,
) -> Tensor:
    """Plackett-Luce loss per example ``[B]``.

    Args:
        policy_logps: ``[B, K]`` summed completion log-probs under the policy, each row ordered
            best -> worst.
        ref_logps: ``[B, K]`` the same under the reference model.
        mask: ``[B, K]`` bool, True for real responses (None: all real). Examples with fewer
            than two real responses get loss 0.
        beta: the DPO temperature.
    """
    if policy_logps.dim() != 2 or policy_logps.shape != ref_logps.shape:
        raise ValueError(
            "policy_logps and ref_logps must both have shape [B, K], got "
            f"{tuple(policy_logps.shape)} and {tuple(ref_logps.shape)}"
        )
    if beta <= 0:
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
