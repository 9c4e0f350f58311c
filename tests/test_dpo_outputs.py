"""``alignkit dpo`` output directories (issue 19, items 4 and 6): one run per directory.

A directory holding another run is refused unless --resume or --overwrite; --resume with another
total or other settings, or with nothing to resume, is refused; a bad output path fails before
any model is loaded. Every refusal is one line and exit 2 and leaves the directory as it was.
Checkpoints, the final model and the metrics survive a kill mid-write.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.dpo import DPOConfig, DPOTrainer
from alignkit.dpo.checkpoint import latest_checkpoint, load_state, save_checkpoint, trim_metrics
from alignkit.errors import ConfigError

runner = CliRunner()
FAST = ["--batch-size", "2", "--kl-samples", "0", "--device", "cpu"]


def dpo(*args):
    return runner.invoke(app, ["dpo", *map(str, args)])


def one_line(result) -> str:
    return " ".join(result.output.split())


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a digest of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def loss_steps(out: Path) -> list[int]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if "loss" in row]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, testbed_path):
    """``(data, run)``: 16 testbed pairs and a finished 2-step run on them."""
    root = tmp_path_factory.mktemp("dpo-outputs")
    data = root / "pairs.jsonl"
    made = runner.invoke(app, ["testbed", "preferences", "--output", str(data), "--n", "16"])
    assert made.exit_code == 0, made.output
    result = dpo("--data", data, "--output-dir", root / "run", "--max-steps", 2, *FAST)
    assert result.exit_code == 0, result.output
    return data, root / "run"


@pytest.fixture
def run_copy(finished, tmp_path):
    """A copy of the finished run, to be refused or changed."""
    data, run = finished
    shutil.copytree(run, tmp_path / "run")
    return data, tmp_path / "run"


def _no_model(*_args, **_kwargs):
    raise RuntimeError("a model was loaded")


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails loudly: a refusal that passes came before any model was loaded."""
    monkeypatch.setattr("alignkit.dpo.trainer.load_policy", _no_model)
    monkeypatch.setattr("alignkit.dpo.model_io.load_policy", _no_model)


# --------------------------------------------------------------------- a directory, one run


def test_a_rerun_into_a_finished_run_is_refused_and_changes_nothing(run_copy, no_model):
    """It used to overwrite final/, append to metrics.jsonl and keep the old checkpoints."""
    data, run = run_copy
    before = snapshot(run)
    result = dpo("--data", data, "--output-dir", run, "--max-steps", 2, *FAST)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    message = one_line(result)
    assert f"output_dir '{run}' holds another run" in message
    assert "--resume" in message and "--overwrite" in message
    assert snapshot(run) == before


def test_overwrite_replaces_the_run_files_and_keeps_other_files(run_copy):
    data, run = run_copy
    (run / "notes.txt").write_text("mine\n")
    result = dpo("--data", data, "--output-dir", run, "--max-steps", 3, "--overwrite", *FAST)
    assert result.exit_code == 0, result.output
    assert loss_steps(run) == [1, 2, 3]  # no row of the replaced run
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000003"]
    assert json.loads((run / "run.json").read_text())["total"] == {"max_steps": 3}
    assert (run / "notes.txt").read_text() == "mine\n"


@pytest.mark.parametrize("steps", [1, 3])
def test_resume_with_another_total_is_refused(run_copy, no_model, steps):
    """--resume --max-steps 20 of a 500-step run loaded step 500, showed 500/20 and exited 0."""
    data, run = run_copy
    before = snapshot(run)
    result = dpo("--data", data, "--output-dir", run, "--max-steps", steps, "--resume", *FAST)
    assert result.exit_code == 2, result.output
    assert f"started with max_steps 2, not max_steps {steps}" in one_line(result)
    assert snapshot(run) == before


