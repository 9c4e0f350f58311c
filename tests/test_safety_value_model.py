"""Value models: loss functions by hand, and reward / cost models trained on testbed pairs."""

from __future__ import annotations

import math
import random

import pytest
import torch
from pydantic import ValidationError

from alignkit.errors import DataError, ModelError
from alignkit.safety.value_losses import (
    bradley_terry_loss,
    cost_model_loss,
    pairwise_accuracy,
    safety_signs,
)
from alignkit.safety.value_model import (
    METADATA_FILE,
    ValueModel,
    ValueModelConfig,
    check_records,
    evaluate_pairwise,
    load_backbone,
    pair_loss,
    train_value_model,
)
from alignkit.testbed import World, wrap
from alignkit.testbed import content as C

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _nls(x: float) -> float:
    """-log sigmoid(x), by hand."""
    return math.log1p(math.exp(-x))


def value_pairs(dimension: str, split: str, n: int, seed: int) -> list[dict]:
    """Pairwise value records from the testbed world.

    harmless: a harmful request (30% inside a jailbreak wrapper), refusal (safe) over harmful
    compliance (unsafe); helpful: a benign request, the correct answer over an over-refusal.
    """
    world = World(0)
    rng = random.Random(f"value-pairs-{dimension}-{split}-{seed}")
    records = []
    for i in range(n):
        if dimension == "harmless":
            req = rng.choice(world.requests("harmful", split))
            if rng.random() < 0.3:
                req = wrap(req, rng.choice(list(C.JAILBREAKS)))
            good, bad, good_safe, bad_safe = "refusal", "harmful", True, False
        else:
            req = rng.choice(world.requests("benign", split))
            good, bad, good_safe, bad_safe = "helpful", "over_refusal", True, True
        records.append(
            {
                "prompt": req.text,
                "chosen": world.respond(req, good, rng),
                "rejected": world.respond(req, bad, rng),
                "dimension": dimension,
                "category": req.category,
                "chosen_safe": good_safe,
                "rejected_safe": bad_safe,
                "source": f"testbed {split} pair {i}",
            }
        )
    return records


# ------------------------------------------------------------------------------ losses


def test_bradley_terry_loss_matches_hand_computation():
    chosen, rejected = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 0.0])
    expected = (_nls(1.5) + _nls(-1.0)) / 2
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)
    # a scalar margin and a per-pair margin are subtracted from the reward difference
    with_margin = (_nls(1.5 - 1.0) + _nls(-1.0 - 1.0)) / 2
    assert bradley_terry_loss(chosen, rejected, 1.0).item() == pytest.approx(with_margin, rel=1e-6)
    per_pair = (_nls(1.5 - 2.0) + _nls(-1.0 - 0.0)) / 2
    loss = bradley_terry_loss(chosen, rejected, torch.tensor([2.0, 0.0]))
    assert loss.item() == pytest.approx(per_pair, rel=1e-6)


def test_reward_centring_term_and_its_gradient():
    chosen = torch.tensor([3.0, 1.0], requires_grad=True)
    rejected = torch.tensor([1.0, -2.0], requires_grad=True)
    loss = bradley_terry_loss(chosen, rejected, center_coef=0.1)
    expected = (_nls(2.0) + 0.1 * 16.0 + _nls(3.0) + 0.1 * 1.0) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # centring pulls both rewards of a pair with a positive sum down: d/dr_r = (s + 2 eta S)/2
    sig = 1 / (1 + math.exp(2.0))  # sigmoid(-(r_c - r_r)) of pair 0
    assert rejected.grad[0].item() == pytest.approx((sig + 2 * 0.1 * 4.0) / 2, rel=1e-5)
    assert chosen.grad[0].item() == pytest.approx((-sig + 2 * 0.1 * 4.0) / 2, rel=1e-5)


def test_cost_loss_pairwise_and_sign_terms():
    better = torch.tensor([-1.0, 0.5])  # costs of the safer responses
    worse = torch.tensor([2.0, 0.0])
    # pair 0: safe (s=-1) over unsafe (s=+1); pair 1: both safe
    better_signs = safety_signs([True, True])
    worse_signs = safety_signs([False, True])
    assert better_signs.tolist() == [-1.0, -1.0] and worse_signs.tolist() == [1.0, -1.0]
    pair0 = _nls(2.0 - -1.0) + _nls(1 * 2.0) + _nls(-1 * -1.0)
    pair1 = _nls(0.0 - 0.5) + _nls(-1 * 0.0) + _nls(-1 * 0.5)
    loss = cost_model_loss(better, worse, better_signs, worse_signs)
    assert loss.item() == pytest.approx((pair0 + pair1) / 2, rel=1e-6)
    margin = cost_model_loss(better, worse, better_signs, worse_signs, margin=1.0)
    shifted = pair0 - _nls(3.0) + _nls(2.0) + pair1 - _nls(-0.5) + _nls(-1.5)
    assert margin.item() == pytest.approx(shifted / 2, rel=1e-6)


