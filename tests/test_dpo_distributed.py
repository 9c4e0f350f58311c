"""Two CPU processes (gloo DDP through accelerate) match one process with the same global batch:
the same losses step by step.

The processes are started with ``torchrun`` (what ``accelerate launch`` runs on GPUs; its CPU
path needs MPI); the trainer's ``Accelerator`` picks up the distributed environment either way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from servers import free_port
from tracker_logs import tensorboard_scalars

from alignkit.testbed import World
from alignkit.testbed.preferences import preference_pairs, write_jsonl


def _losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "extra",
    [[], ["--adaptive-beta", "--adaptive-filter", "0.75"]],
    ids=["dpo", "beta-dpo-filtered"],
)
def test_two_processes_match_one(tmp_path, testbed_path, extra):
    data = tmp_path / "prefs.jsonl"
    write_jsonl(preference_pairs(World(0), 96, split="train", seed=0), data)
    common = [
        "dpo",
        "--model",
        f"hf:{testbed_path}",
        "--data",
        str(data),
        "--max-steps",
        "3",
        "--learning-rate",
        "1e-3",
        "--kl-samples",
        "0",
        "--device",
        "cpu",
    ]
    single = tmp_path / "single"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "alignkit",
            *common,
            "--batch-size",
            "8",
            "--output-dir",
            str(single),
        ],
        check=True,
        capture_output=True,
    )
    double = tmp_path / "double"
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "alignkit",
        *common,
        "--batch-size",
        "4",
        "--output-dir",
        str(double),
        "--report-to",
        "tensorboard",
    ]
    result = subprocess.run(launch, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = _losses(single), _losses(double)
    assert len(one) == len(two) >= 3
    assert two == pytest.approx(one, abs=1e-4)
    # the first process alone logs: one event file, with the losses both processes averaged
    (events,) = (double / "tensorboard" / "dpo").glob("events.out.tfevents.*")
    logged = tensorboard_scalars(events.parent)["loss"]
    assert [logged[step] for step in sorted(logged)] == pytest.approx(two, rel=1e-6)
