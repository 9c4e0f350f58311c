"""The loss registry: declarative metadata for each preference loss, and config validation.

A loss is a pure function ``fn(logps, beta, label_smoothing, **params) -> losses[B]`` added to
:data:`LOSSES` by :func:`register_loss` with its paper, whether it needs a reference model, its
hyper-parameters (:class:`Param`), the ``label_smoothing`` interval it accepts, and what data it
is defined for: ranked lists of more than two responses (``rankings``; its ``fn`` then takes a
:class:`~alignkit.dpo.ranked.RankedLogps`), per-pair soft labels (``soft_labels``) and per-pair
margins (``margins``). These declarations are the one place loss options are checked:
:func:`check_config` for the hyper-parameters (``DPOConfig`` and ``compute_loss`` both call it)
and :func:`check_data` for the data, before any training. The losses themselves live in
:mod:`alignkit.dpo.losses`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from torch import Tensor

from alignkit.errors import ConfigError
from alignkit.registry import Registry

if TYPE_CHECKING:
    from alignkit.dpo.losses import PreferenceLogps

__all__ = [
    "LOSSES",
    "Param",
    "PreferenceLoss",
    "check_config",
    "check_data",
    "get_loss",
    "register_loss",
]


class Param(NamedTuple):
    """A loss hyper-parameter: default value and the closed interval it must lie in."""

    default: float
    low: float | None = None
    high: float | None = None


LossFn = Callable[..., Tensor]


@dataclass(frozen=True)
class PreferenceLoss:
    """A registered loss: the function plus its declarative metadata."""

    name: str
    paper: str
    fn: LossFn
    reference_free: bool = False
    params: Mapping[str, Param] = field(default_factory=dict)
    smoothing: tuple[float, float, bool] | None = None  # (low, high, high included) for eps
    needs_tokens: bool = False
    rankings: bool = False  # defined for ranked lists of K >= 2 responses (fn takes RankedLogps)
    soft_labels: bool = False  # trains on per-pair soft labels (as per-pair smoothing)
    margins: bool = False  # takes a per-pair margin (PreferenceLogps.margin)

    @property
    def formula(self) -> str:
        """The loss formula and its notes (the function's docstring)."""
        return inspect.getdoc(self.fn) or ""

    def valid_params(self) -> list[str]:
        """Names of the keyword hyper-parameters this loss accepts (besides beta)."""
        names = list(self.params)
        if self.smoothing is not None:
            names.append("label_smoothing")
        if not self.reference_free:
            names.append("kl_coef")
        return sorted(names)

    def __call__(
        self, logps: PreferenceLogps, beta: float, label_smoothing: float = 0.0, **params: float
    ) -> Tensor:
        """Per-example losses (no validation: use :func:`compute_loss` for that)."""
        values = {name: params.get(name, spec.default) for name, spec in self.params.items()}
        return self.fn(logps, beta, label_smoothing, **values)


def _load_losses() -> None:
    import alignkit.dpo.losses  # noqa: F401  (the built-in losses register on import)


LOSSES: Registry[PreferenceLoss] = Registry("loss", load=_load_losses)
"""The loss registry (:class:`alignkit.registry.Registry`, as for scorers, judges and attacks):
``loss_type`` name -> :class:`PreferenceLoss`. A taken name is refused with the same error;
the hyper-parameters are checked by :func:`check_config` against the declared :class:`Param`
bounds, which a signature cannot carry."""


def register_loss(
    name: str,
    *,
    paper: str,
    reference_free: bool = False,
    params: Mapping[str, Param] | None = None,
    smoothing: tuple[float, float, bool] | None = None,
    needs_tokens: bool = False,
    rankings: bool = False,
    soft_labels: bool = False,
    margins: bool = False,
) -> Callable[[LossFn], LossFn]:
    """Decorator adding ``fn(logps, beta, label_smoothing, **params) -> losses[B]`` to LOSSES."""

    def decorate(fn: LossFn) -> LossFn:
        if soft_labels and smoothing is None:
            raise ValueError(f"loss {name!r}: soft labels train as per-pair label smoothing")
        loss = PreferenceLoss(
            name, paper, fn, reference_free, dict(params or {}), smoothing, needs_tokens,
            rankings, soft_labels, margins,
        )  # fmt: skip
        summary = (inspect.getdoc(fn) or "").split("\n\n")[0]
        LOSSES.add(name, loss, description=summary, paper=paper, measures=_measures(loss))
        return fn

    return decorate


def _measures(loss: PreferenceLoss) -> dict[str, str]:
    """What the figures logged for this loss measure (read by reports, as for scorers)."""
    what = {"loss": f"the {loss.name} objective averaged over the batch ({loss.paper})"}
    if not loss.reference_free:
        what["rewards/accuracies"] = (
            "share of pairs whose implicit reward beta * log(pi / pi_ref) ranks chosen first"
        )
    return what


def get_loss(loss_type: str) -> PreferenceLoss:
    """The registered loss called ``loss_type``; ConfigError naming the valid ones otherwise."""
    try:
        return LOSSES[loss_type]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown loss_type {loss_type!r}; choose one of: {', '.join(sorted(LOSSES))}"
        ) from None