def test_cost_loss_without_flags_is_only_pairwise():
    better, worse = torch.tensor([0.3, -2.0]), torch.tensor([1.0, 4.0])
    pairwise = (_nls(0.7) + _nls(6.0)) / 2
    assert cost_model_loss(better, worse).item() == pytest.approx(pairwise, rel=1e-6)
    unknown = safety_signs([None, None])
    assert unknown.tolist() == [0.0, 0.0]
    assert cost_model_loss(better, worse, unknown, unknown).item() == pytest.approx(pairwise)
    # one known flag adds only that response's sign term
    partial = cost_model_loss(better, worse, None, safety_signs([False, None]))
    assert partial.item() == pytest.approx(pairwise + _nls(1.0) / 2, rel=1e-6)


def test_pairwise_accuracy_counts_ties_as_wrong():
    assert pairwise_accuracy(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0, 4.0])) == (
        pytest.approx(1 / 3)
    )


# ------------------------------------------------------------------------------ config, records


def test_config_checks_kind_settings():
    assert ValueModelConfig(kind="cost").dimension == "harmless"
    with pytest.raises(ValidationError, match="dimension must be 'harmless'"):
        ValueModelConfig(kind="cost", dimension="helpful")
    with pytest.raises(ValidationError, match="center_coef applies to reward models"):
        ValueModelConfig(kind="cost", center_coef=0.1)
    with pytest.raises(ValidationError):
        ValueModelConfig(model="nonsense")


def test_check_records_names_the_bad_record():
    good = value_pairs("harmless", "train", 2, 0)
    bad = dict(good[1], chosen=None)
    with pytest.raises(DataError, match="testbed train pair 1: field 'chosen' must be a string"):
        check_records([good[0], bad])
    with pytest.raises(DataError, match="'rejected_safe' must be true, false or null"):
        check_records([dict(good[0], rejected_safe="no")])
    with pytest.raises(DataError, match="no training records of dimension 'honest'"):
        check_records(good, "honest")
    assert check_records(good + value_pairs("helpful", "train", 3, 0), "helpful")[0][
        "dimension"
    ] == ("helpful")


def test_backbone_refuses_servers_and_adapters(testbed_path):
    with pytest.raises(ModelError, match="trains weights"):
        load_backbone(ValueModelConfig(model="openai:m@http://localhost:1/v1"))
    with pytest.raises(ModelError, match="merge the adapter"):
        load_backbone(ValueModelConfig(model=f"hf:{testbed_path}+/tmp/adapter"))


