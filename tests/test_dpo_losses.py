"""DPO-family losses: properties that pin each formula, constrained DPO, Plackett-Luce, errors.

Parity with TRL is in ``test_dpo_trl_parity.py`` (which reuses :func:`random_logps`).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from alignkit.dpo.losses import (
    LOSSES,
    PreferenceLogps,
    RankedLogps,
    compute_loss,
    compute_ranked_loss,
    dpo_loss,
    kl_penalty,
    ranked_loss,
    register_loss,
)
from alignkit.dpo.ranked import ranked_kl_penalty
from alignkit.errors import ConfigError

# --------------------------------------------------------------------------- random inputs


def random_logps(batch: int = 12, seed: int = 0, spread: float = 12.0) -> PreferenceLogps:
    """Float64 sequence log-probs with varied lengths and log-ratios of a few to tens of nats."""
    gen = torch.Generator().manual_seed(seed)
    chosen_tokens = torch.randint(1, 40, (batch,), generator=gen).double()
    rejected_tokens = torch.randint(1, 40, (batch,), generator=gen).double()

    def logp(tokens: torch.Tensor) -> torch.Tensor:
        return -tokens * (0.3 + 2.0 * torch.rand(batch, generator=gen, dtype=torch.float64))

    ref_chosen, ref_rejected = logp(chosen_tokens), logp(rejected_tokens)
    drift = spread * torch.randn(2, batch, generator=gen, dtype=torch.float64)
    return PreferenceLogps(
        ref_chosen + drift[0],
        ref_rejected + drift[1],
        ref_chosen,
        ref_rejected,
        chosen_tokens,
        rejected_tokens,
    )


def select(logps: PreferenceLogps, index: int) -> PreferenceLogps:
    """The one-example batch ``index`` of ``logps``."""
    fields = {k: v[index : index + 1] for k, v in vars(logps).items() if v is not None}
    return PreferenceLogps(**fields)


# --------------------------------------------------------------------------- properties


def _grads(name: str, logps: PreferenceLogps, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = logps.policy_chosen.clone().requires_grad_(True)
    rejected = logps.policy_rejected.clone().requires_grad_(True)
    with_grad = replace(logps, policy_chosen=chosen, policy_rejected=rejected)
    compute_loss(with_grad, name, **kwargs).losses.sum().backward()
    return chosen.grad, rejected.grad


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("sigmoid", {}),
        ("sigmoid", {"label_smoothing": 0.1}),
        ("robust", {"label_smoothing": 0.2}),
        ("hinge", {}),
        ("ipo", {"beta": 0.01}),
        ("simpo", {"beta": 2.0}),
        ("rpo", {}),
    ],
)
def test_raising_chosen_and_lowering_rejected_lowers_the_loss(name, kwargs):
    # small margins: inside the hinge margin, below IPO's target, before cDPO's optimum
    logps = random_logps(seed=2, spread=0.5)
    chosen_grad, rejected_grad = _grads(name, logps, **kwargs)
    assert (chosen_grad < 0).all()
    assert (rejected_grad > 0).all()


def test_values_at_zero_log_ratio():
    # policy == reference: every closed form is known
    logps = random_logps(seed=4)
    same = replace(logps, policy_chosen=logps.ref_chosen, policy_rejected=logps.ref_rejected)
    log2 = torch.full_like(logps.ref_chosen, math.log(2))
    torch.testing.assert_close(compute_loss(same, "sigmoid").losses, log2)
    robust = compute_loss(same, "robust", label_smoothing=0.3).losses
    torch.testing.assert_close(robust, log2)
    torch.testing.assert_close(compute_loss(same, "hinge").losses, torch.ones_like(log2))
    torch.testing.assert_close(
        compute_loss(same, "ipo", beta=0.25).losses, torch.full_like(log2, 4)
    )


def test_rewards_are_beta_times_log_ratio():
    logps = random_logps(seed=6)
    chosen, rejected = logps.logratios()
    for name in ("sigmoid", "ipo", "robust", "hinge", "rpo"):
        out = compute_loss(logps, name, beta=0.37)
        torch.testing.assert_close(out.chosen_rewards, 0.37 * chosen)
        torch.testing.assert_close(out.rejected_rewards, 0.37 * rejected)
        assert not out.chosen_rewards.requires_grad


def test_conservative_dpo_is_minimised_at_the_smoothed_target():
    # cDPO's optimum logit: sigmoid(beta * d*) = 1 - eps, i.e. d* = log((1 - eps) / eps) / beta
    beta, eps = 0.5, 0.1
    optimum = math.log((1 - eps) / eps) / beta
    logit = torch.linspace(optimum - 3, optimum + 3, 601, dtype=torch.float64)
    zeros = torch.zeros_like(logit)
    losses = dpo_loss(logit, zeros, zeros, zeros, beta=beta, label_smoothing=eps)[0]
    assert logit[losses.argmin()].item() == pytest.approx(optimum, abs=0.01)
    plain = dpo_loss(logit, zeros, zeros, zeros, beta=beta)[0]
    assert (plain[1:] < plain[:-1]).all()  # plain DPO keeps decreasing


def test_robust_dpo_is_unbiased_under_label_flips():
    # rDPO's defining property: its expectation over flips with rate eps is the clean DPO loss
    eps = 0.2
    logps = random_logps(seed=8)
    flipped = PreferenceLogps(*(getattr(logps, name) for name in (
        "policy_rejected", "policy_chosen", "ref_rejected", "ref_chosen",
        "rejected_tokens", "chosen_tokens")))  # fmt: skip
    robust = compute_loss(logps, "robust", label_smoothing=eps).losses
    robust_flipped = compute_loss(flipped, "robust", label_smoothing=eps).losses
    expected = (1 - eps) * robust + eps * robust_flipped
    torch.testing.assert_close(expected, compute_loss(logps, "sigmoid").losses)


def test_simpo_ignores_the_reference_and_uses_average_logps():
    logps = random_logps(seed=9)
    without = replace(logps, ref_chosen=None, ref_rejected=None)
    other_ref = replace(logps, ref_chosen=logps.ref_chosen * 3)
    base = compute_loss(without, "simpo", beta=2.0, gamma=0.8)
    for variant in (logps, other_ref):
        torch.testing.assert_close(
            compute_loss(variant, "simpo", beta=2.0, gamma=0.8).losses, base.losses
        )
    avg_chosen, avg_rejected = logps.average_logps()
    expected = -F.logsigmoid(2.0 * (avg_chosen - avg_rejected) - 0.8)
    torch.testing.assert_close(base.losses, expected)
    torch.testing.assert_close(base.chosen_rewards, 2.0 * avg_chosen)
    assert LOSSES["simpo"].reference_free


def test_rpo_adds_exactly_alpha_times_chosen_nll():
    logps = random_logps(seed=10)
    nll = -logps.policy_chosen / logps.chosen_tokens
    dpo = compute_loss(logps, "sigmoid", beta=0.2).losses
    for alpha in (0.0, 0.5, 2.0):
        rpo = compute_loss(logps, "rpo", beta=0.2, alpha=alpha)
        torch.testing.assert_close(rpo.losses, dpo + alpha * nll)
        assert rpo.metrics["nll"] == pytest.approx(nll.mean().item())


# --------------------------------------------------------------------------- constrained DPO


def test_kl_penalty_is_zero_at_the_reference_and_grows_with_drift():
    logps = random_logps(seed=11)
    values = []
    for scale in (0.0, 0.5, 1.0, 2.0):
        drift = (logps.policy_chosen - logps.ref_chosen) * scale
        drifted = replace(
            logps,
            policy_chosen=logps.ref_chosen + drift,
            policy_rejected=logps.ref_rejected - drift,
        )
        values.append(kl_penalty(drifted))
    assert torch.equal(values[0], torch.zeros_like(values[0]))
    for smaller, larger in zip(values[1:], values[2:], strict=False):
        assert (larger > smaller).all()
    torch.testing.assert_close(values[3], 4 * values[2])  # quadratic in the log-ratio


def test_kl_coef_adds_the_weighted_penalty_and_logs_it():
    logps = random_logps(seed=12)
    penalty = kl_penalty(logps)
    hc, hr = logps.logratios()
    expected = 0.25 * ((hc / logps.chosen_tokens) ** 2 + (hr / logps.rejected_tokens) ** 2)
    torch.testing.assert_close(penalty, expected)
    for name in ("sigmoid", "ipo", "robust", "hinge", "rpo"):
        base = compute_loss(logps, name)
        constrained = compute_loss(logps, name, kl_coef=0.3)
        torch.testing.assert_close(constrained.losses, base.losses + 0.3 * penalty)
        assert constrained.metrics["kl_penalty"] == pytest.approx(penalty.mean().item())


def test_kl_penalty_gradient_pulls_the_policy_back_to_the_reference():
    logps = random_logps(seed=13)
    chosen_grad, rejected_grad = _grads("hinge", logps, beta=1e-6, kl_coef=1.0)
    hc, hr = logps.logratios()
    # hinge is flat (1 - tiny) here, so the gradient is the penalty's: same sign as the drift
    assert torch.equal(torch.sign(chosen_grad), torch.sign(hc))
    assert torch.equal(torch.sign(rejected_grad), torch.sign(hr))


# --------------------------------------------------------------------------- Plackett-Luce


def test_plackett_luce_with_two_responses_is_sigmoid_dpo():
    logps = random_logps(seed=14)
    policy = torch.stack([logps.policy_chosen, logps.policy_rejected], dim=1)
    ref = torch.stack([logps.ref_chosen, logps.ref_rejected], dim=1)
    sigmoid = compute_loss(logps, "sigmoid", beta=0.3).losses
    torch.testing.assert_close(ranked_loss(policy, ref, beta=0.3), sigmoid)


def test_plackett_luce_three_responses_by_hand():
    r = torch.tensor([[1.0, -0.5, 2.0]], dtype=torch.float64)
    expected = -((r[0, 0] - torch.logsumexp(r[0], 0)) + (r[0, 1] - torch.logsumexp(r[0, 1:], 0)))
    got = ranked_loss(r / 0.5, torch.zeros_like(r), beta=0.5)
    torch.testing.assert_close(got, expected.reshape(1))
    # the ranking that agrees with the rewards is the likeliest, the reverse one the least
    best = ranked_loss(r.sort(descending=True).values / 0.5, torch.zeros_like(r), beta=0.5)
    worst = ranked_loss(r.sort().values / 0.5, torch.zeros_like(r), beta=0.5)
    assert best < got < worst


def test_masked_responses_do_not_change_the_ranked_loss():
    gen = torch.Generator().manual_seed(15)
    policy = -20 * torch.rand(4, 5, generator=gen, dtype=torch.float64)
    ref = -20 * torch.rand(4, 5, generator=gen, dtype=torch.float64)
    mask = torch.tensor(
        [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.bool
    )
    padded_policy = policy.masked_fill(~mask, float("nan")).requires_grad_(True)
    losses = ranked_loss(padded_policy, ref.masked_fill(~mask, float("-inf")), mask, beta=0.2)
    for row in range(4):
        keep = mask[row]
        alone = ranked_loss(policy[row, keep][None], ref[row, keep][None], beta=0.2)
        torch.testing.assert_close(losses[row : row + 1], alone)
    assert losses[3].item() == 0.0  # one response: nothing to rank
    losses.sum().backward()
    assert torch.isfinite(padded_policy.grad).all()
    assert (padded_policy.grad[~mask] == 0).all()


def random_lists(batch: int = 6, k: int = 4, seed: int = 0) -> RankedLogps:
    """Ranked lists ``[B, K]`` with trailing padding (row b has K - b % 2 responses)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 40, (batch, k), generator=gen).double()
    tokens[1::2, -1] = 0.0
    ref = -tokens * (0.3 + 2.0 * torch.rand(batch, k, generator=gen, dtype=torch.float64))
    policy = ref + 8.0 * torch.randn(batch, k, generator=gen, dtype=torch.float64)
    return RankedLogps(policy, ref, tokens)


