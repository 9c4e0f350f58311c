"""AdaptiveDPO (beta-DPO): the beta rule, margin-guided filtering, checkpoint round trip."""

from __future__ import annotations

import io
import math

import pytest
import torch

from alignkit.dpo.adaptive import AdaptiveDPO
from alignkit.dpo.losses import PreferenceLogps, compute_loss
from alignkit.errors import ConfigError


def batch_with_margins(margins: torch.Tensor) -> PreferenceLogps:
    """Preference log-probs whose margins (chosen minus rejected log-ratio) are ``margins``."""
    size = margins.numel()
    ref_chosen = torch.linspace(-30.0, -10.0, size, dtype=torch.float64)
    ref_rejected = torch.linspace(-25.0, -12.0, size, dtype=torch.float64)
    policy_rejected = ref_rejected - 1.5
    policy_chosen = ref_chosen + margins.double() - 1.5
    return PreferenceLogps(policy_chosen, policy_rejected, ref_chosen, ref_rejected)


def test_margins_are_chosen_minus_rejected_log_ratio():
    margins = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(AdaptiveDPO.margins(batch_with_margins(margins)), margins)


def test_first_step_follows_the_paper_formula():
    adaptive = AdaptiveDPO(beta=0.1, alpha=0.6, momentum=0.9)
    margins = torch.tensor([1.0, 2.0, 4.0, 5.0], dtype=torch.float64)
    step = adaptive.step(batch_with_margins(margins))
    running_mean = 0.1 * 3.0  # EMA from 0, updated before use
    assert step.running_mean == pytest.approx(running_mean)
    assert step.running_std == pytest.approx(0.1 * margins.std().item())
    assert step.beta == pytest.approx(0.1 * (1 + 0.6 * (3.0 - running_mean)))
    assert step.mask.all() and step.margin_mean == pytest.approx(3.0)


def test_beta_rises_for_larger_margins_and_falls_for_smaller():
    adaptive = AdaptiveDPO(beta=0.1, alpha=0.5, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):  # running mean settles near 2
        adaptive.step(batch_with_margins(2.0 + 0.3 * torch.randn(16, generator=gen)))
    assert adaptive.running_mean == pytest.approx(2.0, abs=0.1)
    before = adaptive.running_mean
    high = adaptive.step(batch_with_margins(torch.full((16,), 4.0)))
    assert high.beta > 0.1
    # the running mean moved toward 4 by 10% of the gap; beta saw the gap to the updated mean
    assert high.running_mean == pytest.approx(0.9 * before + 0.4)
    assert high.beta == pytest.approx(0.1 * (1 + 0.5 * (4.0 - high.running_mean)))
    low = adaptive.step(batch_with_margins(torch.full((16,), 0.0)))
    assert low.beta < 0.1
    assert low.beta == pytest.approx(0.1 * (1 + 0.5 * (0.0 - low.running_mean)))


def test_beta_stays_positive():
    adaptive = AdaptiveDPO(beta=0.1, alpha=1.0, min_beta=1e-3)
    step = adaptive.step(batch_with_margins(torch.full((4,), -50.0)))
    assert step.beta == 1e-3


