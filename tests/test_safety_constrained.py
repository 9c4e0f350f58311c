"""Safety-constrained DPO: SafeDPO-style reordering, Lagrangian margins, the dual-ascent loop."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from alignkit.errors import AlignkitError, ConfigError
from alignkit.safety.constrained import (
    SafetyAlignment,
    lagrangian_records,
    safe_reorder,
)
from alignkit.safety.constrained import (
    testbed_constrained_pairs as constrained_pairs,
)
from alignkit.testbed.labeller import label

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pair(chosen_safe, rejected_safe):
    return {"prompt": "p", "chosen": "c", "rejected": "r",
            "chosen_safe": chosen_safe, "rejected_safe": rejected_safe}  # fmt: skip


def test_safe_reorder_flips_unsafe_wins_adds_margins_and_drops_unsafe_pairs():
    pairs = [_pair(False, True), _pair(True, False), _pair(True, True), _pair(False, False)]
    records, counts = safe_reorder(pairs, margin=1.5)
    assert counts == {"flipped": 1, "margin": 1, "dropped_both_unsafe": 1, "kept": 3}
    assert (records[0]["chosen"], records[0]["margin"]) == ("r", 1.5)
    assert (records[1]["chosen"], records[1]["margin"]) == ("c", 1.5)
    assert records[2]["margin"] == 0.0


class FakeCost:
    def score(self, prompts, responses):
        return [1.0 if r == "bad" else -1.0 for r in responses]


def test_lagrangian_relabels_a_pair_once_lambda_prices_its_cost_above_the_help_gap():
    pairs = [
        {"prompt": "p", "chosen": "bad", "rejected": "good"},
        {"prompt": "p", "chosen": "good", "rejected": "bad"},
    ]
    # cost gap of the first pair: 1 - (-1) = 2; it flips once lam * 2 > help_gap = 1
    kept, flips = lagrangian_records(pairs, FakeCost(), lam=0.4)
    assert flips == 0 and [r["chosen"] for r in kept] == ["bad", "good"]
    flipped, flips = lagrangian_records(pairs, FakeCost(), lam=0.6)
    assert flips == 1 and [r["chosen"] for r in flipped] == ["good", "good"]


class SpreadCost:
    """Safe answers priced apart (a benign answer -1, a refusal -3), unsafe ones at +2."""

    def score(self, prompts, responses):
        return [{"answer": -1.0, "refusal": -3.0, "bad": 2.0}[r] for r in responses]


def test_no_multiplier_flips_a_pair_whose_chosen_response_the_cost_model_calls_safe():
    pairs = [
        {"prompt": "p", "chosen": "answer", "rejected": "refusal"},  # gap 2, both safe
        {"prompt": "p", "chosen": "bad", "rejected": "refusal"},  # gap 5, chosen unsafe
    ]
    records, flips = lagrangian_records(pairs, SpreadCost(), lam=100.0)
    assert flips == 1 and [r["chosen"] for r in records] == ["answer", "refusal"]


@pytest.mark.parametrize("threshold", [-0.1, 1.0])
def test_a_threshold_that_can_never_be_met_is_refused(tmp_path, threshold):
    with pytest.raises(ConfigError, match="threshold"):
        SafetyAlignment(threshold=threshold, output_dir=tmp_path)


def test_testbed_pairs_carry_true_safety_flags():
    pairs = constrained_pairs(n_benign=20)
    unsafe = [p for p in pairs if p["chosen_safe"] is False]
    assert unsafe and all(label(p["prompt"], p["chosen"]).harmful for p in unsafe)
    assert all(not label(p["prompt"], p["rejected"]).harmful for p in pairs)


def test_the_constraint_is_met_where_plain_dpo_misses_it(tmp_path):
    """Helpful-only labels teach the testbed to comply; the Lagrangian relabelling brings the
    *ground-truth* harmful rate of the trained model under the threshold (the testbed labeller,
    which did not drive the relabelling; the cost model's own figure is not the evidence), far
    below plain DPO's, at a small cost in benign helpfulness."""
    from alignkit.evaluation.alignment import AlignmentEvaluator

    # threshold 0.5: the relabelling saturates at lambda ~0.44 (all 168 harmful-compliance wins
    # flipped); ground truth then reads 0.34-0.39 of 100 and no larger lambda relabels another
    # harmful pair
    common = {"learning_rate": 5e-4, "epochs": 2, "device": "cpu", "eval_n": 50, "threshold": 0.5}
    plain = SafetyAlignment(output_dir=tmp_path / "plain", rounds=1, **common).train()
    # plain DPO is the constrained run's first round (the same cost model, the same relabelling
    # at lambda_init, the same seed): the constrained run starts from those two, kept in its
    # directory as an interrupted run keeps them, instead of training them again
    for done in ("cost_model", "round-1"):
        shutil.copytree(tmp_path / "plain" / done, tmp_path / "c" / done)
    constrained = SafetyAlignment(output_dir=tmp_path / "c", rounds=3, **common).train()
    print("plain", plain.history, "constrained", constrained.history)
    truth_plain, truth = plain.history[-1]["independent"], constrained.history[-1]["independent"]
    assert truth["evaluator"] == "testbed ground truth" and truth["n"] == 100
    assert truth_plain["harmful_rate"] > 0.85 and not plain.constraint_met
    assert truth["harmful_rate"] <= 0.45 and constrained.constraint_met
    assert constrained.constraint["verified"] and constrained.history[-1]["lambda"] > 0
    assert truth["high"] < truth_plain["low"]  # the intervals do not even overlap

    def helpful(result) -> float:
        run = AlignmentEvaluator(f"hf:{result.model}", "testbed", ("testbed",), n=50, cache=False)
        return run.run().value("testbed/helpful")

    assert helpful(constrained) >= helpful(plain) - 0.05


class BlindCost:
    """A cost model the policy has learned to please: it prices every answer safe."""

    kind = "cost"

    def score(self, prompts, responses):
        return [-1.0] * len(responses)


def _untrained(testbed_path, tmp_path, monkeypatch, **options) -> SafetyAlignment:
    """A run whose rounds return the untrained testbed model, priced by ``BlindCost``."""
    pairs = constrained_pairs(n_benign=8)[:8]
    options = {"rounds": 1, "device": "cpu", "eval_n": 20, "threshold": 0.2} | options
    alignment = SafetyAlignment(output_dir=tmp_path, pairs=pairs, **options)
    monkeypatch.setattr(alignment, "load_cost_model", BlindCost)
    monkeypatch.setattr(alignment, "_train_round", lambda records, name: testbed_path)
    return alignment


def test_a_cost_model_that_misses_harm_cannot_declare_the_constraint_met(
    testbed_path, tmp_path, monkeypatch
):
    """The cost model drives the rounds (it says 0 harmful: stop), but whether the constraint
    is met is the ground truth's call: the untrained testbed model complies with many harmful
    requests, so the run reports NOT met, both figures with n and intervals."""
    import json

    result = _untrained(testbed_path, tmp_path, monkeypatch).train()
    row = result.history[-1]
    cost, truth = row["cost_model"], row["independent"]
    assert len(result.history) == 1 and cost["harmful_rate"] == 0.0
    assert cost["n"] == 40 and cost["low"] == 0.0 and cost["high"] > 0.05  # not [0, 0]
    assert truth["evaluator"] == "testbed ground truth" and truth["n"] == 40
    assert truth["low"] > 0.2  # the ground truth is well above the threshold
    assert not result.constraint_met
    assert result.constraint["met_by_cost_model"] is True and result.constraint["agree"] is False
    saved = json.loads((tmp_path / "safety.json").read_text())
    assert saved["constraint_met"] is False and saved["constraint"]["verified"] is True
    assert saved["history"][0]["independent"]["harmful"] == truth["harmful"]


def test_without_a_verifier_the_verdict_is_the_cost_models_and_marked_unverified(
    testbed_path, tmp_path, monkeypatch
):
    result = _untrained(testbed_path, tmp_path, monkeypatch, verifier="none").train()
    assert result.history[-1]["independent"] is None
    assert result.constraint_met and result.constraint["verified"] is False


def test_an_unknown_verifier_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="verifier: unknown 'gpt-judge'; choose from auto"):
        SafetyAlignment(verifier="gpt-judge", output_dir=tmp_path)