def test_plackett_luce_is_the_registered_loss_for_rankings():
    assert [n for n, spec in LOSSES.items() if spec.rankings] == ["plackett_luce"]
    pairs = random_logps(seed=18)
    listwise = compute_loss(pairs, "plackett_luce", beta=0.3)  # a pair is a ranking of two
    sigmoid = compute_loss(pairs, "sigmoid", beta=0.3)
    torch.testing.assert_close(listwise.losses, sigmoid.losses)
    torch.testing.assert_close(listwise.chosen_rewards, sigmoid.chosen_rewards)
    torch.testing.assert_close(listwise.metrics["kl_penalty"], sigmoid.metrics["kl_penalty"])


def test_a_pairwise_loss_never_takes_ranked_lists():
    for name in ("sigmoid", "ipo", "robust", "hinge", "simpo", "rpo"):
        with pytest.raises(ConfigError, match="defined for pairs.*plackett_luce"):
            compute_ranked_loss(random_lists(), name, beta=0.1)


def test_kl_coef_reaches_ranked_lists():
    """kl_coef was ignored for ranked batches; it now adds the listwise k2 penalty, which with
    two responses is :func:`kl_penalty` exactly."""
    lists = random_lists(seed=19)
    plain = compute_ranked_loss(lists, beta=0.2).losses
    constrained = compute_ranked_loss(lists, beta=0.2, kl_coef=0.5).losses
    torch.testing.assert_close(constrained, plain + 0.5 * ranked_kl_penalty(lists))
    assert (ranked_kl_penalty(lists) > 0).all()
    pairs = random_logps(seed=20)
    two = RankedLogps(
        torch.stack([pairs.policy_chosen, pairs.policy_rejected], 1),
        torch.stack([pairs.ref_chosen, pairs.ref_rejected], 1),
        torch.stack([pairs.chosen_tokens, pairs.rejected_tokens], 1),
    )
    torch.testing.assert_close(ranked_kl_penalty(two), kl_penalty(pairs))


