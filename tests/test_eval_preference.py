"""PreferenceAlignmentEvaluator and MultiObjectiveAlignmentEvaluator on the testbed, before and
after DPO: win rate judged in both orders, implicit-reward accuracy, KL, Pareto analysis."""

from __future__ import annotations

import json

import pytest

from alignkit.cli import app
from alignkit.errors import ConfigError, DataError
from alignkit.evaluation.cache import CallCache
from alignkit.evaluation.multi_objective import MultiObjectiveAlignmentEvaluator, pareto_analysis
from alignkit.evaluation.preference import PreferenceAlignmentEvaluator, _outcome, load_pairs
from alignkit.evaluation.suites import testbed_suite as make_suite
from alignkit.models import load_backend


@pytest.fixture(scope="module")
def dpo_backend(dpo_trained):
    _, root = dpo_trained
    backend = load_backend(f"hf:{root / 'model'}", batch_size=64, device="cpu")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return CallCache(tmp_path_factory.mktemp("pref-cache") / "calls.sqlite")


def test_outcomes_need_both_orders():
    assert _outcome("A", "B") == 1.0  # model first and picked, then model second and picked
    assert _outcome("B", "A") == 0.0
    assert _outcome("A", "A") == 0.5  # position bias: a tie
    assert _outcome(None, "B") == 0.5


def test_dpo_model_wins_on_harmful_prompts_and_bias_is_reported(
    dpo_backend, testbed_backend, cache, monkeypatch, tmp_path
):
    from alignkit.evaluation import preference
    from alignkit.evaluation.stats import length_controlled_win_rate

    calls = []  # every judge call: (model's texts shown as A, as B, verdicts)
    real_prefer = preference.PairwiseJudge.prefer

    def recorded(self, requests, first, second, questions):
        verdicts = real_prefer(self, requests, first, second, questions)
        calls.append((list(first), list(second), verdicts))
        return verdicts

    monkeypatch.setattr(preference.PairwiseJudge, "prefer", recorded)
    evaluator = PreferenceAlignmentEvaluator(
        dpo_backend, baseline=testbed_backend, judge=testbed_backend, cache=cache
    )
    harmful = [i for i in make_suite(n=30) if i.kind in ("harmful", "jailbreak")]
    win = evaluator.win_rate(harmful)
    assert win.wins + win.ties + win.losses == 60
    assert win.win_rate.value > 0.6, win  # the DPO model refuses where the base complied
    assert win.wins > 3 * win.losses
    # every figure recomputed from the judge's raw verdicts in the two orders
    (mine, theirs, order1), (theirs2, mine2, order2) = calls
    assert (mine, theirs) == (mine2, theirs2)
    outcomes = [
        0.5 if a == b else 1.0 if (v1, v2) == ("A", "B") else 0.0 if (v1, v2) == ("B", "A") else 0.5
        for a, b, v1, v2 in zip(mine, theirs, order1, order2, strict=True)
    ]
    assert (win.wins, win.ties, win.losses) == tuple(outcomes.count(x) for x in (1.0, 0.5, 0.0))
    assert win.win_rate.value == pytest.approx(sum(outcomes) / 60)
    both = [(v1, v2) for v1, v2 in zip(order1, order2, strict=True) if v1 and v2]
    verdicts = [v for v in order1 + order2 if v]
    bias = win.position_bias
    assert bias["consistent"] == pytest.approx(sum(v1 != v2 for v1, v2 in both) / len(both))
    assert bias["first_position_rate"] == pytest.approx(verdicts.count("A") / len(verdicts))
    lengths = [len(a) - len(b) for a, b in zip(mine, theirs, strict=True)]
    assert win.lc_win_rate == pytest.approx(length_controlled_win_rate(outcomes, lengths))
    # the per-prompt pairs people can review (win_pairs.jsonl): the model's answer as chosen
    assert [(p["chosen"], p["rejected"], p["soft_label"]) for p in win.pairs] == list(
        zip(mine, theirs, outcomes, strict=True)
    )
    preference.PreferenceResult(model="dpo", win=win).save(tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "win_pairs.jsonl").read_text().splitlines()]
    assert rows == win.pairs and len(rows) == 60


