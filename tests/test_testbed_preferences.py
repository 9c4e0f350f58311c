"""Testbed preference data: ground-truth classes, the mix, disjoint splits, loadable files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from alignkit.data import DPODataset, load_preferences
from alignkit.errors import ConfigError
from alignkit.testbed import World, label
from alignkit.testbed.preferences import (
    DEFAULT_PAIR_MIX,
    PAIR_TYPES,
    RANKED_TYPES,
    allocate,
    preference_pairs,
    ranked_records,
    write_jsonl,
)

SAMPLE = Path(__file__).parent.parent / "examples" / "data" / "testbed_prefs_sample.jsonl"


@pytest.fixture(scope="module")
def world():
    return World(0)


@pytest.fixture(scope="module")
def pairs(world):
    return preference_pairs(world, 600, split="train", seed=0)


def _matches(prompt: str, response: str, cls: str) -> bool:
    """Whether the labeller agrees that ``response`` is of world class ``cls``."""
    got = label(prompt, response)
    if cls == "idk":
        return got.idk and not got.harmful
    if cls == "over_refusal" and got.kind == "unanswerable":
        return got.refusal  # the labeller calls any refusal of an unanswerable one "refusal"
    return got.response_class == cls


def test_chosen_and_rejected_have_their_ground_truth_classes(pairs):
    for record in pairs:
        kind, wrapped, good, bad = PAIR_TYPES[record["type"]]
        assert (record["chosen_class"], record["rejected_class"]) == (good, bad)
        assert _matches(record["prompt"], record["chosen"], good), record
        assert _matches(record["prompt"], record["rejected"], bad), record
        truth = label(record["prompt"], record["chosen"])
        assert truth.kind == kind and (truth.jailbreak is not None) == wrapped
        assert truth.category == record["category"]


def test_mix_counts_and_benign_share(pairs, world):
    counts = Counter(r["type"] for r in pairs)
    assert counts == allocate(600, DEFAULT_PAIR_MIX, PAIR_TYPES)
    assert counts["benign"] + counts["benign_wrong"] >= 0.4 * len(pairs)
    assert sum(allocate(7, {"a": 1, "b": 1, "c": 1}, "abc").values()) == 7
    custom = preference_pairs(world, 10, mix={"benign": 1, "harmful": 1})
    assert Counter(r["type"] for r in custom) == {"benign": 5, "harmful": 5}
    with pytest.raises(ConfigError, match=r"unknown preference type\(s\) \['toxic'\]"):
        preference_pairs(world, 10, mix={"toxic": 1.0})
    with pytest.raises(ConfigError, match="not all zero"):
        preference_pairs(world, 10, mix={"benign": 0.0})


def test_every_request_is_used_before_one_repeats(world):
    harmful = world.requests("harmful", "train")
    records = preference_pairs(world, 2 * len(harmful), mix={"harmful": 1.0})
    assert Counter(r["request"] for r in records) == {r.text: 2 for r in harmful}


def test_deterministic_and_seeded(world):
    assert preference_pairs(world, 50, seed=3) == preference_pairs(world, 50, seed=3)
    assert preference_pairs(world, 50, seed=3) != preference_pairs(world, 50, seed=4)


def test_heldout_prompts_are_disjoint_from_train(world, pairs):
    heldout = preference_pairs(world, 400, split="heldout")
    assert {r["prompt"] for r in heldout}.isdisjoint({r["prompt"] for r in pairs})
    assert {r["request"] for r in heldout}.isdisjoint({r["request"] for r in pairs})
    ranked_train = {r["prompt"] for r in ranked_records(world, 300, split="train")}
    assert {r["prompt"] for r in ranked_records(world, 300, "heldout")}.isdisjoint(ranked_train)


def test_pairs_written_and_loaded_as_standard_records(tmp_path, pairs, testbed_path):
    path = write_jsonl(pairs, tmp_path / "sub" / "prefs.jsonl")
    examples, report = load_preferences(path)
    assert report.formats == {"standard": len(pairs)} and not report.skipped
    assert [e.completions for e in examples] == [[r["chosen"], r["rejected"]] for r in pairs]
    assert examples[0].metadata["type"] == pairs[0]["type"]
    tokenizer = AutoTokenizer.from_pretrained(testbed_path)
    dataset = DPODataset.from_file(path, tokenizer, max_length=256, max_prompt_length=192)
    assert len(dataset) == len(pairs) and not dataset.is_ranked
    assert dataset.report.truncated_records == 0 and not dataset.report.dropped


def test_ranked_records_order_best_to_worst(tmp_path, world, testbed_path):
    records = ranked_records(world, 200, split="train", seed=1)
    examples, report = load_preferences(write_jsonl(records, tmp_path / "ranked.jsonl"))
    assert report.formats == {"ranked": 200}
    for record, example in zip(records, examples, strict=True):
        classes = RANKED_TYPES[record["type"]][2]
        assert [record["classes"][i] for i in record["ranking"]] == list(classes)
        assert example.completions == [record["responses"][i] for i in record["ranking"]]
        for text, cls in zip(example.completions, classes, strict=True):
            assert _matches(record["prompt"], text, cls), (record, cls)
    assert {len(e.completions) for e in examples} == {3, 4}
    tokenizer = AutoTokenizer.from_pretrained(testbed_path)
    assert DPODataset(examples, tokenizer).is_ranked


def test_sample_file_loads_and_agrees_with_the_labeller():
    examples, report = load_preferences(SAMPLE)
    assert report.loaded == report.read >= 20
    for example in examples:
        prompt = example.prompt[0]["content"]
        assert _matches(prompt, example.completions[0], example.metadata["chosen_class"])
        assert _matches(prompt, example.completions[1], example.metadata["rejected_class"])


def _train_texts(world) -> set[str]:
    kinds = ("benign", "harmful", "unanswerable")
    return {r.text for kind in kinds for r in world.requests(kind, "train")}


def test_every_seed_draws_held_out_prompts_from_the_models_own_split(tmp_path, world):
    """The testbed model learnt World(0)'s train split. A draw seed picks the draw, not the
    split: `testbed preferences --split heldout --seed 1` (the README's DPO recipe) used to make
    World(1)'s split, whose held-out prompts were partly World(0)'s training prompts."""
    import json

    from typer.testing import CliRunner

    from alignkit.cli import app
    from alignkit.evaluation.suites import testbed_suite
    from alignkit.testbed import TestbedConfig
    from alignkit.testbed.splits import MODEL_WORLD_SEED

    assert MODEL_WORLD_SEED == TestbedConfig().seed == world.seed
    seen = _train_texts(world)
    assert _train_texts(World(1)) - seen  # another world's split differs: the leak was real
    out = tmp_path / "eval.jsonl"
    args = ["testbed", "preferences", "--output", str(out), "--n", "64", "--split", "heldout"]
    result = CliRunner().invoke(app, [*args, "--seed", "1"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records == json.loads(json.dumps(preference_pairs(world, 64, "heldout", seed=1)))
    assert not [r for r in records if r["request"] in seen]
    for seed in (1, 2):
        items = testbed_suite(n=50, seed=seed)
        assert not [i for i in items if i.prompt in seen]
        assert items != testbed_suite(n=50, seed=0)  # the seed still picks the draw
