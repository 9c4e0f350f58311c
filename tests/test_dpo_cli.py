"""``alignkit dpo`` from the command line: training, ranked data, and bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from alignkit.cli import app

runner = CliRunner()
COMMON = ["--max-steps", "3", "--batch-size", "4", "--kl-samples", "0", "--device", "cpu"]


def run(*args):
    return runner.invoke(app, ["dpo", *map(str, args)])


@pytest.fixture(scope="module")
def data(tmp_path_factory, testbed_path):
    root = tmp_path_factory.mktemp("dpo-cli")
    assert (
        runner.invoke(
            app, ["testbed", "preferences", "--output", str(root / "pairs.jsonl"), "--n", "64"]
        ).exit_code
        == 0
    )
    assert (
        runner.invoke(
            app,
            [
                "testbed",
                "preferences",
                "--output",
                str(root / "ranked.jsonl"),
                "--n",
                "64",
                "--ranked",
            ],
        ).exit_code
        == 0
    )
    return root


def test_help_lists_the_options():
    out = runner.invoke(app, ["dpo", "--help"], env={"COLUMNS": "250"}).output
    for flag in (
        "--model",
        "--data",
        "--eval-data",
        "--output-dir",
        "--loss-type",
        "--beta",
        "--learning-rate",
        "--batch-size",
        "--gradient-accumulation-steps",
        "--max-steps",
        "--epochs",
        "--max-length",
        "--max-prompt-length",
        "--lora",
        "--precompute-ref",
        "--seed",
        "--save-steps",
        "--resume",
        "--on-bad-record",
    ):
        assert flag in out, flag


def test_trains_and_saves(data, tmp_path):
    result = run("--data", data / "pairs.jsonl", "--output-dir", tmp_path, *COMMON)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "final" / "model.safetensors").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["data"]["loaded"] == 64


def test_ranked_records_train_with_the_listwise_loss(data, tmp_path):
    result = run(
        "--data",
        data / "ranked.jsonl",
        "--output-dir",
        tmp_path,
        "--max-steps",
        "12",
        "--batch-size",
        "8",
        "--learning-rate",
        "1e-3",
        "--kl-samples",
        "0",
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[0] > 1.0  # Plackett-Luce over 3-4 responses starts above log 2
    assert losses[-1] < losses[0]


def test_bad_records_stop_or_are_skipped_and_counted(data, tmp_path):
    lines = (data / "pairs.jsonl").read_text().splitlines()[:20]
    bad = json.loads(lines[4])
    bad["rejected"] = bad["chosen"]
    lines[4] = json.dumps(bad)
    lines[7] = "{not json"
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = run("--data", path, "--output-dir", tmp_path / "a", *COMMON)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "bad.jsonl:5" in result.output and "rejected" in result.output
    result = run("--data", path, "--output-dir", tmp_path / "b", "--on-bad-record", "skip", *COMMON)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["data"]["loaded"] == 18
    assert sum(summary["data"]["skipped"].values()) == 2


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--loss-type", "nope"], "sigmoid"),
        (["--loss-type", "hinge", "--label-smoothing", "0.1"], "label_smoothing"),
        (["--data", "/no/such/file.jsonl"], "file.jsonl"),
        (["--model", "openai:m@http://127.0.0.1:9/v1"], "local model"),
        (["--max-prompt-length", "600"], "max_prompt_length"),
    ],
)
def test_user_errors_exit_2(data, tmp_path, args, fragment):
    base = ["--data", data / "pairs.jsonl", "--output-dir", tmp_path, *COMMON]
    result = run(*base, *args)
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output