@pytest.mark.parametrize("change", ["learning_rate", "data"])
def test_resume_with_other_settings_is_refused(run_copy, no_model, tmp_path, change):
    data, run = run_copy
    args = ["--data", data]
    if change == "data":  # the same name, other content
        other = tmp_path / "pairs.jsonl"
        other.write_text("".join(data.read_text().splitlines(keepends=True)[:8]))
        args = ["--data", other]
    else:
        args += ["--learning-rate", "1e-3"]
    before = snapshot(run)
    result = dpo(*args, "--output-dir", run, "--max-steps", 2, "--resume", *FAST)
    assert result.exit_code == 2, result.output
    message = one_line(result)
    assert "started with other settings" in message
    expected = "learning_rate 5e-06, not 0.001" if change == "learning_rate" else "data:"
    assert expected in message
    assert snapshot(run) == before


def test_the_sft_stage_model_is_named_relative_to_its_run(tmp_path):
    """A run with an SFT stage trains DPO from ``hf:OUTPUT_DIR/sft``: a copy of the run folder
    elsewhere has the same settings (the 2-process LoRA test of tests/test_dpo_sharded.py
    resumes such a copy), a model outside the folder keeps its path."""
    from alignkit.dpo.outputs import run_settings, settings_changes

    data = tmp_path / "pairs.jsonl"
    data.write_text("")

    def settings(run: Path, model: str | None = None) -> dict:
        model = model or f"hf:{run / 'sft'}"
        return run_settings(DPOConfig(model=model, data=str(data), output_dir=str(run)))

    here, there = settings(tmp_path / "a" / "run"), settings(tmp_path / "b" / "run")
    assert here == there and here["model"] == "hf:<run>/sft"
    outside = settings(tmp_path / "a" / "run", f"hf:{tmp_path / 'a' / 'sft'}")
    assert outside["model"] == f"hf:{tmp_path / 'a' / 'sft'}"
    assert settings(tmp_path / "run", "testbed")["model"] == "testbed"
    # a run recorded by an older alignkit (the absolute path) still resumes
    older = {**here, "model": f"hf:{tmp_path / 'a' / 'run' / 'sft'}"}
    assert settings_changes(older, here) == []
    assert settings_changes({**here, "model": "hf:/elsewhere/model"}, here)


def test_resume_with_nothing_to_resume_is_refused(finished, tmp_path, monkeypatch):
    """--resume used to start a fresh run silently. resume: true in a config file still starts
    one: one file serves the first run and every rerun (what the safety launcher writes)."""
    data, _ = finished
    out = tmp_path / "empty"
    with monkeypatch.context() as patched:
        patched.setattr("alignkit.dpo.trainer.load_policy", _no_model)
        result = dpo("--data", data, "--output-dir", out, "--max-steps", 2, "--resume", *FAST)
    assert result.exit_code == 2, result.output
    assert f"nothing to resume: '{out}' holds no alignkit dpo run" in one_line(result)
    assert not out.exists()
    config = tmp_path / "dpo.yaml"
    config.write_text("resume: true\nmax_steps: 2\n")
    result = dpo("--config", config, "--data", data, "--output-dir", out, *FAST)
    assert result.exit_code == 0, result.output
    assert loss_steps(out) == [1, 2]


def test_resume_of_a_finished_run_says_so_and_trains_nothing(run_copy, no_model):
    data, run = run_copy
    before = snapshot(run)
    result = dpo("--data", data, "--output-dir", run, "--max-steps", 2, "--resume", *FAST)
    assert result.exit_code == 0, result.output
    assert "holds a finished run" in one_line(result)
    assert snapshot(run) == before