@pytest.mark.parametrize(("size", "fraction", "kept"), [(10, 0.8, 8), (7, 0.5, 3), (3, 0.1, 1)])
def test_filtering_keeps_the_requested_fraction(size, fraction, kept):
    adaptive = AdaptiveDPO(filter_fraction=fraction, seed=1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        step = adaptive.step(batch_with_margins(torch.randn(size, generator=gen)))
        assert step.mask.dtype == torch.bool and step.mask.shape == (size,)
        assert int(step.mask.sum()) == kept


def test_filtering_drops_outlying_margins_and_beta_uses_the_kept_ones():
    adaptive = AdaptiveDPO(beta=0.1, alpha=0.5, filter_fraction=0.75, seed=3)
    gen = torch.Generator().manual_seed(3)
    for _ in range(30):
        adaptive.step(batch_with_margins(1.0 + 0.5 * torch.randn(16, generator=gen)))
    outlier_kept = 0
    for _ in range(50):
        margins = 1.0 + 0.5 * torch.randn(16, generator=gen)
        margins[0] = 25.0  # far outside the running distribution
        step = adaptive.step(batch_with_margins(margins))
        outlier_kept += int(step.mask[0])
        assert step.kept_margin_mean == pytest.approx(margins[step.mask].mean().item())
        expected = 0.1 * (1 + 0.5 * (step.kept_margin_mean - step.running_mean))
        assert step.beta == pytest.approx(expected)
    assert outlier_kept <= 2  # kept 75% of the time without the Gaussian weighting


def test_filtering_prefers_margins_near_the_running_mean():
    adaptive = AdaptiveDPO(filter_fraction=0.5, seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        adaptive.step(batch_with_margins(1.0 + torch.randn(16, generator=gen)))
    kept, dropped = [], []
    for _ in range(50):
        margins = 1.0 + torch.randn(16, generator=gen)
        step = adaptive.step(batch_with_margins(margins))
        distance = (margins - step.running_mean).abs()
        kept += distance[step.mask].tolist()
        dropped += distance[~step.mask].tolist()
    # about 0.6 against 1.0 standard deviations (equal, about 0.8, under uniform sampling)
    assert sum(dropped) / len(dropped) > 1.3 * sum(kept) / len(kept)


def test_sampling_is_random_across_steps_but_seeded():
    margins = torch.linspace(-1, 1, 12)

    def masks(seed: int) -> list[list[bool]]:
        adaptive = AdaptiveDPO(filter_fraction=0.5, seed=seed)
        return [adaptive.step(batch_with_margins(margins)).mask.tolist() for _ in range(6)]

    assert masks(7) == masks(7)
    assert masks(7) != masks(8)
    assert len({tuple(m) for m in masks(7)}) > 1


def test_state_dict_round_trip_resumes_identically():
    gen = torch.Generator().manual_seed(4)
    batches = [batch_with_margins(torch.randn(10, generator=gen) * 2) for _ in range(8)]
    uninterrupted = AdaptiveDPO(beta=0.2, alpha=0.4, filter_fraction=0.6, seed=11)
    expected = [uninterrupted.step(b) for b in batches]

    first = AdaptiveDPO(beta=0.2, alpha=0.4, filter_fraction=0.6, seed=11)
    for b in batches[:4]:
        first.step(b)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = AdaptiveDPO(beta=0.2, alpha=0.4, filter_fraction=0.6, seed=999)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for b, want in zip(batches[4:], expected[4:], strict=True):
        got = resumed.step(b)
        assert got.beta == want.beta
        assert torch.equal(got.mask, want.mask)
        assert got.running_mean == want.running_mean
    assert resumed.steps == uninterrupted.steps == 8


def test_load_state_dict_rejects_other_settings():
    state = AdaptiveDPO(beta=0.1, filter_fraction=0.8).state_dict()
    with pytest.raises(ConfigError, match="filter_fraction"):
        AdaptiveDPO(beta=0.1, filter_fraction=0.5).load_state_dict(state)


def test_trainer_style_use_with_a_loss():
    # one step per batch: beta for the loss, mask for the mean
    adaptive = AdaptiveDPO(beta=0.1, filter_fraction=0.5, seed=0)
    logps = batch_with_margins(torch.linspace(-2, 2, 8))
    step = adaptive.step(logps)
    out = compute_loss(logps, "sigmoid", beta=step.beta)
    loss = out.losses[step.mask].mean()
    assert math.isfinite(loss.item())
    assert set(step.metrics()) == {
        "adaptive/beta",
        "adaptive/margin_mean",
        "adaptive/margin_running_mean",
        "adaptive/kept_fraction",
    }
    assert step.metrics()["adaptive/kept_fraction"] == 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": 0.0}, "beta must be positive"),
        ({"momentum": 1.0}, "momentum"),
        ({"filter_fraction": 0.0}, "filter_fraction"),
        ({"filter_fraction": 1.5}, "filter_fraction"),
        ({"min_beta": 0.5}, "min_beta"),
    ],
)
def test_bad_settings_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        AdaptiveDPO(**kwargs)


def test_needs_reference_logps():
    logps = PreferenceLogps(torch.zeros(2), torch.zeros(2))
    with pytest.raises(ConfigError, match="reference"):
        AdaptiveDPO().step(logps)
