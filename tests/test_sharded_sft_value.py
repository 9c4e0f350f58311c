"""SFT (``alignkit dpo --sft-epochs``) and reward / cost models (``alignkit safety train-rm``) in
two CPU processes (gloo), data parallel and FSDP2 through accelerate, against one process with
the same global batch: the same losses step by step, saved weights, held-out figures, and under
FSDP each process held about half of the parameters (the record of tests/fsdp_on_cpu.py).

SFT's global batch is ``--batch-size`` per process (8 in one process, 4 in each of two), as for
the DPO trainer that shares its config; a value model's ``--batch-size`` is the global batch
(pairs per step) whatever the number of processes, and a last batch that does not split evenly
is weighted pair by pair.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from launching import fsdp_env, fsdp_records, torchrun
from safetensors.torch import load_file
from tracker_logs import tensorboard_scalars

from alignkit.errors import ConfigError
from alignkit.testbed import World
from alignkit.testbed.preferences import preference_pairs, write_jsonl

SFT_STEPS = 3  # 24 pairs in global batches of 8


def _run(args: list[str], out: Path, processes: str | None = None) -> Path:
    """``alignkit ARGS`` in one process, or in two: ``processes`` "ddp" (torchrun) or "fsdp"
    (the environment of accelerate launch with examples/accelerate/fsdp.yaml)."""
    env = {"OMP_NUM_THREADS": "1", **os.environ}  # tiny models: threads only contend
    if processes is None:
        command = [sys.executable, "-m", "alignkit", *args]
    else:
        if processes == "fsdp":
            env.update(fsdp_env(ALIGNKIT_FSDP_RECORD=str(out / "fsdp-record")))
        command = torchrun(*args, fsdp=processes == "fsdp")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def _assert_close_tensors(mine: dict, theirs: dict, atol: float) -> None:
    assert sorted(mine) == sorted(theirs) and mine
    for key, value in theirs.items():
        assert mine[key].shape == value.shape, key
        torch.testing.assert_close(mine[key], value, atol=atol, rtol=0, msg=key)


def _assert_sharded(out: Path) -> None:
    """Each of the two processes held part of the first model accelerate prepared, together
    all of it."""
    first = [rank[0] for rank in fsdp_records(out)]
    assert len(first) == 2 and first[0]["trainable"]
    assert sum(r["local"] for r in first) == first[0]["total"] > 0
    assert all(r["local"] <= 0.51 * r["total"] for r in first)


# ------------------------------------------------------------------------------------------ SFT


class _SFTRuns:
    def __init__(self, root: Path, testbed: Path) -> None:
        self.root = root
        data, held = root / "prefs.jsonl", root / "eval.jsonl"
        write_jsonl(preference_pairs(World(0), 24, split="train", seed=0), data)
        write_jsonl(preference_pairs(World(0), 8, split="heldout", seed=1), held)
        self.common = [
            "dpo", "--model", f"hf:{testbed}", "--data", str(data), "--eval-data", str(held),
            "--sft-epochs", "1", "--max-steps", "1", "--learning-rate", "1e-3",
            "--kl-samples", "0", "--device", "cpu", "--report-to", "tensorboard",
        ]  # fmt: skip
        self.one = self.run(None)

    def run(self, processes: str | None) -> Path:
        out = self.root / (processes or "one")
        per_process = "8" if processes is None else "4"
        return _run([*self.common, "--batch-size", per_process, "--output-dir", str(out)], out,
                    processes)  # fmt: skip


@pytest.fixture(scope="module")
def sft(tmp_path_factory, testbed_path):
    """The one-process reference: SFT (3 steps of 8 pairs), then one DPO step and evaluation."""
    return _SFTRuns(tmp_path_factory.mktemp("sft"), testbed_path)


def _sft_losses(out: Path) -> list[float]:
    logged = tensorboard_scalars(out / "tensorboard" / "sft")["loss"]
    return [logged[step] for step in sorted(logged)]


def _dpo_rows(out: Path) -> list[dict]:
    """The DPO stage's metrics.jsonl, less its throughput (a wall-clock figure)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "tokens_per_second"} for row in rows]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("processes", ["ddp", "fsdp"])