def test_resume_after_a_kill_drops_the_torn_metrics_line(finished, tmp_path):
    """A run killed after its step-2 checkpoint, mid-way through writing a metrics row."""
    data, _ = finished
    run = tmp_path / "run"
    args = ["--data", data, "--output-dir", run, "--max-steps", 4, "--save-steps", 2, *FAST]
    assert dpo(*args).exit_code == 0
    for name in ("final", "checkpoints/step-000004"):
        shutil.rmtree(run / name)
    (run / "summary.json").unlink()
    rows = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(rows[:3]) + '\n{"step": 4, "lo')
    result = dpo(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert loss_steps(run) == [1, 2, 3, 4]


# ------------------------------------------------------------------------------ bad paths


def test_an_output_dir_that_is_a_file_is_refused_before_loading_a_model(
    finished, tmp_path, no_model
):
    """It used to fail with FileExistsError (exit 1) after loading the model."""
    data, _ = finished
    taken = tmp_path / "taken"
    taken.write_text("a file\n")
    for out in (taken, taken / "run"):
        result = dpo("--data", data, "--output-dir", out, "--max-steps", 2, *FAST)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert f"'{taken}'" in one_line(result) and "is a file" in one_line(result)
    assert taken.read_text() == "a file\n"


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs a /proc file system")
def test_an_output_dir_under_proc_is_refused_before_loading_a_model(finished, no_model):
    data, _ = finished
    result = dpo("--data", data, "--output-dir", "/proc/x", "--max-steps", 2, *FAST)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "cannot create or write output_dir '/proc/x'" in one_line(result)


# ------------------------------------------------------------------- the trainer as a library


def _trainer(data: Path, out: Path, **options) -> DPOTrainer:
    config = DPOConfig(data=data, output_dir=out, batch_size=2, kl_samples=0, device="cpu")
    return DPOTrainer("testbed", config.model_copy(update=options))


def test_a_fresh_library_run_replaces_the_earlier_runs_metrics_and_checkpoints(finished, tmp_path):
    """What the safety rounds do after an interrupted round: start it over with resume=False.
    The earlier run's later checkpoint used to survive (its own were rotated out) and its
    metric rows stayed in the file."""
    data, _ = finished
    _trainer(data, tmp_path, max_steps=4, save_steps=2).train()
    _trainer(data, tmp_path, max_steps=2, save_steps=1).train()
    assert loss_steps(tmp_path) == [1, 2]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-000001",
        "step-000002",
    ]


def test_the_trainer_refuses_a_checkpoint_of_a_run_with_another_total(finished, tmp_path):
    data, _ = finished
    _trainer(data, tmp_path, max_steps=4, save_steps=2).train()
    with pytest.raises(ConfigError, match="its run trains 4 steps, this one 2"):
        _trainer(data, tmp_path, max_steps=2, resume=True).train()


def test_a_model_save_that_dies_midway_leaves_no_half_model(finished, tmp_path):
    data, _ = finished
    trainer = _trainer(data, tmp_path, max_steps=1)

    def die(*_args, **_kwargs):
        raise KeyboardInterrupt  # killed after the weights, before the tokenizer

    trainer.tokenizer.save_pretrained = die
    with pytest.raises(KeyboardInterrupt):
        trainer.save_model()
    assert not (tmp_path / "final").exists()


# ------------------------------------------------------------------- checkpoints and metrics


def test_a_checkpoint_replaced_by_a_killed_save_is_never_half_deleted(tmp_path, monkeypatch):
    """Saving the same step twice (the last step, with save_steps) removed the old checkpoint
    file by file under its own name: a kill then left trainer_state.pt without its weights,
    which a resume took for a checkpoint."""

    def weights(value):
        return lambda d: save_file({"w": torch.full((2,), float(value))}, d / "weights.safetensors")

    save_checkpoint(tmp_path, 2, weights(1), {"n": 1})
    real = shutil.rmtree

    def killed_midway(path, *args, **kwargs):
        files = sorted(Path(path).glob("*")) if Path(path).is_dir() else []
        if not files:
            return real(path, *args, **kwargs)
        (files[-1].unlink() if files[-1].is_file() else real(files[-1]))
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, weights(2), {"n": 2})
    monkeypatch.undo()
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint is not None and (checkpoint / "weights.safetensors").exists()
    assert load_state(checkpoint)["step"] == 2


def test_trim_metrics_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.7}\n{"step": 2, "loss": 0.6}\n{"step": 3, "lo')
    trim_metrics(path, 2)
    assert path.read_text() == '{"step": 1, "loss": 0.7}\n{"step": 2, "loss": 0.6}\n'