def _check_number(name: str, value: object, low: float | None, high: float | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ConfigError(f"{name} must lie in {bounds}, got {value!r}")
    return float(value)


def check_config(
    loss: PreferenceLoss, beta: float | None, eps: float, params: dict[str, float]
) -> tuple[dict[str, float], float]:
    """Validated loss params and kl_coef; ConfigError names the bad option and valid ones.
    ``beta=None``: a beta its maker guarantees (beta-DPO's, on a device) is not checked."""
    if beta is not None:
        beta = _check_number("beta", beta, None, None)
        if beta <= 0:
            raise ConfigError(f"beta must be positive, got {beta!r}")
    eps = _check_number("label_smoothing", eps, 0.0, None)
    if eps and loss.smoothing is None:
        users = sorted(n for n, spec in LOSSES.items() if spec.smoothing is not None)
        raise ConfigError(
            f"label_smoothing is not used by loss_type {loss.name!r}; "
            f"losses that take it: {', '.join(users)}"
        )
    if loss.smoothing is not None:
        low, high, closed = loss.smoothing
        if eps > high or (eps == high and not closed):
            bracket = "]" if closed else ")"
            raise ConfigError(
                f"label_smoothing for {loss.name!r} must lie in [{low}, {high}{bracket}, got {eps}"
            )
    if loss.reference_free and "kl_coef" in params:
        raise ConfigError(
            f"kl_coef keeps the policy near the reference model, but loss_type {loss.name!r} "
            "is reference-free; use a loss with a reference (e.g. sigmoid) or drop kl_coef"
        )
    unknown = sorted(set(params) - set(loss.valid_params()))
    if unknown:
        raise ConfigError(
            f"loss_type {loss.name!r} does not take {', '.join(unknown)}; its parameters are: "
            f"{', '.join(['beta', *loss.valid_params()])}"
        )
    kl_coef = _check_number("kl_coef", params.pop("kl_coef", 0.0), 0.0, None)
    checked = {
        name: _check_number(name, params.get(name, spec.default), spec.low, spec.high)
        for name, spec in loss.params.items()
    }
    return checked, kl_coef


def _takers(attribute: str) -> str:
    return ", ".join(sorted(n for n, spec in LOSSES.items() if getattr(spec, attribute)))


def check_data(loss: PreferenceLoss, items: Iterable, use_soft_labels: bool = True) -> None:
    """ConfigError, before any training, if the data holds what ``loss`` is not defined for.

    ``items`` are tokenized examples (``completion_ids``, ``soft_label``, ``margin``,
    ``source``). Ranked lists of more than two responses need a loss declared for rankings
    (``rankings``): a pairwise loss never trains on them, and a listwise loss trains pairs as
    rankings of two, so no example's objective depends on what shares its batch. Soft labels
    (unless ``use_soft_labels`` is off) and margins need a loss declared to take them. The
    message names the first offending record (``FILE:LINE``) and how many there are.
    """
    items = list(items)
    ranked = [ex for ex in items if len(ex.completion_ids) > 2]
    if ranked and not loss.rankings:
        raise ConfigError(
            f"{ranked[0].source}: a ranked record of {len(ranked[0].completion_ids)} responses "
            f"({len(ranked)} ranked, {len(items) - len(ranked)} pairs in this data), but "
            f"loss_type {loss.name!r} is "
            f"defined for pairs only; set loss_type to one defined for rankings "
            f"({_takers('rankings')}; a pair is then a ranking of two), or give pairs only"
        )
    soft = [ex for ex in items if ex.soft_label is not None] if use_soft_labels else []
    if soft and not loss.soft_labels:
        why = ""
        if loss.smoothing is not None:
            why = (
                " (it de-biases hard labels flipped at one known rate; a soft label p would "
                "scale the loss by 1 / (2p - 1), unbounded as p nears 0.5)"
            )
        raise ConfigError(
            f"{soft[0].source}: a soft_label (AI feedback; {len(soft)} of {len(items)} records "
            f"have one), which loss_type {loss.name!r} cannot use{why}; use one of "
            f"{_takers('soft_labels')}, or set use_soft_labels: false to train on the hard labels"
        )
    margins = [ex for ex in items if ex.margin is not None]
    if margins and not loss.margins:
        raise ConfigError(
            f"{margins[0].source}: a 'margin' field ({len(margins)} of {len(items)} records "
            f"have one), which loss_type {loss.name!r} does not use; losses that take per-pair "
            f"margins: {_takers('margins')}"
        )