def test_sft_matches_one_process(sft, processes):
    two = sft.run(processes)
    one_losses, two_losses = _sft_losses(sft.one), _sft_losses(two)
    assert len(one_losses) == len(two_losses) == SFT_STEPS
    assert two_losses == pytest.approx(one_losses, rel=1e-5)  # measured: 1.4e-7 at most
    _assert_close_tensors(
        load_file(two / "sft" / "model.safetensors"),
        load_file(sft.one / "sft" / "model.safetensors"),
        atol=2e-4,  # measured: 5.4e-5 (Adam's first steps at lr 1e-3 magnify reduction noise)
    )
    config = json.loads((two / "sft" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # not the FSDP wrapper's class
    # DPO started from the saved SFT model in every process: its step and held-out figures too
    # (its step's reward figures compare a policy with itself: ties, not compared)
    (step_one, eval_one), (step_two, eval_two) = _dpo_rows(sft.one), _dpo_rows(two)
    for key in ("loss", "nll", "logps/chosen", "logps/rejected", "grad_norm"):
        assert step_two[key] == pytest.approx(step_one[key], rel=1e-5), key
    assert sorted(eval_two) == sorted(eval_one) and abs(eval_one["eval/rewards/margins"]) > 1e-3
    assert eval_two == pytest.approx(eval_one, abs=1e-4)  # measured: 2e-5
    if processes == "fsdp":
        _assert_sharded(two)


# --------------------------------------------------------------------------- reward / cost


class _ValueRuns:
    LEARNING_RATE = {"cost": "3e-4", "reward": "1e-4"}  # held-out figures short of 100%

    def __init__(self, root: Path) -> None:
        self.root = root
        self.one: dict[tuple[str, int], Path] = {}

    def run(self, kind: str, pairs: int, processes: str | None, *extra: str) -> Path:
        out = self.root / f"{kind}-{pairs}-{processes or 'one'}{''.join(extra)}"
        settings = self.root / f"pairs-{pairs}.yaml"  # torchrun would take --n as its own
        settings.write_text(f"n: {pairs}\n")  # training pairs; n // 2 held-out ones
        args = [
            "safety", "train-rm", "--config", str(settings), "--kind", kind,
            "--batch-size", "8", "--learning-rate", self.LEARNING_RATE[kind],
            "--device", "cpu", "--output-dir", str(out), *extra,
        ]  # fmt: skip
        return _run(args, out, processes)

    def single(self, kind: str, pairs: int) -> Path:
        if (kind, pairs) not in self.one:
            self.one[kind, pairs] = self.run(kind, pairs, None)
        return self.one[kind, pairs]


@pytest.fixture(scope="module")
def value_runs(tmp_path_factory, testbed_path):
    return _ValueRuns(tmp_path_factory.mktemp("value"))


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("kind", "pairs", "processes"),
    [("cost", 19, "ddp"), ("cost", 19, "fsdp"), ("reward", 17, "fsdp")],
    ids=["cost-ddp", "cost-fsdp", "reward-fsdp"],
)
def test_value_model_matches_one_process(value_runs, kind, pairs, processes):
    """19 pairs in batches of 8 end with 3 pairs, split 2 and 1: each share weighs its pairs; 17
    end with one pair, and the second process, without a pair, must count for nothing."""
    from alignkit.safety.data import testbed_value_pairs
    from alignkit.safety.value_model import ValueModel

    one, two = value_runs.single(kind, pairs), value_runs.run(kind, pairs, processes)
    mine, theirs = _metrics(two), _metrics(one)
    assert len(mine["train"]) == len(theirs["train"]) == 3
    for field in ("loss", "accuracy"):
        got = [row[field] for row in mine["train"]]
        assert got == pytest.approx([row[field] for row in theirs["train"]], rel=1e-5)
    # held-out pairwise (and for a cost model sign) accuracy, per category, with counts
    assert mine["eval"] == theirs["eval"] and mine["eval"]["n"] == pairs // 2
    assert 0 < theirs["eval"]["accuracy"] < 1 or 0 < theirs["eval"].get("sign_accuracy", 0) < 1
    _assert_close_tensors(
        load_file(two / "model.safetensors"), load_file(one / "model.safetensors"), atol=1e-4
    )  # measured: 3e-6
    # the saved model loads, is the kind it was trained as, and scores as the one-process one
    loaded = {run: ValueModel.load(run, device="cpu") for run in (one, two)}
    assert loaded[two].kind == kind
    dimension = "harmless" if kind == "cost" else "helpful"
    held = testbed_value_pairs(8, dimension, "heldout", 0)
    prompts, answers = [p["prompt"] for p in held], [p["rejected"] for p in held]
    scores = {run: model.score(prompts, answers) for run, model in loaded.items()}
    assert scores[two] == pytest.approx(scores[one], abs=1e-4)
    if processes == "fsdp":
        _assert_sharded(two)


@pytest.mark.timeout(300)
def test_lora_value_model_under_fsdp_matches_one_process(value_runs):
    """A LoRA adapter and a score head trained on a sharded backbone: the same losses, and the
    saved model (the gathered adapter merged into an unsharded copy) is the one-process one."""
    one, two = (value_runs.run("reward", 17, processes, "--lora") for processes in (None, "fsdp"))
    _assert_sharded(two)
    mine, theirs = _metrics(two), _metrics(one)
    assert [row["loss"] for row in mine["train"]] == pytest.approx(
        [row["loss"] for row in theirs["train"]], rel=1e-5
    )
    assert mine["eval"] == theirs["eval"]
    merged = load_file(two / "model.safetensors")
    assert not [key for key in merged if "lora_" in key or "base_layer" in key]
    _assert_close_tensors(merged, load_file(one / "model.safetensors"), atol=1e-4)


def test_share_of_a_global_batch():
    """Every N-th item from the rank on, and the fraction of the batch it is; a process left
    without an item runs the first one with weight 0."""
    from alignkit.parallel import share

    def process(rank: int) -> SimpleNamespace:
        return SimpleNamespace(process_index=rank, num_processes=2)

    assert share("abc", process(0)) == (["a", "c"], 2 / 3)
    assert share("abc", process(1)) == (["b"], 1 / 3)
    assert share("a", process(1)) == (["a"], 0.0)


# ------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("kind", "fsdp2", "accumulation", "message"),
    [
        (DistributedType.DEEPSPEED, False, 1, "SFT does not train under DeepSpeed"),
        (DistributedType.FSDP, False, 1, "SFT supports FSDP2 only"),
        (DistributedType.MULTI_CPU, False, 4, "SFT takes one optimizer step per global batch"),
    ],
)
def test_training_accelerator_refuses(monkeypatch, kind, fsdp2, accumulation, message):
    import alignkit.parallel as parallel

    made = SimpleNamespace(
        distributed_type=kind, is_fsdp2=fsdp2, gradient_accumulation_steps=accumulation
    )
    monkeypatch.setattr(parallel, "Accelerator", lambda **_: made)
    with pytest.raises(ConfigError, match=message):
        parallel.training_accelerator("cpu", "SFT")
    made.distributed_type, made.gradient_accumulation_steps = DistributedType.MULTI_CPU, 1
    assert parallel.training_accelerator("cpu", "SFT") is made
