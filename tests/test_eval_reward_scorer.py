"""The reward-model scorer: batched scores equal one-at-a-time scores; errors are clear."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny_encoder

from alignkit.errors import ModelError
from alignkit.evaluation.scorers import build_scorer
from alignkit.evaluation.suites import EvalItem


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return make_tiny_encoder(tmp_path_factory.mktemp("rm"))


def test_batched_rewards_equal_single_forward_passes(encoder_dir):
    scorer = build_scorer("reward-model", reward_model=str(encoder_dir), dimension="harmless")
    items = [EvalItem(str(i), f"question number {i}", "benign") for i in range(5)]
    responses = ["a", "a much longer answer with many words in it", "b c", "", "d e f g"]
    batched = scorer.score(items, responses)
    assert all(list(s) == ["harmless"] for s in batched)
    for item, response, scores in zip(items, responses, batched, strict=True):
        encoded = scorer.tokenizer(scorer.text(item, response), return_tensors="pt")
        with torch.no_grad():
            single = scorer.model(**encoded).logits[0, 0].item()
        assert scores["harmless"] == pytest.approx(single, abs=1e-5)
    assert len({round(s["harmless"], 6) for s in batched}) > 1  # the text changes the reward


def test_missing_reward_model_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="cannot load reward model"):
        build_scorer("reward-model", reward_model=str(tmp_path / "nothing"))
