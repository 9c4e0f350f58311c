"""Per-pair margins in the DPO loss (ODPO offsets; the MODPO loss of Zhou et al. 2023)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from alignkit.data import load_preferences
from alignkit.dpo import DPOConfig, DPOTrainer
from alignkit.dpo.losses import PreferenceLogps, compute_loss
from alignkit.errors import ConfigError, DataError
from alignkit.testbed import World
from alignkit.testbed.preferences import preference_pairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, generator=g) * 3 for _ in range(4)]


def test_margin_is_subtracted_from_the_scaled_reward_margin():
    pc, pr, rc, rr = _batch()
    m = torch.tensor([0.0, 0.5, -1.0, 2.0, 3.0])
    got = compute_loss(PreferenceLogps(pc, pr, rc, rr, margin=m), "sigmoid", 0.2).losses
    expected = -F.logsigmoid(0.2 * ((pc - rc) - (pr - rr)) - m)
    assert torch.allclose(got, expected, atol=1e-6)


def test_modpo_is_dpo_with_beta_over_w_and_the_other_rewards_as_margin():
    """MODPO (Zhou et al. 2023, eq. 8): -log s((b / w_k) d - w_other . dR_other / w_k)."""
    pc, pr, rc, rr = _batch(1)
    beta, w_k, w_other = 0.1, 0.4, torch.tensor([0.6])
    d_other = torch.tensor([[1.0], [-2.0], [0.5], [0.0], [3.0]])  # R_other(y_c) - R_other(y_r)
    by_hand = -F.logsigmoid(beta / w_k * ((pc - rc) - (pr - rr)) - (d_other @ w_other) / w_k)
    margin = (d_other @ w_other) / w_k
    got = compute_loss(PreferenceLogps(pc, pr, rc, rr, margin=margin), "sigmoid", beta / w_k)
    assert torch.allclose(got.losses, by_hand, atol=1e-6)


def test_margins_with_a_loss_that_cannot_use_them_are_refused():
    pc, pr, rc, rr = _batch()
    logps = PreferenceLogps(pc, pr, rc, rr, torch.ones(5), torch.ones(5), margin=torch.ones(5))
    with pytest.raises(ConfigError, match="margin"):
        compute_loss(logps, "ipo", 0.1)


def _write(path, margin):
    rows = preference_pairs(World(0), 8, split="train", seed=0)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps({**row, "margin": margin}) + "\n")
    return path


@pytest.mark.parametrize("bad", ["big", float("inf"), True])
def test_a_bad_margin_names_the_field(tmp_path, bad):
    with pytest.raises(DataError, match="margin"):
        load_preferences(_write(tmp_path / "p.jsonl", bad))


def test_the_trainer_uses_the_data_margin(tmp_path):
    """At the first step policy == reference, so the loss is -log s(-m) = softplus(m)."""
    data = _write(tmp_path / "p.jsonl", 2.0)
    config = DPOConfig(
        data=data, output_dir=tmp_path / "out", max_steps=1, batch_size=4, kl_samples=0,
        learning_rate=5e-4, device="cpu",
    )  # fmt: skip
    metrics = DPOTrainer("testbed", config).train()
    assert metrics["loss"] == pytest.approx(math.log1p(math.exp(2.0)), abs=1e-3)


def test_margins_with_a_loss_that_cannot_use_them_fail_before_training(tmp_path):
    """The margin check ran in the loss, at the first training step; now the trainer refuses
    the data when it is built, naming the record."""
    data = _write(tmp_path / "p.jsonl", 1.0)
    config = DPOConfig(data=data, loss_type="ipo", batch_size=4, kl_samples=0, device="cpu")
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(data))}:1: a 'margin' field \(8 of 8 records"
    ):
        DPOTrainer("testbed", config)