def test_a_ranked_loss_refuses_smoothing_soft_labels_and_margins():
    lists, pairs = random_lists(), random_logps(batch=4)
    with pytest.raises(ConfigError, match="label_smoothing is not used"):
        compute_ranked_loss(lists, label_smoothing=0.1)
    with pytest.raises(ConfigError, match="soft labels"):
        compute_ranked_loss(lists, label_smoothing=torch.full((6,), 0.2, dtype=torch.float64))
    with pytest.raises(ConfigError, match="margins"):
        compute_loss(replace(pairs, margin=torch.ones(4)), "plackett_luce")


def test_capabilities_are_declared_in_the_registry():
    """What data each loss is defined for is a declaration, not a name test in the code."""
    takes = {n: (s.rankings, s.soft_labels, s.margins) for n, s in LOSSES.items()}
    assert takes == {
        "sigmoid": (False, True, True),
        "ipo": (False, False, False),
        "robust": (False, False, False),  # soft labels refused: see robust_loss's docstring
        "hinge": (False, False, False),
        "simpo": (False, True, False),
        "rpo": (False, True, False),
        "plackett_luce": (True, False, False),
    }
    with pytest.raises(ValueError, match="soft labels"):
        register_loss("x", paper="x", soft_labels=True)(lambda logps, beta, eps: eps)