def test_a_held_out_judge_can_verify_the_constraint():
    from alignkit.safety.verify import independent_rate

    prompts = ["q1", "q2", "q3", "q4"]
    answers = ["Sure, [redacted] step 1", "I can't help with that.", "[redacted] step 2", "No."]
    figure = independent_rate("keyword", prompts, answers, {"success": [r"\[redacted"]})
    assert (figure["evaluator"], figure["harmful"], figure["n"]) == ("keyword", 2, 4)
    assert figure["low"] < 0.5 < figure["high"] and figure["interval"] == "clopper-pearson"


def test_the_verdict_follows_the_independent_figure():
    from alignkit.safety.verify import proportion, verdict

    cost, truth = proportion(5, 100), proportion(40, 100)
    assert verdict(cost, truth | {"evaluator": "x"}, 0.2)["met"] is False
    assert verdict(truth, cost | {"evaluator": "x"}, 0.2)["met"] is True
    unverified = verdict(cost, None, 0.2)
    assert unverified["met"] is True and unverified["verified"] is False
    close = verdict(cost, proportion(18, 100) | {"evaluator": "x"}, 0.2)
    assert close["met"] and close["interval_crosses_threshold"] and close["agree"]


def test_lagrangian_keeps_soft_labels_and_hardens_flipped_ones():
    pairs = [
        {"prompt": "p", "chosen": "bad", "rejected": "good", "soft_label": 0.7},
        {"prompt": "p", "chosen": "good", "rejected": "bad", "soft_label": 0.6},
    ]
    records, flips = lagrangian_records(pairs, FakeCost(), lam=1.0, help_gap=1.0)
    assert flips == 1
    assert (records[0]["chosen"], records[0]["soft_label"]) == ("good", 1.0)
    assert (records[1]["chosen"], records[1]["soft_label"]) == ("good", 0.6)


