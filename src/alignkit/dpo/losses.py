"""Pairwise preference losses of the DPO family, kept in a registry (:mod:`alignkit.dpo.registry`).

Every loss is a small pure function of the sequence log-probabilities of a batch of preference
pairs, registered with :func:`register_loss` together with its paper, whether it needs a
reference model, its hyper-parameters and the ``label_smoothing`` it accepts. The formula is the
function's docstring. The trainer calls :func:`compute_loss`; :func:`dpo_loss` is the same thing
with the signature of the reference DPO code.

Notation used in the formulas (per example, ``B`` examples)::

    pc, pr  policy sum log-prob of the chosen / rejected completion
    qc, qr  the same under the reference model
    nc, nr  number of completion tokens of chosen / rejected
    hc = pc - qc, hr = pr - qr      log-ratios (policy vs reference)
    d = hc - hr                     the DPO logit
    s = sigmoid, eps = label_smoothing, b = beta

Rewards: for losses with a reference, ``b * hc`` and ``b * hr`` (the implicit DPO reward). For
reference-free losses (``simpo``), the SimPO implicit reward ``b * pc / nc`` and ``b * pr / nr``.
Rewards are detached; losses are per example (not reduced).

Constrained DPO: every loss with a reference accepts ``kl_coef``; see :func:`kl_penalty`.

Ranked lists of more than two responses train only with a loss registered with
``rankings=True`` (``plackett_luce``), through :func:`compute_ranked_loss`; no pairwise loss is
ever swapped for it. Soft labels and margins reach only the losses declared to take them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from alignkit.dpo.ranked import RankedLogps, ranked_kl_penalty, ranked_loss
from alignkit.dpo.registry import (
    LOSSES,
    Param,
    PreferenceLoss,
    check_config,
    get_loss,
    register_loss,
)
from alignkit.errors import ConfigError

__all__ = [
    "LOSSES",
    "LossOutput",
    "Param",
    "PreferenceLogps",
    "PreferenceLoss",
    "RankedLogps",
    "compute_loss",
    "compute_ranked_loss",
    "dpo_loss",
    "get_loss",
    "kl_penalty",
    "ranked_loss",
    "register_loss",
]


@dataclass
class PreferenceLogps:
    """Sequence log-probs of a batch of preference pairs; every field is a float tensor ``[B]``.

    ``policy_*`` and ``ref_*`` are SUMS of the completion tokens' log-probs (prompt excluded).
    ``ref_*`` are None for reference-free losses; ``*_tokens`` count the completion tokens and
    are needed by length-normalised losses (``ipo``, ``simpo``, ``rpo``) and by ``kl_coef``.
    """

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_tokens: Tensor | None = None
    rejected_tokens: Tensor | None = None
    margin: Tensor | None = None  # per-pair offset the reward margin must clear (MODPO, ODPO)

    def __post_init__(self) -> None:
        shape = self.policy_chosen.shape
        if self.policy_chosen.dim() != 1:
            raise ValueError(f"log-probs must be 1-D tensors [B], got shape {tuple(shape)}")
        if (self.ref_chosen is None) != (self.ref_rejected is None):
            raise ValueError("give both ref_chosen and ref_rejected, or neither")
        if (self.chosen_tokens is None) != (self.rejected_tokens is None):
            raise ValueError("give both chosen_tokens and rejected_tokens, or neither")
        for name in ("policy_rejected", "ref_chosen", "ref_rejected"):
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {tuple(shape)}")
        for name in ("chosen_tokens", "rejected_tokens"):
            value = getattr(self, name)
            if value is None:
                continue
            value = torch.as_tensor(value, device=self.policy_chosen.device)
            if value.shape != shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {tuple(shape)}")
            # checked where reading a value costs nothing: on an accelerator it would wait for
            # the device mid-step (the trainer's counts come from tokenized completions, >= 1)
            if value.device.type == "cpu" and bool((value <= 0).any()):
                raise ValueError(f"{name} must be positive (a completion has at least one token)")
            setattr(self, name, value.to(self.policy_chosen.dtype))

    @property
    def has_reference(self) -> bool:
        """Whether reference log-probs were given."""
        return self.ref_chosen is not None

    @property
    def has_tokens(self) -> bool:
        """Whether completion token counts were given."""
        return self.chosen_tokens is not None

    def logratios(self) -> tuple[Tensor, Tensor]:
        """``(hc, hr)``: policy minus reference log-prob of chosen and of rejected."""
        if self.ref_chosen is None or self.ref_rejected is None:
            raise ConfigError("this needs reference log-probs (ref_chosen / ref_rejected)")
        return self.policy_chosen - self.ref_chosen, self.policy_rejected - self.ref_rejected

    def average_logps(self) -> tuple[Tensor, Tensor]:
        """``(pc / nc, pr / nr)``: per-token average policy log-probs."""
        if self.chosen_tokens is None or self.rejected_tokens is None:
            raise ConfigError("this needs chosen_tokens / rejected_tokens (completion lengths)")
        return self.policy_chosen / self.chosen_tokens, self.policy_rejected / self.rejected_tokens


@dataclass
class LossOutput:
    """Per-example losses ``[B]`` (not reduced), detached rewards ``[B]`` and scalar metrics
    (detached 0-dim tensors on the losses' device, so that computing them never waits on the
    device; ``float()`` one to read it)."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def _smoothed_logistic(logits: Tensor, eps: float | Tensor) -> Tensor:
    """``-(1 - eps) log s(logits) - eps log s(-logits)``; ``eps`` may be per example ``[B]``."""
    loss = -F.logsigmoid(logits)
    if isinstance(eps, Tensor) or eps:
        loss = (1.0 - eps) * loss - eps * F.logsigmoid(-logits)
    return loss