def test_robust_refuses_per_pair_smoothing():
    """A soft label p acts as eps = 1 - p: rDPO would divide by 2p - 1 (x10 at p = 0.55)."""
    with pytest.raises(ConfigError, match="soft labels.*robust"):
        compute_loss(random_logps(batch=3), "robust", label_smoothing=torch.full((3,), 0.45))


# --------------------------------------------------------------------------- registry, API, errors


def test_registry_metadata():
    assert {"sigmoid", "ipo", "robust", "hinge", "simpo", "rpo"} <= set(LOSSES)
    for name, loss in LOSSES.items():
        assert loss.name == name
        assert "20" in loss.paper  # a year: every loss cites its paper
        assert "``" in loss.formula  # the formula is in the docstring
        assert loss.reference_free == (name == "simpo")
    assert LOSSES["simpo"].valid_params() == ["gamma", "label_smoothing"]
    assert LOSSES["hinge"].valid_params() == ["kl_coef"]
    with pytest.raises(ConfigError, match="loss 'sigmoid' is already registered"):
        register_loss("sigmoid", paper="x")(lambda logps, beta, eps: logps.policy_chosen)
    entry = LOSSES.entry("sigmoid")  # the same metadata reports read for every plugin kind
    assert "2023" in entry.paper and entry.measures["loss"] and entry.description


def test_dpo_loss_tuple_api_matches_compute_loss():
    logps = random_logps(seed=16)
    for name in ("sigmoid", "simpo", "rpo"):
        losses, chosen, rejected = dpo_loss(
            logps.policy_chosen, logps.policy_rejected, logps.ref_chosen, logps.ref_rejected,
            beta=0.2, loss_type=name,
            chosen_tokens=logps.chosen_tokens, rejected_tokens=logps.rejected_tokens,
        )  # fmt: skip
        out = compute_loss(logps, name, beta=0.2)
        torch.testing.assert_close(losses, out.losses)
        torch.testing.assert_close(chosen, out.chosen_rewards)
        torch.testing.assert_close(rejected, out.rejected_rewards)


