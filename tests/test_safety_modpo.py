"""MODPO: margins from the other objectives' reward models, and the weight sweep."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from alignkit.dpo import DPOConfig
from alignkit.errors import ConfigError
from alignkit.safety.modpo import check_weights, modpo_records, modpo_sweep
from alignkit.testbed import World
from alignkit.testbed.preferences import preference_pairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class LengthReward:
    """A stand-in reward model: longer responses score higher."""

    def preference(self, prompts, responses):
        return [float(len(r)) for r in responses]


PAIRS = [
    {"prompt": "p1", "chosen": "abcd", "rejected": "ab"},
    {"prompt": "p2", "chosen": "a", "rejected": "abcdef"},
]


def test_margins_are_the_weighted_other_reward_gaps_over_the_target_weight():
    records = modpo_records(PAIRS, {"helpful": 0.25, "harmless": 0.75}, "helpful",
                            {"harmless": LengthReward()})  # fmt: skip
    assert [r["margin"] for r in records] == pytest.approx([0.75 * 2 / 0.25, 0.75 * -5 / 0.25])
    alone = modpo_records(PAIRS, {"helpful": 1.0}, "helpful", {})
    assert [r["margin"] for r in alone] == [0.0, 0.0]


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"helpful": 0.5, "harmless": 0.6}, "sum to 1"),
        ({"helpful": 0.0, "harmless": 1.0}, "positive weight"),
        ({"helpful": 1.2, "harmless": -0.2}, "non-negative"),
    ],
)
def test_bad_weights_are_refused(weights, message):
    with pytest.raises(ConfigError, match=message):
        check_weights(weights, "helpful")


def test_a_missing_reward_model_is_named():
    with pytest.raises(ConfigError, match="harmless"):
        modpo_records(PAIRS, {"helpful": 0.5, "harmless": 0.5}, "helpful", {})


def test_sweep_trains_one_model_per_weight_vector_and_the_margin_changes_training(tmp_path):
    pairs = preference_pairs(World(0), 32, split="train", seed=0)
    config = DPOConfig(max_steps=4, batch_size=8, learning_rate=5e-4, kl_samples=0, device="cpu")
    grid = [{"helpful": 1.0}, {"helpful": 0.5, "harmless": 0.5}]
    runs = modpo_sweep("testbed", pairs, "helpful", {"harmless": LengthReward()}, grid, config,
                       tmp_path)  # fmt: skip
    assert [w for w, _ in runs] == grid
    first, second = (load_file(path / "model.safetensors") for _, path in runs)
    assert any(not (first[k] == second[k]).all() for k in first)
    rows = [json.loads(x) for x in (runs[1][1].parent / "modpo.jsonl").read_text().splitlines()]
    assert any(r["margin"] != 0 for r in rows)
    again = modpo_sweep("testbed", pairs, "helpful", {"harmless": LengthReward()}, grid, config,
                        tmp_path)  # fmt: skip
    assert again == runs  # finished runs are kept, not retrained
