"""Method selection (issue #18): successive halving over DPO losses picks, on testbed
preferences, a loss whose held-out implicit-reward accuracy is within one point of the best
full-budget run of every candidate, at no more than half their total compute.

The held-out set has 512 pairs (one point is five pairs): on the testbed every loss ends within
about one point of the others (0.955-0.965), and with 128 pairs the race could not tell them
apart from noise."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_rungs_halve_the_field_and_double_the_steps():
    from alignkit.dpo.selection import candidates, rungs

    assert rungs(4, 64) == [(4, 16), (2, 32), (1, 64)]
    assert rungs(3, 60) == [(3, 15), (2, 30), (1, 60)]
    assert rungs(8, 96, eta=2) == [(8, 12), (4, 24), (2, 48), (1, 96)]
    assert candidates(["sigmoid", "ipo"], [0.1, 0.3]) == [
        {"loss_type": "sigmoid", "beta": 0.1}, {"loss_type": "sigmoid", "beta": 0.3},
        {"loss_type": "ipo", "beta": 0.1}, {"loss_type": "ipo", "beta": 0.3},
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="at least two candidates"):
        rungs(1, 64)


@pytest.fixture(scope="module")
def prefs(tmp_path_factory, testbed_path):
    from alignkit.testbed import World
    from alignkit.testbed.preferences import preference_pairs, write_jsonl

    root = tmp_path_factory.mktemp("selection")
    write_jsonl(preference_pairs(World(0), 512, split="train", seed=0), root / "train.jsonl")
    write_jsonl(preference_pairs(World(0), 512, split="heldout", seed=1), root / "heldout.jsonl")
    return root


@pytest.fixture
def reference_scored_once(monkeypatch):
    """The race and this test score 12 models on the same 512 held-out pairs against the same
    frozen reference (the testbed model, loaded from disk each time): its log-probs of a batch
    are computed the first time and the same tensors handed back after (as the trainer's own
    precomputed-reference cache does), keyed by the reference's weight files and every token."""
    from alignkit.dpo import forward
    from alignkit.dpo.reference import data_fingerprint, model_fingerprint

    compute, seen = forward.get_ref_log_probs, {}

    def scored_once(reference, examples, pad_id=0, share_prompt=False):
        key = (model_fingerprint(reference), data_fingerprint(examples), pad_id, share_prompt)
        if key not in seen:
            seen[key] = compute(reference, examples, pad_id, share_prompt)
        return seen[key]

    monkeypatch.setattr(forward, "get_ref_log_probs", scored_once)
    return seen


def test_selection_is_within_a_point_of_the_best_full_run_at_half_the_compute(
    prefs, reference_scored_once
):
    from alignkit.dpo import DPOConfig, DPOTrainer
    from alignkit.dpo.selection import heldout_accuracy, select_method

    config = DPOConfig(data=prefs / "train.jsonl", eval_data=prefs / "heldout.jsonl",
                       output_dir=prefs / "race", max_steps=64, batch_size=8,
                       learning_rate=5e-4, kl_samples=0, device="cpu")  # fmt: skip
    options = [{"loss_type": "sigmoid", "beta": 0.03}, {"loss_type": "sigmoid", "beta": 1.0},
               {"loss_type": "ipo", "beta": 0.1}, {"loss_type": "ipo", "beta": 1.0}]  # fmt: skip
    race = select_method(config, options)
    # every candidate's full-budget run: the race's trials are their first steps, so each
    # resumes from its last checkpoint to the full budget (the winner is there already)
    full, held = {}, held_out(race.trainer, prefs, config)
    for i, o in enumerate(options):
        name = f"{o['loss_type']}-{o['beta']}"
        trainer = DPOTrainer(config=config, output_dir=prefs / "race" / "selection" / str(i),
                             resume=True, eval_data=None, eval_steps=0, **o)  # fmt: skip
        trainer.train()
        assert trainer.step == 64
        full[name] = heldout_accuracy(trainer, held)
    final = heldout_accuracy(race.trainer, held)
    print(f"chose {race.chosen}: held-out accuracy {final:.4f}; full-budget runs {full}; "
          f"{race.total_steps} steps against {race.full_steps}")  # fmt: skip
    chosen = f"{race.chosen['loss_type']}-{race.chosen['beta']}"
    assert final == full[chosen]  # the winner's model is its full-budget run
    assert final >= max(full.values()) - 0.01
    assert race.total_steps == 128 and race.full_steps == 256  # half
    saved = json.loads((prefs / "race" / "selection.json").read_text())
    assert saved["chosen"] == race.chosen and len(saved["trials"]) == 4 + 2


def held_out(trainer, prefs, config):
    from alignkit.dpo.trainer import preference_dataset

    data = preference_dataset(config, prefs / "heldout.jsonl", trainer.tokenizer)
    return [data[i] for i in range(len(data))]


def test_cli_races_then_trains_the_choice_and_a_resume_keeps_it(prefs, tmp_path):
    args = ["dpo", "--data", prefs / "train.jsonl", "--max-steps", "16", "--batch-size", "8",
            "--learning-rate", "5e-4", "--kl-samples", "0", "--device", "cpu",
            "--output-dir", tmp_path / "run", "--select-loss", "sigmoid",
            "--select-loss", "ipo", "--select-beta", "0.1", "--select-beta", "0.5"]  # fmt: skip
    done = CliRunner().invoke(app, [str(a) for a in args])
    assert done.exit_code == 0, done.output
    text = " ".join(done.output.split())
    assert "Method selection (successive halving)" in text and "against 64 to train" in text
    saved = json.loads((tmp_path / "run" / "selection.json").read_text())
    chosen = saved["chosen"]
    assert f"DPO ({chosen['loss_type']}, beta={chosen['beta']})" in text
    again = CliRunner().invoke(app, [str(a) for a in [*args, "--resume"]])
    assert again.exit_code == 0 and "holds a finished run" in again.output
