"""Numerical parity of alignkit's DPO-family losses with TRL 1.16, per example, in float64.

How TRL is called (no trainer is built):
- DPO losses: ``trl.DPOTrainer._compute_loss`` as an unbound function on a stand-in object
  carrying the attributes it reads, with ``precompute_ref_logps=True`` (reference log-probs come
  in the batch) and a stand-in model that returns per-token log-probs at the completion
  positions (summing to the sequence log-probs we want). TRL returns the batch mean, so each
  example is passed alone to get its loss; its rewards are read from the logged metrics.
- SimPO and label-smoothed (conservative) sigmoid: ``trl.experimental.cpo.CPOTrainer.cpo_loss``
  on a stand-in object. TRL 1.16's DPO ``sigmoid`` has no label smoothing any more; CPO's
  ``sigmoid`` is cDPO's formula on ``policy_chosen - policy_rejected``, so it is fed the
  log-ratios to compute cDPO.

Conventions shared with TRL: IPO averages the log-ratios per completion token; SimPO uses
per-token average log-probs and rewards ``beta * average``. TRL 1.16 has no ``rpo_alpha``;
RPO there is ``loss_type=["sigmoid", "sft"]`` with ``loss_weights=[1, alpha]``, whose NLL is a
token mean over the whole batch, whereas alignkit's is per example: the two agree per example
(tested) and differ in the batch mean when chosen lengths differ.
"""

from __future__ import annotations

import importlib
import inspect
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from test_dpo_losses import random_logps, select

from alignkit.dpo.losses import PreferenceLogps, compute_loss

trl = pytest.importorskip("trl")

TOL = 1e-9  # float64 parity; the requirement is 1e-6
TESTED_TRL = "1.16"  # the TRL whose private loss code the stand-ins below are written for
# the private functions called, and the parameters each must take
TRL_INTERNALS = [
    ("trl", "DPOTrainer._compute_loss", ("self", "model", "inputs", "return_outputs")),
    ("trl.experimental.cpo", "CPOTrainer.cpo_loss", ("self", "policy_chosen_logps",
                                                     "policy_rejected_logps")),
]  # fmt: skip


def trl_internals_differ() -> str | None:
    """Why this TRL's private loss code cannot be called as these tests call it (None: it can)."""
    for module_name, attribute, parameters in TRL_INTERNALS:
        where = f"{module_name}.{attribute}"
        try:
            found = importlib.import_module(module_name)
            for part in attribute.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError):
            return f"TRL {trl.__version__} has no {where} (these tests call TRL {TESTED_TRL}'s)"
        if tuple(inspect.signature(found).parameters) != parameters:
            return f"TRL {trl.__version__}'s {where} takes other arguments than TRL {TESTED_TRL}'s"
    return None


def call_trl(function, *args, **kwargs):
    """``function(*args)``; on a TRL other than the tested one, a stand-in that lacks what its
    private code reads is a skip with the reason, not an error."""
    try:
        return function(*args, **kwargs)
    except (AttributeError, TypeError, KeyError) as error:
        if trl.__version__.startswith(f"{TESTED_TRL}."):
            raise
        pytest.skip(f"TRL {trl.__version__}'s {function.__qualname__} differs from "
                    f"TRL {TESTED_TRL}'s: {type(error).__name__}: {error}")  # fmt: skip


_DIFFER = trl_internals_differ()
pytestmark = pytest.mark.skipif(_DIFFER is not None, reason=_DIFFER or "")


# --------------------------------------------------------------------------- TRL stand-ins


class _Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather(tensor):
        return tensor

    gather_for_metrics = gather


class _LogpsModel:
    """Stands in for the model: per-token log-probs at completion positions, 0 elsewhere."""

    def __init__(self, per_token: torch.Tensor) -> None:
        self.per_token = per_token

    def __call__(self, *, labels, **_: object) -> SimpleNamespace:
        in_completion = labels[:, 1:] != -100
        log_probs = torch.where(in_completion, self.per_token, torch.zeros_like(self.per_token))
        zeros = torch.zeros_like(log_probs)
        return SimpleNamespace(
            log_probs=log_probs,
            entropy=zeros,
            mean_logits=zeros,
            is_top1=torch.zeros_like(in_completion),
        )


