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


def test_a_weight_sweep_on_the_testbed_gives_a_front(tmp_path):
    """Helpful-only labels (compliance preferred on harmful requests) as the target, a learned
    harmlessness reward model as the other objective: raising its weight trades the one reward
    for the other, and no model of the sweep dominates another (MODPO, Zhou et al. 2023)."""
    from alignkit.evaluation.pareto import pareto_front
    from alignkit.evaluation.suites import load_suite
    from alignkit.models import GenerationConfig, load_backend
    from alignkit.safety.constrained import testbed_constrained_pairs as helpful_only_pairs
    from alignkit.safety.data import testbed_value_pairs as value_pairs
    from alignkit.safety.value_model import ValueModelConfig, train_value_model

    pairs = helpful_only_pairs(seed=0)
    settings = {"learning_rate": 1e-3, "batch_size": 16, "device": "cpu"}
    helpful_rm = train_value_model(ValueModelConfig(**settings), pairs, progress=False)
    harmless_rm = train_value_model(
        ValueModelConfig(dimension="harmless", **settings),
        value_pairs(256, "harmless", "train", 0),
        progress=False,
    )
    config = DPOConfig(epochs=2, batch_size=8, learning_rate=5e-4, kl_samples=0, device="cpu")
    grid = [{"helpful": 1.0}, {"helpful": 0.6, "harmless": 0.4}, {"helpful": 0.1, "harmless": 0.9}]
    runs = modpo_sweep("testbed", pairs, "helpful", {"harmless": harmless_rm}, grid, config,
                       tmp_path)  # fmt: skip
    kinds = ("benign", "harmful", "jailbreak")
    prompts = [i.prompt for i in load_suite("testbed", n=40, seed=0) if i.kind in kinds]
    points, sampling = {}, GenerationConfig(max_new_tokens=64, seed=0)
    for weights, path in runs:
        backend = load_backend(f"hf:{path}", device="cpu")
        answers = [c.text for c in backend.generate(prompts, sampling)]
        backend.close()
        points[str(weights)] = [
            sum(rm.score(prompts, answers)) / len(answers) for rm in (helpful_rm, harmless_rm)
        ]
    print(points)
    assert len(pareto_front(points)) == 3
    harmless = [p[1] for p in points.values()]
    assert harmless == sorted(harmless) and harmless[-1] - harmless[0] > 0.5
