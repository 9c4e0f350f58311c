"""DPO under FSDP2 through accelerate, and the example accelerate configs.

Two CPU processes (gloo) shard the policy and the frozen reference with accelerate's FSDP2
(``fully_shard``) and match one process with the same global batch: the same losses step by step,
the same evaluation, checkpoints in the one-process format, and a final model that loads. The
processes get the environment ``accelerate launch --config_file examples/accelerate/fsdp.yaml``
sets (built by accelerate's own launch code) and run through ``tests/fsdp_on_cpu.py``, which lifts
accelerate's one GPU-only gate (see there). deepspeed is not installed: its config is validated
through accelerate's launch code and ``DeepSpeedPlugin`` without importing it.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from launching import EXAMPLES, FSDP_CONFIG, fsdp_env, fsdp_records, launch_args, torchrun
from safetensors.torch import load_file
from servers import free_port

from alignkit.dpo.sharding import check_engine
from alignkit.errors import ConfigError
from alignkit.testbed import World
from alignkit.testbed.preferences import preference_pairs, write_jsonl

ZERO3_CONFIG = EXAMPLES / "deepspeed-zero3.yaml"
STEPS = 3
LORA = ("--lora", "--sft-epochs", "1")


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _losses(out: Path) -> list[float]:
    return [row["loss"] for row in _rows(out) if "loss" in row]


class _Runs:
    def __init__(self, root: Path, testbed: Path) -> None:
        self.root = root
        self.data, self.eval_data = root / "prefs.jsonl", root / "eval.jsonl"
        write_jsonl(preference_pairs(World(0), 96, split="train", seed=0), self.data)
        write_jsonl(preference_pairs(World(0), 16, split="heldout", seed=1), self.eval_data)
        self.common = [
            "dpo", "--model", f"hf:{testbed}", "--data", str(self.data),
            "--eval-data", str(self.eval_data), "--kl-samples", "4", "--max-steps", str(STEPS),
            "--learning-rate", "1e-3", "--device", "cpu", "--save-steps", "1",
        ]  # fmt: skip

    def single(self, out: Path, *extra: str) -> Path:
        command = [sys.executable, "-m", "alignkit", *self.common, "--batch-size", "8"]
        result = subprocess.run(
            [*command, "--output-dir", str(out), *extra], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return out

    def fsdp(self, out: Path, *extra: str, cache: Path | None = None) -> Path:
        env = fsdp_env(ALIGNKIT_FSDP_RECORD=str(out / "fsdp-record"))
        if cache is not None:
            env["ALIGNKIT_CACHE"] = str(cache)
        launch = torchrun(
            *self.common, "--batch-size", "4", "--output-dir", str(out), *extra, fsdp=True
        )
        result = subprocess.run(launch, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-4000:]
        return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, testbed_path):
    """One process with batch 8, and two FSDP processes with batch 4 each, the reference sharded
    too (no precomputed log-probs) and the policy's layers compiled after sharding (``--compile``:
    FSDP2's hooks stay outside the compiled graphs); both checkpoint every step."""
    made = _Runs(tmp_path_factory.mktemp("sharded"), testbed_path)
    made.one = made.single(made.root / "single", "--no-precompute-ref")
    made.two = made.fsdp(made.root / "fsdp", "--no-precompute-ref", "--compile")
    return made


def _assert_close_tensors(mine: dict, theirs: dict, atol: float) -> None:
    assert sorted(mine) == sorted(theirs)
    for key, value in theirs.items():
        assert mine[key].shape == value.shape, key
        torch.testing.assert_close(mine[key], value, atol=atol, rtol=0, msg=key)