@register_loss(
    "sigmoid",
    paper="Rafailov et al. 2023, Direct Preference Optimization (arXiv:2305.18290); "
    "conservative DPO: Mitchell 2023, A note on DPO with noisy preferences",
    smoothing=(0.0, 0.5, True),
    soft_labels=True,
    margins=True,
)
def sigmoid_loss(logps: PreferenceLogps, beta: float, eps: float | Tensor) -> Tensor:
    """DPO: ``-log s(b * d - m)``, ``m = 0`` unless the pairs carry a margin.

    With ``label_smoothing = eps > 0`` this is conservative DPO (cDPO), which assumes each label
    is flipped with probability eps: ``-(1 - eps) log s(b * d) - eps log s(-b * d)``. A tensor
    ``eps`` ``[B]`` is one per pair: ``1 - soft_label`` trains on soft (AI feedback) labels, the
    cross-entropy to P(chosen is better) as in Bai et al. 2022 (Constitutional AI), section 4.1.

    A per-pair margin ``m`` (``PreferenceLogps.margin``) is the offset of ODPO (Amini et al.
    2024, arXiv:2402.10571) and, with ``m = w_other . (R_other(y_c) - R_other(y_r)) / w_k`` and
    ``beta / w_k``, the MODPO loss (Zhou et al. 2023, arXiv:2310.03708, eq. 8).
    """
    hc, hr = logps.logratios()
    logits = beta * (hc - hr)
    if logps.margin is not None:
        logits = logits - logps.margin.to(logits)
    return _smoothed_logistic(logits, eps)


@register_loss(
    "ipo",
    paper="Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human "
    "Preferences (arXiv:2310.12036), eq. 17",
    needs_tokens=True,
)
def ipo_loss(logps: PreferenceLogps, beta: float, eps: float) -> Tensor:
    """IPO: ``(hc / nc - hr / nr - 1 / (2 b)) ** 2``, beta being the paper's tau.

    The log-ratios are averaged per token, as TRL does (its authors checked this with the IPO
    authors: the paper's results use the length-normalised form). With sums instead, the
    squared loss grows with completion length and ``1 / (2 b)`` means different things for
    short and long completions.
    """
    hc, hr = logps.logratios()
    delta = hc / logps.chosen_tokens - hr / logps.rejected_tokens
    return (delta - 1.0 / (2.0 * beta)) ** 2