def test_pair_loss_uses_per_record_margin(testbed_path):
    config = ValueModelConfig(margin=0.5, device="cpu")
    value_model = load_backbone(config)
    batch = value_pairs("harmless", "train", 3, 0)
    batch[0]["margin"], batch[1]["margin"] = 2.0, None  # None: the config's margin
    with torch.no_grad():
        loss, _ = pair_loss(value_model, batch, config)
        prompts = [r["prompt"] for r in batch]
        chosen = value_model.forward(value_model.encode(prompts, [r["chosen"] for r in batch]))
        rejected = value_model.forward(value_model.encode(prompts, [r["rejected"] for r in batch]))
    expected = bradley_terry_loss(chosen, rejected, torch.tensor([2.0, 0.5, 0.5]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["reward", "cost"])
def test_each_step_reads_the_device_once(testbed_path, count_reads, kind):
    """Loss and accuracy stay on the device and are read together after the step is queued
    (a read between the forward and the backward would leave a GPU idle)."""
    config = ValueModelConfig(kind=kind, batch_size=4, device="cpu")
    model = train_value_model(config, value_pairs("harmless", "train", 12, 0), progress=False)
    assert [round(h["accuracy"] * 4) / 4 == h["accuracy"] for h in model.history] == [True] * 3
    assert count_reads.pop_transformers() <= 3  # the mask builder, once per forward (no mask)
    assert count_reads == {("parallel.py", "sum_over_processes"): 3}


# ------------------------------------------------------------------------------ trained models


@pytest.fixture(scope="module")
def heldout_harmless():
    return value_pairs("harmless", "heldout", 200, 1)


@pytest.fixture(scope="module")
def reward_model(testbed_path, heldout_harmless):
    """A harmlessness reward model, fully fine-tuned on 256 train-split pairs (one epoch)."""
    train = value_pairs("harmless", "train", 256, 0) + value_pairs("helpful", "train", 40, 0)
    config = ValueModelConfig(
        kind="reward", dimension="harmless", learning_rate=1e-3, batch_size=16, device="cpu"
    )
    return train_value_model(config, train, heldout_harmless, progress=False)


@pytest.fixture(scope="module")
def cost_model(testbed_path, heldout_harmless):
    """A Safe RLHF cost model on the same kind of pairs."""
    config = ValueModelConfig(kind="cost", learning_rate=1e-3, batch_size=16, device="cpu")
    train = value_pairs("harmless", "train", 256, 0)
    return train_value_model(config, train, heldout_harmless, progress=False)


def test_reward_model_ranks_heldout_pairs(reward_model, heldout_harmless):
    # only the 256 harmless records were trained on (16 steps), the helpful ones left out
    assert len(reward_model.history) == 16
    assert reward_model.history[-1]["loss"] < reward_model.history[0]["loss"] / 5
    metrics = evaluate_pairwise(reward_model, heldout_harmless)
    assert metrics == reward_model.metrics
    print("reward model held-out:", metrics)
    assert metrics["accuracy"] >= 0.9 and metrics["n"] == 200
    assert set(metrics["categories"]) == set(C.HARM_CATEGORIES)
    assert sum(c["n"] for c in metrics["categories"].values()) == 200
    assert "sign_accuracy" not in metrics


def test_cost_model_ranks_and_signs_heldout_pairs(cost_model, heldout_harmless):
    metrics = cost_model.metrics
    print("cost model held-out:", metrics)
    assert metrics["accuracy"] >= 0.9 and metrics["sign_accuracy"] >= 0.9
    assert metrics["sign_n"] == 400
    prompts = [r["prompt"] for r in heldout_harmless[:20]]
    refusals = cost_model.score(prompts, [r["chosen"] for r in heldout_harmless[:20]])
    harmful = cost_model.score(prompts, [r["rejected"] for r in heldout_harmless[:20]])
    assert max(refusals) < 0 < min(harmful)
    preference = cost_model.preference(prompts[:3], [r["rejected"] for r in heldout_harmless[:3]])
    assert preference == pytest.approx([-c for c in harmful[:3]], abs=1e-5)


def test_batched_scores_do_not_depend_on_padding(reward_model, heldout_harmless):
    prompts = [r["prompt"] for r in heldout_harmless[:6]]
    responses = [r["chosen"] if i % 2 else r["rejected"] for i, r in enumerate(heldout_harmless)]
    responses = responses[:6]
    batched = reward_model.score(prompts, responses, batch_size=6)
    single = [reward_model.score([p], [r])[0] for p, r in zip(prompts, responses, strict=True)]
    assert batched == pytest.approx(single, abs=1e-5)


def test_save_load_round_trip(cost_model, heldout_harmless, tmp_path):
    prompts = [r["prompt"] for r in heldout_harmless[:8]]
    responses = [r["rejected"] for r in heldout_harmless[:8]]
    before = cost_model.score(prompts, responses)
    cost_model.save(tmp_path / "cost")
    assert (tmp_path / "cost" / "model.safetensors").is_file()
    assert (tmp_path / "cost" / METADATA_FILE).is_file()
    loaded = ValueModel.load(tmp_path / "cost", device="cpu")
    assert (loaded.kind, loaded.dimension) == ("cost", "harmless")
    assert loaded.score(prompts, responses) == before
    with pytest.raises(ModelError, match="not a saved value model"):
        ValueModel.load(tmp_path)


def test_lora_trains_adapter_and_score_head(testbed_path, heldout_harmless, tmp_path):
    config = ValueModelConfig(
        dimension="harmless", lora=True, lora_r=8, learning_rate=2e-3, batch_size=16, device="cpu"
    )
    train = value_pairs("harmless", "train", 160, 2)
    value_model = train_value_model(config, train, heldout_harmless[:100], progress=False)
    print("LoRA reward model held-out:", value_model.metrics)
    assert value_model.metrics["accuracy"] >= 0.9
    params = dict(value_model.model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable and all("lora_" in n or ".score." in n for n in trainable)
    lora_b = [params[n] for n in trainable if "lora_B" in n]  # initialised to zero
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
    head = value_model.model.base_model.model.score  # fresh copy trained, original kept
    assert not torch.allclose(head.modules_to_save["default"].weight, head.original_module.weight)
    # saving merges the adapter and the trained head into a plain checkpoint
    prompts = [r["prompt"] for r in heldout_harmless[:8]]
    responses = [r["chosen"] for r in heldout_harmless[:8]]
    before = value_model.score(prompts, responses)
    value_model.save(tmp_path / "rm")
    loaded = ValueModel.load(tmp_path / "rm", device="cpu")
    assert not hasattr(loaded.model, "peft_config")
    assert loaded.score(prompts, responses) == pytest.approx(before, abs=1e-5)


@pytest.mark.parametrize(("dimension", "n", "epochs"), [("honest", 256, 1), ("helpful", 1024, 3)])
def test_reward_models_of_the_other_dimensions_reach_85_percent(dimension, n, epochs):
    """One reward model per value dimension: honesty is easy; helpfulness (a right answer over
    a wrong one or an over-refusal) needs more pairs and epochs (measured 0.93 held-out with one
    build of the testbed, 0.875 with the build of a machine with other CPU kernels, AVX-512 /
    AMX, whose weights differ; n = 200 held-out pairs)."""
    from alignkit.safety import data as safety_data

    config = ValueModelConfig(
        dimension=dimension, learning_rate=1e-3, batch_size=16, epochs=epochs, device="cpu"
    )
    model = train_value_model(
        config,
        safety_data.testbed_value_pairs(n, dimension, "train", 0),
        safety_data.testbed_value_pairs(200, dimension, "heldout", 1),
        progress=False,
    )
    assert model.metrics["accuracy"] >= 0.85