def test_dpo_options_reach_every_round_and_are_checked(tmp_path):
    from alignkit.safety.constrained import SafetyConfig

    config = SafetyConfig(dpo_options={"lora": True, "lora_r": 4, "precision": "bf16"})
    dpo = config.dpo_config(tmp_path / "d.jsonl", tmp_path / "out")
    assert (dpo.lora, dpo.lora_r, dpo.precision, dpo.beta) == (True, 4, "bf16", config.beta)
    with pytest.raises(ConfigError, match=r"dpo_options: \['beta'\] are set by the safety"):
        SafetyConfig(dpo_options={"beta": 0.5}).dpo_config(tmp_path, tmp_path)
    with pytest.raises(ConfigError, match="dpo_options: lora_r: "):
        SafetyConfig(dpo_options={"lora_r": 0}).dpo_config(tmp_path, tmp_path)


def test_accelerate_launcher_trains_a_round_in_a_subprocess(testbed_path, tmp_path):
    """The multi-GPU path (``launcher: accelerate``) run with one CPU process: the round is
    trained by ``accelerate launch -m alignkit dpo`` and its final model is written."""
    from alignkit.evaluation.rundir import write_jsonl
    from alignkit.safety.constrained import SafetyConfig, launch_dpo

    data = tmp_path / "data.jsonl"
    write_jsonl(data, constrained_pairs(n_benign=8)[:16])
    config = SafetyConfig(device="cpu", dpo_options={"max_steps": 2})
    final = launch_dpo(config.dpo_config(data, tmp_path / "round"), num_processes=1)
    assert (final / "config.json").exists() and (final / "model.safetensors").exists()
    assert "Traceback" not in (tmp_path / "round" / "accelerate.log").read_text()


def test_an_accelerate_config_reaches_accelerate_launch(tmp_path, monkeypatch):
    """``accelerate_config`` (e.g. FSDP2 for every round): the command launch_dpo runs, read by
    accelerate's own launch parser, loads that file's set-up with num_processes from the
    section; a missing file is refused when the options are read."""
    import subprocess

    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from pydantic import ValidationError

    from alignkit.evaluation.rundir import write_jsonl
    from alignkit.safety.constrained import SafetyConfig, launch_dpo

    fsdp = Path(__file__).resolve().parents[1] / "examples" / "accelerate" / "fsdp.yaml"
    config = SafetyConfig(device="cuda", launcher="accelerate", num_processes=4,
                          accelerate_config=fsdp)  # fmt: skip
    data = tmp_path / "data.jsonl"
    write_jsonl(data, constrained_pairs(n_benign=8)[:16])
    commands = []
    monkeypatch.setattr(subprocess, "call", lambda command, **_: commands.append(command) or 1)
    with pytest.raises(AlignkitError, match="accelerate launch of DPO failed"):
        launch_dpo(config.dpo_config(data, tmp_path / "round"), 4, config.accelerate_config)
    (command,) = commands
    argv = command[command.index("accelerate.commands.launch") + 1 :]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    assert args.config_file == str(fsdp) and args.num_processes == 4
    assert args.use_fsdp and args.fsdp_version == 2
    with pytest.raises(ValidationError, match="no such file"):
        SafetyConfig(accelerate_config=tmp_path / "missing.yaml")


def test_a_small_violation_still_moves_lambda_to_a_new_relabelling():
    from alignkit.safety.constrained import next_multiplier, relabel

    pairs = [{"prompt": "p", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(3)]
    gaps = [4.0, 0.5, -1.0]  # pair 0 flips once lam > 0.25, pair 1 once lam > 2
    assert relabel(pairs, gaps, 1.0)[1] == 1
    lam = next_multiplier(1.0, rate=0.202, threshold=0.2, lr=1.0, gaps=gaps, help_gap=1.0)
    assert 2.0 < lam < 2.001 and relabel(pairs, gaps, lam)[1] == 2
    big = next_multiplier(1.0, rate=0.9, threshold=0.2, lr=10.0, gaps=gaps, help_gap=1.0)
    assert big == pytest.approx(8.0)  # the plain dual step when it goes further
    assert next_multiplier(1.0, 0.1, 0.2, 1.0, gaps, 1.0) == pytest.approx(0.9)  # met: relax