@register_loss(
    "robust",
    paper="Chowdhury et al. 2024, Provably Robust DPO: Aligning Language Models with Noisy "
    "Feedback (arXiv:2403.00409)",
    smoothing=(0.0, 0.5, False),
)
def robust_loss(logps: PreferenceLogps, beta: float, eps: float) -> Tensor:
    """rDPO, an unbiased loss under labels flipped with probability eps = label_smoothing:

    ``((1 - eps) * -log s(b * d) - eps * -log s(-b * d)) / (1 - 2 eps)``, eps in [0, 0.5).
    With eps = 0 it is DPO. eps is one noise rate for the whole data set, known in advance;
    the loss is unbounded below and its scale grows as 1 / (1 - 2 eps). Per-pair soft labels
    are therefore refused (before training) with this loss: a label p would act as
    eps = 1 - p, a factor 10 at p = 0.55 and a division by zero at p = 0.5. Train soft labels
    with ``sigmoid`` (their cross-entropy) instead, or set ``use_soft_labels: false``.
    """
    hc, hr = logps.logratios()
    logits = beta * (hc - hr)
    clean = -(1.0 - eps) * F.logsigmoid(logits)
    flipped = -eps * F.logsigmoid(-logits)
    return (clean - flipped) / (1.0 - 2.0 * eps)


@register_loss(
    "hinge",
    paper="Zhao et al. 2023, SLiC-HF (arXiv:2305.10425); Liu et al. 2023, Statistical "
    "Rejection Sampling Improves Preference Optimization (RSO, arXiv:2309.06657)",
)
def hinge_loss(logps: PreferenceLogps, beta: float, eps: float) -> Tensor:
    """SLiC / RSO hinge: ``max(0, 1 - b * d)``, i.e. a margin of ``1 / b`` nats on the logit d."""
    hc, hr = logps.logratios()
    return torch.relu(1.0 - beta * (hc - hr))


@register_loss(
    "simpo",
    paper="Meng et al. 2024, SimPO: Simple Preference Optimization with a Reference-Free "
    "Reward (arXiv:2405.14734), eq. 6",
    reference_free=True,
    params={"gamma": Param(0.5, 0.0, None)},
    smoothing=(0.0, 0.5, True),
    needs_tokens=True,
    soft_labels=True,
)
def simpo_loss(logps: PreferenceLogps, beta: float, eps: float, gamma: float) -> Tensor:
    """SimPO: ``-log s(b * pc / nc - b * pr / nr - gamma)``, no reference model.

    gamma is the target reward margin (the paper uses beta around 2-2.5 with gamma/beta around
    0.5). label_smoothing gives the conservative form, as in cDPO.
    """
    avg_chosen, avg_rejected = logps.average_logps()
    return _smoothed_logistic(beta * (avg_chosen - avg_rejected) - gamma, eps)


@register_loss(
    "rpo",
    paper="Pang et al. 2024, Iterative Reasoning Preference Optimization (arXiv:2404.19733)",
    params={"alpha": Param(1.0, 0.0, None)},
    smoothing=(0.0, 0.5, True),
    needs_tokens=True,
    soft_labels=True,
)
def rpo_loss(logps: PreferenceLogps, beta: float, eps: float, alpha: float) -> Tensor:
    """RPO: DPO plus the chosen response's per-token NLL: ``-log s(b * d) + alpha * (-pc / nc)``.

    The NLL is normalised by each example's own length (the paper's ``|x| + |y|`` becomes
    ``nc``, as the prompt is not trained on).
    """
    return sigmoid_loss(logps, beta, eps) + alpha * (-logps.policy_chosen / logps.chosen_tokens)


@register_loss(
    "plackett_luce",
    paper="Rafailov et al. 2023, Direct Preference Optimization (arXiv:2305.18290), appendix "
    "A.3; Plackett 1975, Luce 1959",
    rankings=True,
)
def plackett_luce_loss(logps: RankedLogps, beta: float, eps: float) -> Tensor:
    """Plackett-Luce over K ranked responses: ``-sum_k [r_k - logsumexp_{j >= k} r_j]``,
    ``r_k = b * (log pi(y_k) - log pi_ref(y_k))``, rows ordered best -> worst.

    Defined for rankings (:mod:`alignkit.dpo.ranked`); a pair is a ranking of two, whose loss
    is the sigmoid DPO loss ``-log s(b * d)`` exactly.
    """
    if logps.ref is None:
        raise ConfigError("loss_type 'plackett_luce' needs reference log-probs")
    return ranked_loss(logps.policy, logps.ref, logps.mask, beta=beta)


