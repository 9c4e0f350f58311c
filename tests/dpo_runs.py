"""Short DPO runs on testbed pairs, for tests that check an option changes how the work is done
but not its result (prefix sharing, compiled layers): the same losses and final weights."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.dpo import DPOConfig, DPOTrainer
from alignkit.testbed import World
from alignkit.testbed.preferences import preference_pairs, write_jsonl

STEPS = 3


def run_both(tmp_path: Path, option: str, check: Callable[[DPOTrainer, bool], None]) -> None:
    """Train 3 steps on 24 testbed pairs with ``option`` off and on (``check(trainer, on)``
    runs on each trainer, before and after training) and assert the same losses (1e-5) and
    final weights (1e-4: Adam divides by the gradient's running scale, so float rounding in
    near-zero gradient entries moves a weight by a fraction of the learning rate, 5e-4)."""
    data = tmp_path / "pairs.jsonl"
    write_jsonl(preference_pairs(World(0), 24, split="train", seed=0), data)
    runs = {}
    for on in (False, True):
        out = tmp_path / f"{option}-{on}"
        options = {"max_steps": STEPS, "batch_size": 8, "kl_samples": 0, "learning_rate": 5e-4,
                   "device": "cpu", option: on}  # fmt: skip
        trainer = DPOTrainer("testbed", DPOConfig(data=data, output_dir=out, **options))
        check(trainer, on)
        trainer.train()
        trainer.save_model()
        check(trainer, on)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs[on] = ([r["loss"] for r in rows if "loss" in r],
                    load_file(out / "final" / "model.safetensors"))  # fmt: skip
    (losses, weights), (other_losses, other_weights) = runs[False], runs[True]
    assert len(losses) == STEPS and other_losses == pytest.approx(losses, abs=1e-5)
    assert other_weights.keys() == weights.keys()  # saved under the same names
    for name, tensor in weights.items():
        torch.testing.assert_close(other_weights[name], tensor, rtol=0, atol=1e-4, msg=name)
