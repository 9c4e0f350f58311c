"""Experiment tracking (``report_to``): what TensorBoard, W&B (offline) and MLflow (file store)
wrote is read back and compared with the run's own metrics, across a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tracker_logs import mlflow_history, mlflow_run, tensorboard_scalars, wandb_offline
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.dpo import DPOConfig, DPOTrainer
from alignkit.testbed import World
from alignkit.testbed.preferences import preference_pairs, write_jsonl
from alignkit.tracking import Tracking, check_report_to, numbers

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
ALL = ["tensorboard", "wandb", "mlflow"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No tracker may reach a network or a user's own settings from a test."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "MLFLOW_TRACKING_URI",
                 "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TAGS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_report_to_names_and_numbers():
    assert check_report_to("tensorboard, MLflow") == ["tensorboard", "mlflow"]
    assert check_report_to(["wandb", "wandb,tensorboard"]) == ["wandb", "tensorboard"]
    assert check_report_to("none") == [] and check_report_to(None) == []
    with pytest.raises(ValueError, match="unknown tracker 'neptune'; choose from tensorboard"):
        check_report_to(["neptune"])
    flat = numbers({"loss": 0.5, "ok": True, "eval": {"kl(p||q)": 2, "note": "x"},
                    "rows": [1, 2], "inf": float("inf")})  # fmt: skip
    assert flat == {"loss": 0.5, "ok": 1.0, "eval/kl_p__q_": 2.0}


def test_dpo_logs_the_same_figures_to_every_tracker_across_a_resume(testbed_path, tmp_path):
    """Two steps, a new process-like trainer resuming to four: each tracker holds steps 1-4 of
    metrics.jsonl (W&B and MLflow in one run each, by the ids kept in tracking.json), the final
    held-out figures, and the config."""
    world = World(0)
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    write_jsonl(preference_pairs(world, 64, split="train", seed=0), train)
    write_jsonl(preference_pairs(world, 16, split="heldout", seed=1), held)
    out = tmp_path / "run"
    config = DPOConfig(data=train, eval_data=held, output_dir=out, max_steps=4, batch_size=8,
                       learning_rate=5e-4, kl_samples=0, device="cpu", report_to=ALL)  # fmt: skip
    DPOTrainer("testbed", config).train(until=2)
    DPOTrainer("testbed", config.model_copy(update={"resume": True})).train()

    rows = _metrics(out)
    loss = {r["step"]: r["loss"] for r in rows if "loss" in r}
    final = next(r for r in rows if "eval/rewards/accuracies" in r)
    assert sorted(loss) == [1, 2, 3, 4] and final["step"] == 4

    board = tensorboard_scalars(out / "tensorboard" / "dpo")
    assert board["loss"] == pytest.approx(loss, rel=1e-6)  # float32 in the event file
    assert board["eval/rewards/accuracies"] == {4: pytest.approx(final["eval/rewards/accuracies"])}

    client, run = mlflow_run(out, "dpo")
    assert mlflow_history(out, "dpo", "loss") == pytest.approx(loss)
    assert mlflow_history(out, "dpo", "eval/rewards/accuracies") == {
        4: pytest.approx(final["eval/rewards/accuracies"])
    }
    assert run.data.params["beta"] == "0.1" and run.data.params["loss_type"] == "sigmoid"
    assert "resume" not in run.data.params and run.info.run_name == "run/dpo"

    ids = json.loads((out / "tracking.json").read_text())["dpo"]
    runs = wandb_offline(out)
    assert [r["id"] for r in runs] == [ids["wandb"]] * 2  # the resume continued the same run
    assert runs[0]["project"] == "alignkit" and runs[0]["name"] == "run/dpo"
    assert runs[0]["config"]["beta"] == 0.1 and runs[0]["config"]["max_steps"] == 4
    logged = {h["_step"]: h for run_ in runs for h in run_["history"]}
    assert {s: logged[s]["loss"] for s in loss} == pytest.approx(loss)
    assert logged[4]["eval/rewards/accuracies"] == pytest.approx(final["eval/rewards/accuracies"])


def test_reward_model_cli_tracks_its_steps_and_held_out_accuracy(testbed_path, tmp_path):
    out = tmp_path / "rm"
    args = [
        "safety",
        "train-rm",
        "--n",
        "32",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
        "--report-to",
        "mlflow",
        "--report-to",
        "tensorboard",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "metrics.json").read_text())
    steps = {i + 1: h["loss"] for i, h in enumerate(saved["train"])}
    assert mlflow_history(out, "reward-model", "loss") == pytest.approx(steps)
    board = tensorboard_scalars(out / "tensorboard" / "reward-model")
    assert board["loss"] == pytest.approx(steps, rel=1e-6)
    accuracy = mlflow_history(out, "reward-model", "eval/accuracy")
    assert accuracy == {len(steps): pytest.approx(saved["eval"]["accuracy"])}


@pytest.mark.parametrize(
    "args, needle",
    [
        (["dpo", "--report-to", "neptune"], "unknown tracker 'neptune'"),
        (["safety", "train-rm", "--report-to", "wandb"], "pip install wandb"),
    ],
)
def test_bad_trackers_exit_2_with_one_line_before_any_work(args, needle, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert result.output.startswith("error: --report-to: ") and result.output.count("\n") == 1


def test_a_failing_tracker_is_dropped_with_a_note_and_the_others_go_on(tmp_path, monkeypatch):
    from accelerate.tracking import TensorBoardTracker

    def full(self, values, step=None, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(TensorBoardTracker, "log", full)
    with Tracking(["tensorboard", "mlflow"], tmp_path, "dpo", {"beta": 0.1}) as tracking:
        tracking.log({"loss": 0.7}, step=1)
        tracking.log({"loss": 0.6}, step=2)
        assert tracking.dropped == ["tensorboard"]
    assert mlflow_history(tmp_path, "dpo", "loss") == {1: 0.7, 2: 0.6}