def kl_penalty(logps: PreferenceLogps) -> Tensor:
    """The constrained-DPO penalty per example: ``0.25 * ((hc / nc) ** 2 + (hr / nr) ** 2)``.

    This is the k2 estimator of KL divergence, ``0.5 * (log p/q) ** 2`` (Schulman 2020,
    "Approximating KL Divergence"), applied to the per-token log-ratio of the chosen and of the
    rejected completion and averaged over the two. It is zero exactly when the policy assigns
    both completions the reference's probability, is non-negative, grows quadratically with
    drift in either direction, and its gradient pulls both log-ratios back toward zero. Only
    sequence log-probs are available here, so the per-token log-ratio is the sequence average;
    by Jensen's inequality the result is a lower bound of the mean per-token k2. The responses
    come from the data, not from the policy, so it is a trust-region penalty on the training
    responses, not an unbiased estimate of KL(policy || reference).
    """
    hc, hr = logps.logratios()
    if logps.chosen_tokens is None or logps.rejected_tokens is None:
        raise ConfigError("kl_coef needs chosen_tokens and rejected_tokens (completion lengths)")
    return 0.25 * ((hc / logps.chosen_tokens) ** 2 + (hr / logps.rejected_tokens) ** 2)


def compute_loss(
    logps: PreferenceLogps,
    loss_type: str = "sigmoid",
    beta: float | Tensor = 0.1,
    label_smoothing: float | Tensor = 0.0,
    **params: float,
) -> LossOutput:
    """Per-example loss, rewards and metrics of ``loss_type`` on a batch of pairs.

    ``params`` are the loss's own hyper-parameters (``gamma`` for simpo, ``alpha`` for rpo) and,
    for every loss with a reference, ``kl_coef``: the weight of :func:`kl_penalty` added to each
    example's loss (constrained DPO). Metrics: ``nll`` (mean per-token NLL of the chosen
    completions) when token counts are given, ``kl_penalty`` (mean of :func:`kl_penalty`,
    before ``kl_coef``) when the reference and token counts are given.
    """
    loss = get_loss(loss_type)
    if loss.rankings:
        return compute_ranked_loss(_as_ranked(logps), loss_type, beta, label_smoothing, **params)
    values, kl_coef = _checked(loss, beta, label_smoothing, params)
    if not loss.reference_free and not logps.has_reference:
        free = sorted(n for n, spec in LOSSES.items() if spec.reference_free)
        raise ConfigError(
            f"loss_type {loss.name!r} needs reference log-probs (ref_chosen / ref_rejected); "
            f"reference-free losses: {', '.join(free)}"
        )
    if logps.margin is not None and not loss.margins:
        takers = ", ".join(sorted(n for n, spec in LOSSES.items() if spec.margins))
        raise ConfigError(
            f"per-pair margins (a 'margin' field in the data) are not used by loss_type "
            f"{loss.name!r}; losses that take them: {takers}"
        )
    if (loss.needs_tokens or kl_coef > 0) and not logps.has_tokens:
        needs = "kl_coef" if not loss.needs_tokens else f"loss_type {loss.name!r}"
        raise ConfigError(f"{needs} needs chosen_tokens and rejected_tokens (completion lengths)")

    losses = loss(logps, beta, label_smoothing, **values)
    if loss.reference_free:
        chosen, rejected = logps.average_logps()
    else:
        chosen, rejected = logps.logratios()
    stats: dict[str, Tensor] = {}
    if logps.has_tokens:
        stats["nll"] = -logps.average_logps()[0].detach().mean()
        if logps.has_reference:
            penalty = kl_penalty(logps)
            stats["kl_penalty"] = penalty.detach().mean()
            if kl_coef > 0:
                losses = losses + kl_coef * penalty
    return LossOutput(losses, beta * chosen.detach(), beta * rejected.detach(), stats)


