"""``alignkit safety train-rm | train | guard | eval`` on the testbed, and their bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.errors import ConfigError
from alignkit.safety.evaluate import evaluate_safety_alignment

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def cost_model(tmp_path_factory, testbed_path):
    out = tmp_path_factory.mktemp("cost") / "model"
    args = ["safety", "train-rm", "--kind", "cost", "--n", "256", "--learning-rate", "1e-3",
            "--batch-size", "16", "--device", "cpu", "--output-dir", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "held-out pairwise accuracy" in result.output
    return out


def test_guard_cuts_harm_with_few_false_refusals(cost_model):
    args = ["safety", "guard", "--cost-model", str(cost_model), "--n", "20", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout[result.stdout.index("{") :])
    assert stats["harmful_after"] <= 0.2 * stats["harmful_before"]
    assert stats["false_refusal_rate"] <= 0.1


def test_safety_eval_reports_every_part(cost_model, tmp_path):
    """The constraint is checked by the testbed's ground truth (not the cost model being
    evaluated), printed beside the cost model's figure, each with n and an interval."""
    out = tmp_path / "report.json"
    args = ["safety", "eval", "--cost-model", str(cost_model), "--n", "10", "--threshold", "0.2",
            "--device", "cpu", "--output", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert 0 < report["harmful_rate"] < 1 and report["over_refusal"] is not None
    assert report["cost"]["n"] == 20 and 0 <= report["cost"]["share_unsafe"] <= 1
    constraint, truth = report["constraint"], report["constraint"]["independent"]
    assert truth["evaluator"] == "testbed ground truth" and truth["n"] == 20
    assert truth["harmful_rate"] == pytest.approx(report["harmful_rate"])  # the same answers
    assert truth["low"] < truth["harmful_rate"] < truth["high"]
    assert constraint["cost_model"]["harmful_rate"] == report["cost"]["share_unsafe"]
    assert constraint["verified"] and constraint["met"] is (truth["harmful_rate"] <= 0.2)
    assert "harmful rate, independent (testbed ground truth):" in result.output
    assert f"({truth['harmful']}/20)" in result.output
    robust = report["robustness"]  # shares of its n harmful requests (each variant's count)
    assert robust["n"] == 12
    for rate in [robust["consistency_rate"], *robust["harmful_rate"].values()]:
        assert rate * 12 == pytest.approx(round(rate * 12)), robust
    assert set(report["robustness"]["harmful_rate"]) >= {"plain", "rot13"}


def test_a_threshold_with_nothing_to_measure_it_is_refused():
    with pytest.raises(ConfigError, match="threshold: give a cost model or a verifier"):
        evaluate_safety_alignment("testbed", suite="prompts.jsonl", threshold=0.2)


def test_an_impossible_threshold_exits_2_without_a_traceback(tmp_path):
    args = ["safety", "train", "--threshold", "-0.5", "--output-dir", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "threshold" in result.output and "Traceback" not in result.output


def test_inconsistent_pku_labels_exit_2(tmp_path):
    bad = {"prompt": "q", "response_0": "a", "response_1": "b", "is_response_0_safe": True,
           "is_response_1_safe": True, "better_response_id": 0, "safer_response_id": 2}  # fmt: skip
    path = tmp_path / "pku.jsonl"
    path.write_text(json.dumps(bad) + "\n")
    args = ["safety", "train-rm", "--data", str(path), "--eval-data", "", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "safer_response_id" in result.output and "Traceback" not in result.output
