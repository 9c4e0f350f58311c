"""Options that change how DPO computes, not what: the same losses and final weights as the
default path over 3 steps on 24 testbed pairs (reference precomputed), against one shared
default run.

- ``prefix_sharing``: each prompt computed once for chosen and rejected, pairs packed into rows
  (the testbed model runs sdpa); the shared layout must really run (it falls back to rows
  silently where it cannot).
- ``compile``: every decoder layer compiled in place (on CPU the inductor's C++ backend); saved
  under the same parameter names (no ``_orig_mod`` prefixes).

Weights are compared within 1e-4: Adam divides by the gradient's running scale, so float
rounding in near-zero gradient entries moves a weight by a fraction of the learning rate (5e-4);
measured at most 3.3e-5.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.dpo import DPOConfig, DPOTrainer, forward
from alignkit.dpo.model_io import compile_layers
from alignkit.errors import ModelError
from alignkit.testbed import World
from alignkit.testbed.preferences import preference_pairs, write_jsonl

STEPS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_jsonl(preference_pairs(World(0), 24, split="train", seed=0), path)
    return path


def _train(data: Path, out: Path, check=lambda trainer: None, **options):
    """``(losses, final weights)`` of a 3-step run; ``check(trainer)`` before and after."""
    settings = {"max_steps": STEPS, "batch_size": 8, "kl_samples": 0, "learning_rate": 5e-4,
                "device": "cpu", **options}  # fmt: skip
    trainer = DPOTrainer("testbed", DPOConfig(data=data, output_dir=out, **settings))
    check(trainer)
    trainer.train()
    trainer.save_model()
    check(trainer)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    return losses, load_file(out / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def default(data, tmp_path_factory):
    return _train(data, tmp_path_factory.mktemp("default") / "out")


def _assert_same(run, default) -> None:
    (losses, weights), (expected, expected_weights) = run, default
    assert len(expected) == STEPS and losses == pytest.approx(expected, abs=1e-5)
    assert weights.keys() == expected_weights.keys()  # saved under the same names
    for name, tensor in expected_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=1e-4, msg=name)


def test_shared_prompts_train_as_the_plain_rows(data, default, tmp_path, monkeypatch):
    ran = []
    shared_sums = forward._shared_sums

    def spy(*args):
        sums = shared_sums(*args)
        ran.extend([] if sums is None else [len(sums)])
        return sums

    monkeypatch.setattr(forward, "_shared_sums", spy)

    def check(trainer):
        assert forward.attention_implementation(trainer.model) == "sdpa"
        assert bool(ran) == (trainer.step > 0)  # the reference precompute and every step

    _assert_same(_train(data, tmp_path, check, prefix_sharing=True), default)


def test_compiled_layers_train_as_the_eager_ones(data, default, tmp_path):
    def check(trainer):
        layers = [m for m in trainer.model.modules() if type(m).__name__ == "LlamaDecoderLayer"]
        assert len(layers) == 4 and all(m._compiled_call_impl is not None for m in layers)

    _assert_same(_train(data, tmp_path, check, compile=True), default)


def test_a_model_without_named_layers_is_not_compiled():
    with pytest.raises(ModelError, match="names no decoder layer class"):
        compile_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))
