"""beta-DPO: a per-batch beta set from the reward margin, with margin-guided data filtering.

Wu et al. 2024, "beta-DPO: Direct Preference Optimization with Dynamic beta" (NeurIPS 2024,
arXiv:2407.08639). For each example the margin is

    M_i = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))

(the DPO logit; the authors' code uses it unscaled, so ``alpha`` is per nat, as in their
configs). Each batch, the running statistics are updated first, by exponential moving averages
with momentum ``m`` (0.9 in the paper), starting from 0 as in the authors' code::

    M_0   <- m * M_0   + (1 - m) * mean_i M_i
    sigma <- m * sigma + (1 - m) * std_i M_i

Optional filtering (``filter_fraction = rho``): each example gets the weight of a Gaussian
centred on the running mean, ``w_i = exp(-(M_i - M_0)^2 / (2 sigma^2))``, and ``floor(rho * B)``
examples are drawn without replacement with probability proportional to ``w_i``, so pairs with
outlying margins (too easy, or likely mislabelled) tend to be dropped. The paper keeps 80%.
Then, with ``M_batch`` the mean margin of the kept examples::

    beta = beta_0 * (1 + alpha * (M_batch - M_0)),   clipped below at ``min_beta``

A batch with larger margins than usual gets a larger beta (a more conservative update), a
batch of hard, small-margin pairs a smaller one. The trainer calls :meth:`AdaptiveDPO.step`
once per batch before the loss, uses ``step.beta`` as the loss's beta and averages the loss
over ``step.mask``. Sampling uses a private seeded generator stored in :meth:`state_dict`, so a
resumed run draws the same examples. Under data parallelism, give every rank the gathered
margins of the global batch (:meth:`AdaptiveDPO.update`) so all ranks agree.

Everything that depends on the margins is computed where they are (float64; float32 on MPS)
and nothing is read back: on a GPU, reading beta between the forward and the loss would leave
the device idle while the host queues the backward. The sampler's noise does not depend on the
margins and is drawn on the host; how many examples are kept is known there too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from alignkit.dpo.losses import PreferenceLogps
from alignkit.errors import ConfigError
from alignkit.models.hf_loading import precise_float

__all__ = ["AdaptiveDPO", "AdaptiveStep"]

_STATE_VERSION = 1


@dataclass
class AdaptiveStep:
    """What one batch gets: its beta, which examples to train on, and margin statistics.
    Values computed from the margins are 0-dim tensors on their device (not read back)."""

    beta: Tensor
    mask: Tensor  # [B] bool, True for the examples kept
    kept: int  # how many are kept (known on the host)
    margin_mean: Tensor  # mean margin of the whole batch
    kept_margin_mean: Tensor  # mean margin of the kept examples (the M_batch of the beta rule)
    running_mean: Tensor  # M_0 after this batch's update
    running_std: Tensor  # sigma after this batch's update

    def metrics(self) -> dict[str, Tensor | float]:
        """Scalars worth logging (tensors stay on the device until the trainer reads them)."""
        return {
            "adaptive/beta": self.beta,
            "adaptive/margin_mean": self.margin_mean,
            "adaptive/margin_running_mean": self.running_mean,
            "adaptive/kept_fraction": self.kept / self.mask.numel(),
        }


class AdaptiveDPO:
    """Per-batch beta from the implicit reward margin (beta-DPO), with optional filtering.

    Args:
        beta: beta_0, the base temperature.
        alpha: how strongly beta follows the margin (the paper's ``a``; its README uses 0.6).
        momentum: EMA momentum ``m`` of the running margin mean and std (0.9 in the paper).
        filter_fraction: rho, the fraction of each batch KEPT by filtering (the paper keeps
            0.8); None turns filtering off.
        min_beta: beta is clipped to at least this (the authors' code uses 1e-3).
        seed: seed of the sampler used by filtering.
    """

    def __init__(
        self,
        beta: float = 0.1,
        alpha: float = 0.6,
        momentum: float = 0.9,
        filter_fraction: float | None = None,
        min_beta: float = 1e-3,
        seed: int = 0,
    ) -> None:
        _require(beta > 0 and math.isfinite(beta), f"beta must be positive, got {beta}")
        _require(math.isfinite(alpha), f"alpha must be a finite number, got {alpha}")
        _require(0.0 <= momentum < 1.0, f"momentum must lie in [0, 1), got {momentum}")
        _require(
            filter_fraction is None or 0.0 < filter_fraction <= 1.0,
            f"filter_fraction must lie in (0, 1] or be None, got {filter_fraction}",
        )
        _require(0.0 < min_beta <= beta, f"min_beta must lie in (0, beta], got {min_beta}")
        self.beta = float(beta)
        self.alpha = float(alpha)
        self.momentum = float(momentum)
        self.filter_fraction = filter_fraction
        self.min_beta = float(min_beta)
        self.seed = seed
        self.running_mean: Tensor | float = 0.0  # a 0-dim tensor on the margins' device once
        self.running_std: Tensor | float = 0.0  # updated
        self.steps = 0
        self._generator = torch.Generator().manual_seed(seed)

    @staticmethod
    def margins(logps: PreferenceLogps) -> Tensor:
        """Per-example margin ``M_i`` (detached): chosen minus rejected log-ratio."""
        if not logps.has_reference:
            raise ConfigError("AdaptiveDPO (beta-DPO) needs reference log-probs for its margins")
        chosen, rejected = logps.logratios()
        return (chosen - rejected).detach()

    def step(self, logps: PreferenceLogps) -> AdaptiveStep:
        """Update the running statistics with this batch and return its beta and mask."""
        return self.update(self.margins(logps))

    def update(self, margins: Tensor) -> AdaptiveStep:
        """:meth:`step` from precomputed margins ``[B]`` (e.g. gathered over all ranks)."""
        if margins.dim() != 1 or margins.numel() == 0:
            raise ValueError(f"margins must be a non-empty 1-D tensor, got {tuple(margins.shape)}")
        values = margins.detach().to(precise_float(margins.device))
        batch_mean = values.mean()
        batch_std = values.std() if values.numel() > 1 else torch.zeros_like(batch_mean)
        m = self.momentum
        self.running_mean = m * self.running_mean + (1.0 - m) * batch_mean
        self.running_std = m * self.running_std + (1.0 - m) * batch_std
        self.steps += 1

        keep, kept = self._select(values)
        kept_mean = batch_mean if kept == values.numel() else values.index_select(0, keep).mean()
        beta = self.beta * (1.0 + self.alpha * (kept_mean - self.running_mean))
        mask = torch.zeros_like(values, dtype=torch.bool).index_fill_(0, keep, True)
        return AdaptiveStep(
            beta=beta.clamp(min=self.min_beta),
            mask=mask,
            kept=kept,
            margin_mean=batch_mean,
            kept_margin_mean=kept_mean,
            running_mean=self.running_mean,
            running_std=self.running_std,
        )

    def _select(self, values: Tensor) -> tuple[Tensor, int]:
        """Indices (ascending, on the margins' device) and number of the examples kept:
        Gaussian-weighted sampling without replacement."""
        size = values.numel()
        if self.filter_fraction is None:
            return torch.arange(size, device=values.device), size
        count = max(1, math.floor(self.filter_fraction * size + 1e-9))
        # log of the Gaussian weight; a vanishing std makes every example equally likely only
        # when all margins sit on the mean, otherwise the nearest ones win
        sigma = torch.as_tensor(self.running_std).clamp(min=1e-8)
        log_weights = -0.5 * ((values - self.running_mean) / sigma) ** 2
        # Gumbel top-k draws `count` items without replacement, each with probability
        # proportional to its weight, as torch.multinomial would, without underflowing weights
        uniform = torch.rand(size, generator=self._generator, dtype=torch.float64)
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-300)))
        gumbel = gumbel.to(values.device, values.dtype, non_blocking=True)
        chosen = torch.topk(log_weights + gumbel, count).indices
        return chosen.sort().values, count

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume identically (plain values and one uint8 tensor)."""
        return {
            "version": _STATE_VERSION,
            "beta": self.beta,
            "alpha": self.alpha,
            "momentum": self.momentum,
            "filter_fraction": self.filter_fraction,
            "min_beta": self.min_beta,
            "seed": self.seed,
            "running_mean": float(self.running_mean),  # read here, at a checkpoint only
            "running_std": float(self.running_std),
            "steps": self.steps,
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the hyper-parameters must match this instance's."""
        if state.get("version") != _STATE_VERSION:
            raise ConfigError(f"unsupported AdaptiveDPO state version {state.get('version')!r}")
        for name in ("beta", "alpha", "momentum", "filter_fraction", "min_beta"):
            if state[name] != getattr(self, name):
                raise ConfigError(
                    f"AdaptiveDPO checkpoint has {name}={state[name]!r} but this run has "
                    f"{name}={getattr(self, name)!r}; resume with the same settings"
                )
        self.seed = int(state["seed"])
        self.running_mean = float(state["running_mean"])
        self.running_std = float(state["running_std"])
        self.steps = int(state["steps"])
        self._generator.set_state(state["generator"])


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