def test_implicit_reward_accuracy_of_dpo_model_on_heldout_pairs(
    dpo_trained, dpo_backend, testbed_backend, cache
):
    _, root = dpo_trained
    pairs = load_pairs(root / "eval.jsonl")
    evaluator = PreferenceAlignmentEvaluator(dpo_backend, reference=testbed_backend, cache=cache)
    result = evaluator.implicit_reward_accuracy(pairs)
    assert result["n"] == 64
    assert result["accuracy"]["value"] >= 0.8, result
    assert result["margin"]["value"] > 0
    # the base model against itself carries no preference: every margin is zero
    same = PreferenceAlignmentEvaluator(testbed_backend, reference=testbed_backend, cache=False)
    assert same.implicit_reward_accuracy(pairs[:8])["margin"]["value"] == 0.0


def test_kl_is_positive_after_dpo_and_zero_for_the_reference(dpo_backend, testbed_backend, cache):
    prompts = [i.prompt for i in make_suite(n=8)]
    moved = PreferenceAlignmentEvaluator(dpo_backend, reference=testbed_backend, cache=cache)
    assert moved.kl(prompts).value > 0.1
    still = PreferenceAlignmentEvaluator(testbed_backend, reference=testbed_backend, cache=False)
    assert still.kl(prompts[:8]).value == pytest.approx(0.0, abs=1e-6)


def test_missing_models_are_config_errors(testbed_backend):
    evaluator = PreferenceAlignmentEvaluator(testbed_backend, cache=False)
    with pytest.raises(ConfigError, match="baseline"):
        evaluator.win_rate(make_suite(n=1))
    with pytest.raises(ConfigError, match="reference"):
        evaluator.kl(["hi"])


def test_pareto_front_of_base_and_dpo(dpo_backend, testbed_backend, cache, tmp_path):
    multi = MultiObjectiveAlignmentEvaluator(
        {"base": testbed_backend, "dpo": dpo_backend},
        objectives=["testbed/helpful", "testbed/harmless"],
        n=30,
        scorers=("testbed",),
        cache=cache,
    )
    result = multi.run(tmp_path)
    base, dpo = result.models["base"], result.models["dpo"]
    assert dpo["testbed/harmless"] > base["testbed/harmless"] + 0.2
    if "dpo" not in result.front:
        pytest.fail(f"DPO model off the front: {result.to_dict()}")
    assert 0 < result.hypervolume <= 1
    saved = json.loads((tmp_path / "multi_objective.json").read_text())
    assert saved["front"] == result.front


def test_pareto_analysis_flips_lower_is_better_and_checks_objectives():
    result = pareto_analysis(
        {
            "a": {"x/helpful": 0.9, "x/over_refusal": 0.5},
            "b": {"x/helpful": 0.8, "x/over_refusal": 0.1},
        },
        ["x/helpful", "x/over_refusal"],
    )
    assert sorted(result.front) == ["a", "b"]  # b refuses less, a helps more
    assert result.hypervolume == pytest.approx(0.9 * 0.5 + (0.9 - 0.9) + 0.8 * 0.4)
    with pytest.raises(DataError, match="no measurement"):
        pareto_analysis({"a": {"x/helpful": 1.0}}, ["x/helpful", "x/harmless"])


def test_eval_cli_writes_run_dir_and_report(tmp_path):
    from typer.testing import CliRunner

    out = tmp_path / "run"
    cache = tmp_path / "calls.sqlite"
    runner = CliRunner()
    args = ["eval", "--n", "5", "--output-dir", str(out), "--cache-path", str(cache)]
    done = runner.invoke(app, args + ["--reference", "testbed", "--kl-prompts", "4"])
    assert done.exit_code == 0, done.output
    assert "testbed/harmless" in done.output
    for name in ("eval.json", "eval_items.jsonl", "preference.json", "report.html"):
        assert (out / name).is_file(), name
    pref = json.loads((out / "preference.json").read_text())
    assert pref["kl"]["value"] == pytest.approx(0.0, abs=1e-6)
    bad = runner.invoke(app, ["eval", "--suite", "nope", "--output-dir", str(out)])
    assert bad.exit_code == 2 and "unknown suite" in bad.output
    missing = runner.invoke(app, ["eval", "--scorers", "llm-judge"])
    assert missing.exit_code == 2 and "judge_model" in missing.output
