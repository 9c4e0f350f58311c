"""Soft preference labels (AI feedback's P(chosen is better)) as per-pair label smoothing."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.data import load_preferences
from alignkit.dpo import DPOConfig, DPOTrainer
from alignkit.dpo.losses import PreferenceLogps, compute_loss
from alignkit.errors import ConfigError, DataError
from alignkit.testbed import World
from alignkit.testbed.preferences import preference_pairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {"batch_size": 4, "learning_rate": 5e-4, "beta": 0.1, "kl_samples": 0, "device": "cpu"}


def test_per_pair_smoothing_equals_scalar_smoothing_pair_by_pair():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g) * 3 for _ in range(4))
    eps = torch.tensor([0.0, 0.1, 0.25, 0.4, 0.5, 0.05])
    batched = compute_loss(PreferenceLogps(pc, pr, rc, rr), "sigmoid", 0.1, eps).losses
    for i in range(6):
        one = PreferenceLogps(pc[i : i + 1], pr[i : i + 1], rc[i : i + 1], rr[i : i + 1])
        expected = compute_loss(one, "sigmoid", 0.1, float(eps[i])).losses
        assert batched[i].item() == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(ConfigError, match="label_smoothing"):
        compute_loss(PreferenceLogps(pc, pr, rc, rr), "sigmoid", 0.1, eps + 0.2)


def _write(path, soft_label):
    rows = preference_pairs(World(0), 8, split="train", seed=0)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps({**row, "soft_label": soft_label}) + "\n")
    return path


@pytest.mark.parametrize("bad", [0.3, 1.5, "high", True])
def test_a_bad_soft_label_names_the_field(tmp_path, bad):
    with pytest.raises(DataError, match="soft_label"):
        load_preferences(_write(tmp_path / "p.jsonl", bad))


def _first_grad_norm(tmp_path, soft_label) -> float:
    data = _write(tmp_path / f"p{soft_label}.jsonl", soft_label)
    config = DPOConfig(data=data, output_dir=tmp_path / f"out{soft_label}", max_steps=1, **FAST)
    return DPOTrainer("testbed", config).train()["grad_norm"]


def test_a_coin_flip_label_teaches_nothing_and_a_sure_one_does(tmp_path):
    """At the start policy == reference, so a pair labelled 0.5 has no gradient (the soft
    cross-entropy is minimised at a zero margin); a pair labelled 1.0 has one."""
    coin, sure = _first_grad_norm(tmp_path, 0.5), _first_grad_norm(tmp_path, 1.0)
    assert sure > 1e-2
    assert coin < 1e-4 * sure


def test_soft_labels_with_a_loss_that_cannot_use_them_fail_fast(tmp_path):
    data = _write(tmp_path / "p.jsonl", 0.8)
    config = DPOConfig(data=data, loss_type="ipo", **FAST)
    with pytest.raises(ConfigError, match="use_soft_labels"):
        DPOTrainer("testbed", config)
    DPOTrainer("testbed", config.model_copy(update={"use_soft_labels": False}))


@pytest.mark.parametrize("soft_label", [0.5, 0.55, 0.9])
def test_soft_labels_with_robust_are_refused_before_training(tmp_path, soft_label):
    """rDPO divides by 1 - 2 eps: a soft label of 0.55 scaled the loss by 10 and one of 0.5
    stopped training mid-run with a message about a label_smoothing nobody set."""
    data = _write(tmp_path / "p.jsonl", soft_label)
    config = DPOConfig(data=data, loss_type="robust", **FAST)
    with pytest.raises(ConfigError) as caught:
        DPOTrainer("testbed", config)
    message = caught.value.message
    assert message.startswith(f"{data}:1: a soft_label (AI feedback; 8 of 8 records")
    assert "label_smoothing" not in message and "\n" not in message
    assert "sigmoid" in message and "use_soft_labels: false" in message
    DPOTrainer("testbed", config.model_copy(update={"use_soft_labels": False}))