@pytest.mark.timeout(600)
def test_fsdp_matches_one_process(runs):
    # sharded, not replicated: each process holds half of the policy and of the reference
    records = fsdp_records(runs.two)
    assert len(records) == 2
    for kind in (True, False):  # the policy, then the frozen reference
        mine = [next(r for r in rank if r["trainable"] is kind) for rank in records]
        assert sum(r["local"] for r in mine) == mine[0]["total"] > 0
        assert all(r["local"] < r["total"] for r in mine)
    one, two = _losses(runs.one), _losses(runs.two)
    assert len(one) == len(two) == STEPS
    assert two == pytest.approx(one, abs=1e-4)  # measured: 2e-7
    # evaluation (reward metrics and the KL estimate from sampled completions) runs sharded too
    eval_one, eval_two = _rows(runs.one)[-1], _rows(runs.two)[-1]
    assert "eval/kl" in eval_one and sorted(eval_one) == sorted(eval_two)
    assert eval_two == pytest.approx(eval_one, abs=1e-4)

    # the checkpoint is gathered into the one-process format: weights and optimizer state
    last = f"checkpoints/step-{STEPS:06d}"
    _assert_close_tensors(
        load_file(runs.two / last / "weights.safetensors"),
        load_file(runs.one / last / "weights.safetensors"),
        atol=1e-4,  # measured: 8e-6 (Adam's first steps magnify the reduction-order noise)
    )
    state_one, state_two = (
        torch.load(run / last / "trainer_state.pt", weights_only=True)["optimizer"]
        for run in (runs.one, runs.two)
    )
    assert state_two["param_groups"] == state_one["param_groups"]
    assert sorted(state_two["state"]) == sorted(state_one["state"])
    for index, moments in state_one["state"].items():
        _assert_close_tensors(state_two["state"][index], moments, atol=1e-5)  # measured: 3e-8

    # the final model: the same files and tensors as one process writes, and it loads
    from alignkit.dpo import DPOTrainer

    files_one = load_file(runs.one / "final" / "model.safetensors")
    _assert_close_tensors(load_file(runs.two / "final" / "model.safetensors"), files_one, 1e-4)
    config = json.loads((runs.two / "final" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # not the FSDP wrapper's class
    model, _ = DPOTrainer.load_model(runs.two / "final", device="cpu")
    reference, _ = DPOTrainer.load_model(runs.one / "final", device="cpu")
    _assert_close_tensors(model.state_dict(), reference.state_dict(), atol=1e-4)


def _cut_last_step(run: Path, out: Path) -> None:
    """A copy of ``run`` at ``out`` as a run killed after its last but one checkpoint left it."""
    shutil.copytree(run, out)
    shutil.rmtree(out / f"checkpoints/step-{STEPS:06d}")
    shutil.rmtree(out / "final")
    (out / "summary.json").unlink()
    shutil.rmtree(out / "fsdp-record")
    rows = [row for row in _rows(out) if row["step"] < STEPS]
    rows[0]["resumed-from-here"] = True  # kept by a resume; a fresh start would rewrite the file
    (out / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.timeout(600)
def test_fsdp_resumes_its_checkpoint(runs, tmp_path):
    """A run cut after step 2 resumes under FSDP (the gathered weights and optimizer state are
    scattered back into the shards) and ends with the uninterrupted run's weights."""
    out = tmp_path / "resumed"
    _cut_last_step(runs.two, out)
    runs.fsdp(out, "--no-precompute-ref", "--compile", "--resume")
    assert _rows(out)[0].get("resumed-from-here")
    assert _losses(out) == pytest.approx(_losses(runs.two), abs=1e-6)  # measured: equal
    _assert_close_tensors(
        load_file(out / "final" / "model.safetensors"),
        load_file(runs.two / "final" / "model.safetensors"),
        atol=1e-6,  # measured: equal
    )


@pytest.mark.timeout(600)
def test_fsdp_precomputes_the_reference_sharded(runs, tmp_path):
    """The default: reference log-probs precomputed once by the sharded policy (an empty cache,
    so they are computed here), no reference model kept."""
    out = runs.fsdp(tmp_path / "precomputed", cache=tmp_path / "cache")
    assert list((tmp_path / "cache" / "ref_logps").glob("*.safetensors"))
    assert all([r["trainable"] for r in rank] == [True] for rank in fsdp_records(out))
    assert _losses(out) == pytest.approx(_losses(runs.one), abs=1e-4)  # measured: 2e-7


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory, testbed_path):
    """LoRA SFT (merged into the model DPO starts from), then DPO with a new LoRA adapter (its
    reference: the adapter switched off), in one process and in two FSDP processes."""
    made = _Runs(tmp_path_factory.mktemp("sharded-lora"), testbed_path)
    made.one = made.single(made.root / "single", *LORA)
    made.two = made.fsdp(made.root / "fsdp", *LORA)
    return made


@pytest.mark.timeout(600)
def test_fsdp_trains_lora_as_one_process(lora_runs, tmp_path):
    one, two = lora_runs.one, lora_runs.two
    records = fsdp_records(two)  # the SFT model, then the DPO policy: both sharded
    assert [len(rank) for rank in records] == [2, 2]
    for first, second in zip(*records, strict=True):
        assert first["local"] + second["local"] == first["total"] > second["local"]
    # SFT's adapter was gathered and merged into an unsharded copy: the one-process model
    _assert_close_tensors(
        load_file(two / "sft" / "model.safetensors"),
        load_file(one / "sft" / "model.safetensors"),
        atol=1e-4,
    )
    assert _losses(two) == pytest.approx(_losses(one), abs=1e-4)
    assert _rows(two)[-1] == pytest.approx(_rows(one)[-1], abs=1e-4)  # evaluation, KL
    # checkpoints and the final adapter hold the adapter only, as one process writes them
    last = f"checkpoints/step-{STEPS:06d}"
    weights = load_file(two / last / "weights.safetensors")
    assert weights and all("lora_" in key for key in weights)
    _assert_close_tensors(weights, load_file(one / last / "weights.safetensors"), atol=1e-4)
    state_one, state_two = (
        torch.load(run / last / "trainer_state.pt", weights_only=True)["optimizer"]
        for run in (one, two)
    )
    assert state_two["param_groups"] == state_one["param_groups"]
    for index, moments in state_one["state"].items():
        _assert_close_tensors(state_two["state"][index], moments, atol=1e-5)
    adapter = "final/adapter_model.safetensors"
    _assert_close_tensors(load_file(two / adapter), load_file(one / adapter), atol=1e-4)

    # a copy cut after step 2 and resumed (its DPO stage trains the copy's own SFT model): the
    # adapter is scattered back into the shards
    out = tmp_path / "resumed"
    _cut_last_step(two, out)
    lora_runs.fsdp(out, *LORA, "--resume")
    assert _rows(out)[0].get("resumed-from-here")
    assert _losses(out) == pytest.approx(_losses(two), abs=1e-6)
    _assert_close_tensors(load_file(out / adapter), load_file(two / adapter), atol=1e-6)


def test_an_adapter_is_gathered_alone_and_merged_into_a_copy(testbed_path, monkeypatch):
    """In one gloo process: checkpoints gather only what trains (the frozen base of a large model
    never comes to the host for them), and the merged copy equals peft's own merge of an
    unsharded model, while the sharded model keeps its adapter."""
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForCausalLM

    from alignkit.dpo.sharding import gather_weights, merged_copy

    def adapted():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(testbed_path)
        lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
        return get_peft_model(model, lora)

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        sharded, plain = adapted(), adapted()
        fully_shard(sharded)
        accelerator = SimpleNamespace(
            distributed_type=DistributedType.FSDP, is_main_process=True, unwrap_model=lambda m: m
        )
        adapter = gather_weights(accelerator, sharded, trainable_only=True)
        assert adapter and all("lora_" in key for key in adapter)
        assert len(adapter) == sum(p.requires_grad for p in plain.parameters())
        merged = merged_copy(sharded, gather_weights(accelerator, sharded))
        expected = plain.merge_and_unload().state_dict()
        _assert_close_tensors(merged.state_dict(), expected, atol=1e-6)
        assert type(merged) is type(plain.get_base_model())  # not FSDP's subclass
        assert hasattr(sharded, "peft_config")  # the sharded model is untouched
    finally:
        dist.destroy_process_group()


def test_a_wrapped_lora_policy_is_saved_merged(testbed_path, tmp_path):
    """``save_model(merge_lora=True)`` of a policy behind a data-parallel wrapper (which hides
    ``peft_config``) writes the merged model, not the adapter; the trainer's own model keeps
    its adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.dpo import DPOTrainer

    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(testbed_path), lora)
    trainer = DPOTrainer.__new__(DPOTrainer)  # what save_model reads, without a training run
    trainer.model = SimpleNamespace(module=policy)  # DDP's wrapper: no peft_config
    trainer.tokenizer = AutoTokenizer.from_pretrained(testbed_path)
    trainer.output_dir = tmp_path
    trainer.accelerator = SimpleNamespace(
        distributed_type=DistributedType.MULTI_CPU, is_main_process=True,
        wait_for_everyone=lambda: None, unwrap_model=lambda wrapped: wrapped.module,
    )  # fmt: skip
    path = trainer.save_model(merge_lora=True)
    assert not (path / "adapter_config.json").exists()
    saved, _ = DPOTrainer.load_model(path, device="cpu")
    expected = copy.deepcopy(policy).merge_and_unload()
    _assert_close_tensors(saved.state_dict(), expected.state_dict(), atol=1e-6)
    assert hasattr(policy, "peft_config")


def test_fsdp_example_config(testbed_path, monkeypatch):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import CPUOffloadPolicy
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from transformers import AutoModelForCausalLM

    config = load_config_from_file(str(FSDP_CONFIG))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == DistributedType.FSDP
    fsdp = config.fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    # what accelerate launch hands the processes, and the plugin the trainer's Accelerator builds
    env = fsdp_env()
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    assert not isinstance(plugin.cpu_offload, CPUOffloadPolicy)
    model = AutoModelForCausalLM.from_pretrained(testbed_path)
    plugin.set_auto_wrap_policy(model)  # each decoder layer becomes one shard unit
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]


def test_deepspeed_example_config(monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    config = load_config_from_file(str(ZERO3_CONFIG))
    assert config.distributed_type == DistributedType.DEEPSPEED
    assert config.deepspeed_config["zero_stage"] == 3
    args, defaults = launch_args(ZERO3_CONFIG)
    assert args.use_deepspeed and args.zero_stage == 3 and args.num_processes == 2
    # accelerate launch names the config's DeepSpeed fields so (launch_command does it)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    args.main_process_port = free_port()
    _, env = prepare_deepspeed_cmd_env(args)
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()  # builds and checks the DeepSpeed config; deepspeed not imported
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert plugin.zero3_init_flag is True
    assert "deepspeed" not in sys.modules


@pytest.mark.parametrize(
    ("kind", "fsdp2", "message"),
    [
        (DistributedType.DEEPSPEED, False, "does not train under DeepSpeed"),
        (DistributedType.FSDP, False, "fsdp_version: 2"),
    ],
)
def test_trainer_refuses_what_it_cannot_checkpoint(kind, fsdp2, message):
    accelerator = SimpleNamespace(distributed_type=kind, is_fsdp2=fsdp2)
    with pytest.raises(ConfigError, match=message):
        check_engine(accelerator)
    for fine in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        check_engine(SimpleNamespace(distributed_type=fine, is_fsdp2=False))
    check_engine(SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True))