def _trl_batch(logps: PreferenceLogps, seed: int = 0) -> tuple[dict, _LogpsModel]:
    """A TRL DPO batch ([chosen; rejected] rows) whose completions have the given log-probs."""
    gen = torch.Generator().manual_seed(seed)
    totals = torch.cat([logps.policy_chosen, logps.policy_rejected])
    lengths = torch.cat([logps.chosen_tokens, logps.rejected_tokens]).long().tolist()
    prompt = 3
    width = prompt + max(lengths)
    input_ids = torch.randint(5, 100, (len(lengths), width), generator=gen)
    completion_mask = torch.zeros_like(input_ids)
    attention_mask = torch.zeros_like(input_ids)
    per_token = torch.zeros(len(lengths), width - 1, dtype=torch.float64)
    for row, (total, length) in enumerate(zip(totals.tolist(), lengths, strict=True)):
        completion_mask[row, prompt : prompt + length] = 1
        attention_mask[row, : prompt + length] = 1
        share = torch.rand(length, generator=gen, dtype=torch.float64) + 0.1
        # position t predicts token t + 1: completion tokens are predicted from prompt - 1 on
        per_token[row, prompt - 1 : prompt - 1 + length] = total * share / share.sum()
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
        "ref_chosen_logps": logps.ref_chosen,
        "ref_rejected_logps": logps.ref_rejected,
    }
    return inputs, _LogpsModel(per_token)


def trl_dpo(logps, loss_types, beta, label_smoothing=0.0, loss_weights=None):
    """TRL's DPO loss (batch mean) and the logged mean rewards for this batch."""
    from trl import DPOTrainer

    stand_in = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=_Accelerator(),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=list(loss_types),
        loss_weights=list(loss_weights or [1.0] * len(loss_types)),
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
        args=SimpleNamespace(discopop_tau=0.05),
    )
    inputs, model = _trl_batch(logps)
    loss = call_trl(DPOTrainer._compute_loss, stand_in, model, inputs, return_outputs=False)
    logged = stand_in._metrics["train"]
    return float(loss), logged["rewards/chosen"][-1], logged["rewards/rejected"][-1]


def trl_cpo(chosen, rejected, loss_type, beta, label_smoothing=0.0, gamma=0.5):
    """TRL's CPO loss function: per-example (losses, chosen_rewards, rejected_rewards)."""
    from trl.experimental.cpo import CPOTrainer

    stand_in = SimpleNamespace(
        alpha=0.0,
        loss_type=loss_type,
        beta=beta,
        label_smoothing=label_smoothing,
        simpo_gamma=gamma,
        accelerator=_Accelerator(),
    )
    return call_trl(CPOTrainer.cpo_loss, stand_in, chosen, rejected)


# --------------------------------------------------------------------------- parity with TRL

# (alignkit loss_type, alignkit kwargs, TRL loss_types, TRL label_smoothing, TRL loss_weights)
DPO_PARITY = [
    ("sigmoid", {}, ["sigmoid"], 0.0, None),
    ("hinge", {}, ["hinge"], 0.0, None),
    ("ipo", {}, ["ipo"], 0.0, None),
    ("robust", {"label_smoothing": 0.1}, ["robust"], 0.1, None),
    ("robust", {"label_smoothing": 0.35}, ["robust"], 0.35, None),
    # TRL 1.16 has no rpo_alpha: RPO is sigmoid + "sft" (chosen NLL) weighted by alpha
    ("rpo", {"alpha": 0.7}, ["sigmoid", "sft"], 0.0, [1.0, 0.7]),
]


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize(("name", "kwargs", "trl_types", "trl_eps", "weights"), DPO_PARITY)
def test_dpo_losses_match_trl_per_example(name, kwargs, trl_types, trl_eps, weights, beta):
    logps = random_logps(seed=int(beta * 10))
    ours = compute_loss(logps, name, beta=beta, **kwargs)
    for index in range(len(logps.policy_chosen)):
        loss, chosen_reward, rejected_reward = trl_dpo(
            select(logps, index), trl_types, beta, trl_eps, weights
        )
        assert ours.losses[index].item() == pytest.approx(loss, abs=TOL, rel=0)
        assert ours.chosen_rewards[index].item() == pytest.approx(chosen_reward, abs=TOL, rel=0)
        assert ours.rejected_rewards[index].item() == pytest.approx(rejected_reward, abs=TOL, rel=0)