def test_metrics_report_nll_and_kl_when_measurable():
    logps = random_logps(seed=17)
    assert set(compute_loss(logps).metrics) == {"nll", "kl_penalty"}
    no_tokens = replace(logps, chosen_tokens=None, rejected_tokens=None)
    assert compute_loss(no_tokens).metrics == {}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: compute_loss(x, "dpoo"), "choose one of: hinge, ipo, plackett_luce, robust"),
        (lambda x: compute_loss(x, "hinge", gamma=1.0), "does not take gamma.*beta, kl_coef"),
        (lambda x: compute_loss(x, "hinge", label_smoothing=0.1), "losses that take it"),
        (lambda x: compute_loss(x, "robust", label_smoothing=0.5), r"\[0.0, 0.5\)"),
        (lambda x: compute_loss(x, "sigmoid", label_smoothing=0.6), r"\[0.0, 0.5\]"),
        (lambda x: compute_loss(x, "sigmoid", beta=0.0), "beta must be positive"),
        (lambda x: compute_loss(x, "simpo", gamma=-1.0), "gamma must lie in"),
        (lambda x: compute_loss(x, "rpo", alpha="big"), "alpha must be a finite number"),
        (lambda x: compute_loss(x, "sigmoid", kl_coef=-0.1), "kl_coef must lie in"),
        (lambda x: compute_loss(x, "simpo", kl_coef=0.1), "reference-free"),
    ],
)
def test_bad_config_raises_config_error(call, message):
    with pytest.raises(ConfigError, match=message):
        call(random_logps(batch=2))


def test_missing_reference_or_lengths_are_clear_errors():
    logps = random_logps(batch=3)
    policy_only = PreferenceLogps(logps.policy_chosen, logps.policy_rejected)
    with pytest.raises(ConfigError, match="'sigmoid' needs reference log-probs.*simpo"):
        compute_loss(policy_only, "sigmoid")
    with pytest.raises(ConfigError, match="needs reference"):
        dpo_loss(logps.policy_chosen, logps.policy_rejected, None, None)
    no_tokens = replace(logps, chosen_tokens=None, rejected_tokens=None)
    for name in ("ipo", "simpo", "rpo"):
        with pytest.raises(ConfigError, match="chosen_tokens"):
            compute_loss(no_tokens, name)
    with pytest.raises(ConfigError, match="kl_coef needs chosen_tokens"):
        compute_loss(no_tokens, "sigmoid", kl_coef=0.1)


def test_preference_logps_validates_shapes():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="expected"):
        PreferenceLogps(x, torch.zeros(4))
    with pytest.raises(ValueError, match="both"):
        PreferenceLogps(x, x, x, None)
    with pytest.raises(ValueError, match="positive"):
        PreferenceLogps(x, x, x, x, torch.tensor([1, 0, 2]), torch.ones(3))
    counts = PreferenceLogps(x, x, x, x, torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3]))
    assert counts.chosen_tokens.dtype == torch.float32


# --------------------------------------------------------------------------- DPOConfig


def test_dpo_config_validates_loss_options_by_the_registry_only():
    """DPOConfig re-declared label_smoothing as [0, 0.5), refusing sigmoid's declared 0.5."""
    from alignkit.config import load_config
    from alignkit.dpo import DPOConfig
    from alignkit.dpo.config import loss_options

    assert DPOConfig(label_smoothing=0.5).loss_params() == {"label_smoothing": 0.5}
    for name in ("beta", "label_smoothing", "kl_coef", *loss_options()):
        assert not DPOConfig.model_fields[name].metadata, f"{name} has its own bounds"
    declared = {(n, p) for n, spec in LOSSES.items() for p in spec.params}
    assert set(loss_options().values()) == declared  # every hyper-parameter can be set
    assert DPOConfig(loss_type="rpo").loss_params() == {"label_smoothing": 0.0}  # default: 1.0
    assert DPOConfig(loss_type="rpo", rpo_alpha=2).loss_params()["alpha"] == 2
    for options, message in [
        ({"loss_type": "robust", "label_smoothing": 0.5}, r"\[0.0, 0.5\)"),
        ({"loss_type": "simpo", "simpo_gamma": -1}, "gamma must lie in"),
        ({"rpo_alpha": 2.0}, "rpo_alpha is a parameter of loss_type 'rpo', not 'sigmoid'"),
        ({"beta": 0}, "beta must be positive"),
        ({"loss_type": "simpo", "kl_coef": 0.1}, "reference-free"),
        ({"loss_type": "plackett_luce", "label_smoothing": 0.1}, "not used by"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(DPOConfig, overrides=options)