def _checked(
    loss: PreferenceLoss, beta: float | Tensor, label_smoothing: float | Tensor, params: dict
) -> tuple[dict[str, float], float]:
    """:func:`check_config`, and for per-pair smoothing ``[B]`` (soft labels) also that the
    loss is declared to take soft labels."""
    eps = label_smoothing
    if isinstance(label_smoothing, Tensor):
        if not loss.soft_labels:
            takers = ", ".join(sorted(n for n, spec in LOSSES.items() if spec.soft_labels))
            raise ConfigError(
                f"per-pair label_smoothing (soft labels) is not taken by loss_type "
                f"{loss.name!r}; losses that take it: {takers}"
            )
        # read on CPU only: on an accelerator it would wait for the device mid-step (the
        # trainer's come from soft labels checked to lie in [0.5, 1] when the data was read)
        eps = float(label_smoothing.max()) if label_smoothing.device.type == "cpu" else 0.0
    if isinstance(beta, Tensor):  # beta-DPO's per-batch beta (clamped to min_beta > 0): read
        beta = float(beta) if beta.device.type == "cpu" else None  # on CPU only, as above
    return check_config(loss, beta, eps, dict(params))


def _as_ranked(logps: PreferenceLogps) -> RankedLogps:
    """Pairs as ranked lists of two ``[B, 2]`` (chosen first)."""
    if logps.margin is not None:
        raise ConfigError("per-pair margins are not used by a loss defined for rankings")
    ref = None
    if logps.has_reference:
        ref = torch.stack([logps.ref_chosen, logps.ref_rejected], dim=1)
    tokens = None
    if logps.has_tokens:
        tokens = torch.stack([logps.chosen_tokens, logps.rejected_tokens], dim=1)
    return RankedLogps(
        torch.stack([logps.policy_chosen, logps.policy_rejected], dim=1), ref, tokens
    )


def compute_ranked_loss(
    logps: RankedLogps,
    loss_type: str = "plackett_luce",
    beta: float | Tensor = 0.1,
    label_smoothing: float | Tensor = 0.0,
    **params: float,
) -> LossOutput:
    """Per-example loss, rewards and metrics of a loss defined for rankings on ranked lists.

    Rewards are those of the best and the worst response of each list; ``kl_coef`` adds
    :func:`~alignkit.dpo.ranked.ranked_kl_penalty`; metrics as in :func:`compute_loss`. A loss
    not declared for rankings is refused (ConfigError): no pairwise loss is swapped silently.
    """
    loss = get_loss(loss_type)
    if not loss.rankings:
        takers = ", ".join(sorted(n for n, spec in LOSSES.items() if spec.rankings))
        raise ConfigError(
            f"loss_type {loss.name!r} is defined for pairs, not ranked lists; losses defined "
            f"for rankings: {takers}"
        )
    values, kl_coef = _checked(loss, beta, label_smoothing, params)
    if logps.ref is None:
        raise ConfigError(f"loss_type {loss.name!r} needs reference log-probs")
    if kl_coef > 0 and logps.tokens is None:
        raise ConfigError("kl_coef needs the completion lengths (tokens)")
    losses = loss.fn(logps, beta, 0.0, **values)
    mask = logps.mask
    rows = torch.arange(mask.shape[0], device=mask.device)
    last = mask.long().sum(1) - 1
    ratios = (logps.policy - logps.ref).detach()
    stats: dict[str, Tensor] = {}
    if logps.tokens is not None:
        stats["nll"] = -(logps.policy[:, 0] / logps.tokens[:, 0]).detach().mean()
        penalty = ranked_kl_penalty(logps)
        stats["kl_penalty"] = penalty.detach().mean()
        if kl_coef > 0:
            losses = losses + kl_coef * penalty
    return LossOutput(losses, beta * ratios[:, 0], beta * ratios[rows, last], stats)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor | None,
    reference_rejected_logps: Tensor | None,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    *,
    chosen_tokens: Tensor | None = None,
    rejected_tokens: Tensor | None = None,
    **params: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(losses, chosen_rewards, rejected_rewards)``, per example, as in the reference DPO code.

    Inputs are sequence (summed) log-probs ``[B]``. The reference ones may be None for
    reference-free losses. ``chosen_tokens`` / ``rejected_tokens`` (completion lengths) are
    needed by ``ipo``, ``simpo``, ``rpo`` and ``kl_coef``. See :func:`compute_loss`.
    """
    logps = PreferenceLogps(
        policy_chosen_logps,
        policy_rejected_logps,
        reference_chosen_logps,
        reference_rejected_logps,
        chosen_tokens,
        rejected_tokens,
    )
    out = compute_loss(logps, loss_type, beta, label_smoothing, **params)
    return out.losses, out.chosen_rewards, out.rejected_rewards