@pytest.mark.parametrize(("name", "kwargs", "trl_types", "trl_eps", "_"), DPO_PARITY[:5])
def test_dpo_losses_match_trl_batch_mean(name, kwargs, trl_types, trl_eps, _):
    # a whole batch in one TRL call: per-row token normalisation (ipo) must line up too
    logps = random_logps(seed=7)
    loss, chosen_reward, rejected_reward = trl_dpo(logps, trl_types, 0.2, trl_eps)
    ours = compute_loss(logps, name, beta=0.2, **kwargs)
    assert ours.losses.mean().item() == pytest.approx(loss, abs=TOL, rel=0)
    assert ours.chosen_rewards.mean().item() == pytest.approx(chosen_reward, abs=TOL, rel=0)
    assert ours.rejected_rewards.mean().item() == pytest.approx(rejected_reward, abs=TOL, rel=0)


@pytest.mark.parametrize("eps", [0.05, 0.2, 0.5])
def test_conservative_sigmoid_matches_trl(eps):
    logps = random_logps(seed=3)
    chosen, rejected = logps.logratios()
    trl_losses, trl_chosen, trl_rejected = trl_cpo(chosen, rejected, "sigmoid", 0.3, eps)
    ours = compute_loss(logps, "sigmoid", beta=0.3, label_smoothing=eps)
    torch.testing.assert_close(ours.losses, trl_losses, atol=TOL, rtol=0)
    torch.testing.assert_close(ours.chosen_rewards, trl_chosen, atol=TOL, rtol=0)
    torch.testing.assert_close(ours.rejected_rewards, trl_rejected, atol=TOL, rtol=0)


@pytest.mark.parametrize(("beta", "gamma", "eps"), [(2.0, 1.0, 0.0), (2.5, 0.3, 0.1)])
def test_simpo_matches_trl(beta, gamma, eps):
    # TRL's CPO trainer feeds cpo_loss length-averaged log-probs for simpo
    logps = random_logps(seed=5, spread=3.0)
    avg_chosen, avg_rejected = logps.average_logps()
    trl_losses, trl_chosen, trl_rejected = trl_cpo(
        avg_chosen, avg_rejected, "simpo", beta, eps, gamma
    )
    ours = compute_loss(logps, "simpo", beta=beta, label_smoothing=eps, gamma=gamma)
    torch.testing.assert_close(ours.losses, trl_losses, atol=TOL, rtol=0)
    torch.testing.assert_close(ours.chosen_rewards, trl_chosen, atol=TOL, rtol=0)
    torch.testing.assert_close(ours.rejected_rewards, trl_rejected, atol=TOL, rtol=0)


def test_parity_harness_detects_a_different_loss():
    # the comparison above can fail: hinge against TRL's sigmoid differs on these inputs
    logps = select(random_logps(seed=1), 0)
    loss, _, _ = trl_dpo(logps, ["sigmoid"], 0.1)
    assert abs(compute_loss(logps, "hinge", beta=0.1).losses.item() - loss) > 1e-3


# --------------------------------------------------------------------------- another TRL


def test_another_trl_is_a_skip_with_a_reason(monkeypatch):
    """On a TRL whose private loss code moved or changed, these tests skip and say why."""
    assert trl_internals_differ() is None  # the installed TRL is the tested one: they run
    monkeypatch.delattr(trl.DPOTrainer, "_compute_loss")
    assert "has no trl.DPOTrainer._compute_loss" in trl_internals_differ()
    monkeypatch.undo()
    monkeypatch.setattr(trl.DPOTrainer, "_compute_loss", lambda self, model, inputs: None)
    assert "takes other arguments" in trl_internals_differ()

    def reads_a_new_attribute(stand_in):
        return stand_in.new_option

    with pytest.raises(AttributeError):  # the tested TRL: a broken stand-in is an error
        call_trl(reads_a_new_attribute, SimpleNamespace())
    monkeypatch.setattr(trl, "__version__", "9.0.0")
    with pytest.raises(pytest.skip.Exception, match=r"TRL 9\.0\.0's .*new_option"):
        call_trl(reads_a_new_attribute, SimpleNamespace())
