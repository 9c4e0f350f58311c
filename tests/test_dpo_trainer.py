"""DPOTrainer on the testbed model: log-probs, checkpoints and resume, LoRA, saving, the effect."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.dpo import DPOConfig, DPOTrainer, TrainingError, get_log_probs
from alignkit.testbed import World
from alignkit.testbed.preferences import preference_pairs, write_jsonl

FAST = {"batch_size": 8, "learning_rate": 5e-4, "beta": 0.1, "kl_samples": 0, "device": "cpu"}


@pytest.fixture(scope="module")
def prefs(tmp_path_factory) -> dict[str, Path]:
    world = World(0)
    root = tmp_path_factory.mktemp("prefs")
    paths = {"train": root / "train.jsonl", "eval": root / "eval.jsonl"}
    write_jsonl(preference_pairs(world, 512, split="train", seed=0), paths["train"])
    write_jsonl(preference_pairs(world, 64, split="heldout", seed=1), paths["eval"])
    return paths


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "model.safetensors")


def test_get_log_probs_equals_one_row_at_a_time(prefs):
    """Padded, batched, logits only where completions are == a plain unpadded forward."""
    trainer = DPOTrainer("testbed", DPOConfig(data=prefs["train"], **FAST))
    items = [trainer.train_dataset[i] for i in range(6)]
    batched = get_log_probs(trainer.model, items, trainer.pad_id)
    for b, ex in enumerate(items):
        for k, completion in enumerate(ex.completion_ids):
            ids = torch.tensor([ex.prompt_ids + completion])
            with torch.no_grad():
                logps = trainer.model(ids).logits.log_softmax(-1)[0, len(ex.prompt_ids) - 1 : -1]
            total = logps.gather(1, torch.tensor(completion).unsqueeze(1)).sum()
            assert batched.logps[b, k].item() == pytest.approx(total.item(), abs=1e-4)
            assert batched.tokens[b, k] == len(completion)


def test_get_log_probs_runs_right_padded_rows_with_no_mask(prefs):
    """Rows are padded on the right (CUDA's memory-efficient attention gives NaN gradients for
    the fully masked rows that left padding creates) and go through the model causally, with
    no attention mask (which transformers would read back from the device twice) and no
    position ids (see ``alignkit.models.hf_padding.pad_right``)."""
    trainer = DPOTrainer("testbed", DPOConfig(data=prefs["train"], **FAST))
    items = [trainer.train_dataset[i] for i in range(16)]
    lengths = [len(ex.prompt_ids) + len(c) for ex in items for c in ex.completion_ids]
    assert len(set(lengths)) > 1  # the batch does need padding
    seen = []

    def record(_module, _args, kwargs):
        seen.append(kwargs)

    handle = trainer.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        get_log_probs(trainer.model, items, trainer.pad_id)
    finally:
        handle.remove()
    (kwargs,) = seen
    assert kwargs.get("attention_mask") is None and kwargs.get("position_ids") is None
    is_pad = kwargs["input_ids"] == trainer.pad_id
    assert is_pad.sum(1).tolist() == [max(lengths) - n for n in lengths]  # pads only ...
    assert bool((is_pad[:, :-1] <= is_pad[:, 1:]).all())  # ... after the real tokens


def test_right_padded_rows_without_a_mask_are_the_masked_forward_bit_for_bit(testbed_path):
    """What ``pad_right`` relies on, on the testbed in float32 on CPU: the real positions'
    logits, and every gradient of a loss read there, equal the forward given the padding mask
    and its position ids, bit for bit."""
    from transformers import AutoModelForCausalLM

    from alignkit.models.hf_padding import pad_right, pad_token_ids

    model = AutoModelForCausalLM.from_pretrained(testbed_path)
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(10, 1000, (n,), generator=gen).tolist() for n in (700, 30, 3, 300)]
    ids, mask = pad_token_ids(rows, 0, left=False)
    assert torch.equal(pad_right(rows, 0), ids)
    real = mask.bool()
    results = []
    for kwargs in ({"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)},
                   {}):  # fmt: skip
        model.zero_grad()
        logits = model(input_ids=ids, **kwargs).logits[real]
        logits.log_softmax(-1).amax(-1).sum().backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    (masked, masked_grads), (ours, our_grads) = results
    assert torch.equal(ours, masked)
    assert all(torch.equal(a, b) for a, b in zip(our_grads, masked_grads, strict=True))


def test_resume_after_kill_gives_the_same_weights(prefs, tmp_path):
    args = [
        "--data",
        prefs["train"],
        "--max-steps",
        "24",
        "--save-steps",
        "4",
        "--batch-size",
        "8",
        "--learning-rate",
        "5e-4",
        "--kl-samples",
        "0",
        "--device",
        "cpu",
        "--seed",
        "3",
    ]
    straight = tmp_path / "straight"
    cmd = [sys.executable, "-m", "alignkit", "dpo", *map(str, args)]
    subprocess.run([*cmd, "--output-dir", str(straight)], check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [*cmd, "--output-dir", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not list((killed / "checkpoints").glob("step-000008")) and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "final").exists()
    subprocess.run([*cmd, "--output-dir", str(killed), "--resume"], check=True, capture_output=True)
    a, b = _final_weights(straight), _final_weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if "loss" in row]
    assert steps == sorted(set(steps))  # no step logged twice


def test_nan_loss_stops_with_a_clear_message(prefs, tmp_path):
    trainer = DPOTrainer(
        "testbed",
        DPOConfig(
            data=prefs["train"], output_dir=tmp_path, max_steps=50, **{**FAST, "learning_rate": 1e4}
        ),
    )
    with pytest.raises(TrainingError, match="loss became .* no checkpoint was saved"):
        trainer.train()


def test_nan_loss_names_the_last_good_checkpoint(prefs, tmp_path, monkeypatch):
    """The loss turns NaN at step 6 of a run checkpointing every 2 steps: the error names
    checkpoints/step-000004, the newest one, and resuming from it retrains steps 5-6 exactly
    as the uninterrupted run did (checked on the weights)."""
    import alignkit.dpo.trainer as trainer_module

    real, calls = trainer_module.preference_step, []

    def nan_at_step_6(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 6:  # one micro-batch per step
            result.loss = result.loss * float("nan")
        return result

    config = {"data": prefs["train"], "max_steps": 6, "save_steps": 2, **FAST}
    straight = DPOTrainer("testbed", DPOConfig(output_dir=tmp_path / "straight", **config))
    straight.train()
    monkeypatch.setattr(trainer_module, "preference_step", nan_at_step_6)
    failing = tmp_path / "failing"
    with pytest.raises(TrainingError, match="loss became nan at step 6") as error:
        DPOTrainer("testbed", DPOConfig(output_dir=failing, **config)).train()
    named = failing / "checkpoints" / "step-000004"
    assert f"the last good checkpoint is {named}." in str(error.value)
    assert (named / "trainer_state.pt").exists() and not (failing / "final").exists()
    weights = load_file(named / "weights.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())  # it is a good checkpoint
    monkeypatch.undo()
    resumed = DPOTrainer("testbed", DPOConfig(output_dir=failing, resume=True, **config))
    resumed.train()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_uses_the_disabled_adapter_as_reference_and_saves(prefs, tmp_path):
    cfg = DPOConfig(
        data=prefs["train"],
        output_dir=tmp_path,
        max_steps=6,
        lora=True,
        lora_r=4,
        precompute_ref=False,
        **{**FAST, "learning_rate": 5e-3},
    )
    trainer = DPOTrainer("testbed", cfg)
    assert trainer.reference is None  # no second model in memory
    trainer.train()
    adapter = trainer.save_model(tmp_path / "adapter")
    merged = trainer.save_model(tmp_path / "merged", merge_lora=True)
    assert (adapter / "adapter_config.json").exists()
    model_a, _ = DPOTrainer.load_model(adapter, device="cpu")
    model_m, _ = DPOTrainer.load_model(merged, device="cpu")
    ids = torch.tensor([trainer.train_dataset[0].prompt_ids])
    with torch.no_grad():
        la, lm = model_a(ids).logits, model_m(ids).logits
    assert torch.allclose(la, lm, atol=1e-4)
    base = trainer.accelerator.unwrap_model(trainer.model)
    with torch.no_grad(), base.disable_adapter():
        assert not torch.allclose(base(ids).logits, la, atol=1e-4)  # the adapter learned


def test_save_model_is_standard_hf_format(prefs, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = DPOTrainer(
        "testbed", DPOConfig(data=prefs["train"], output_dir=tmp_path, max_steps=2, **FAST)
    )
    trainer.train()
    path = trainer.save_model()
    model = AutoModelForCausalLM.from_pretrained(path)
    ours = trainer.accelerator.unwrap_model(trainer.model)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), ours.state_dict().values(), strict=True)
    )
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 1 and "rewards/accuracies" in rows[0]


@pytest.mark.parametrize(
    "options",
    [
        {"precision": "bf16", "max_steps": 3},  # bf16 autocast is slow on CPUs without AMX
        {"gradient_checkpointing": True},
        {
            "optimizer": "rmsprop",
            "scheduler": "cosine",
            "warmup_steps": 1,
            "gradient_accumulation_steps": 2,
        },
        {"precompute_ref": False},
        {"loss_type": "ipo"},
        {"loss_type": "simpo", "beta": 2.0},
        {"loss_type": "rpo"},
        {"loss_type": "robust", "label_smoothing": 0.1},
        {"loss_type": "hinge"},
        {"kl_coef": 0.5},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_training_options_learn(prefs, tmp_path, options):
    """Every option trains: the reward accuracy on the training pairs goes up."""
    cfg = DPOConfig(
        data=prefs["train"],
        output_dir=tmp_path,
        **{**FAST, "learning_rate": 1e-3, "max_steps": 8, **options},
    )
    trainer = DPOTrainer("testbed", cfg)
    trainer.train()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert len(train) == cfg.max_steps and all(math.isfinite(r["loss"]) for r in train)
    assert train[-1]["rewards/margins"] > train[0]["rewards/margins"]


def test_pipeline_runs_sft_first(prefs, tmp_path):
    from alignkit.dpo import DPOPipeline

    result = DPOPipeline(
        DPOConfig(data=prefs["train"], output_dir=tmp_path, max_steps=2, sft_epochs=0.05, **FAST)
    ).run()
    assert (tmp_path / "sft" / "config.json").exists()
    assert result.model_path == tmp_path / "final" and (result.model_path / "config.json").exists()


def test_precomputed_reference_is_in_dataset_order(prefs, tmp_path, monkeypatch, testbed_path):
    """Precompute batches by length; results must still line up with the examples."""
    from alignkit.dpo.reference import precompute_reference

    trainer = DPOTrainer(f"hf:{testbed_path}", DPOConfig(data=prefs["train"], **FAST))
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path))  # a fresh cache for the log-probs
    items = [trainer.train_dataset[i] for i in range(20)]
    cached = precompute_reference(trainer.model, items, batch_size=4, pad_id=trainer.pad_id)
    with torch.no_grad():
        direct = get_log_probs(trainer.model, items, trainer.pad_id)
    assert torch.allclose(cached.logps, direct.logps, atol=1e-4)
    again = precompute_reference(trainer.model, items, batch_size=4, pad_id=trainer.pad_id)
    assert torch.equal(again.logps, cached.logps)  # served from the disk cache
    assert list((tmp_path / "ref_logps").glob("*.safetensors"))


def _lists(rows: list[list[float]], seed: int = 0):
    """SequenceLogps (policy, reference) of ranked lists; shorter rows are padded."""
    from alignkit.dpo.forward import SequenceLogps

    k = max(map(len, rows))
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.tensor([[5.0] * len(r) + [0.0] * (k - len(r)) for r in rows])
    ref = -10 * torch.rand(len(rows), k, generator=gen)
    policy = ref + torch.tensor([r + [0.0] * (k - len(r)) for r in rows])
    return SequenceLogps(policy * (tokens > 0), tokens), SequenceLogps(ref * (tokens > 0), tokens)


def test_the_config_not_the_batch_decides_the_objective():
    """A batch holding a ranked list used to train every example with Plackett-Luce whatever
    loss_type said, so a pair's loss depended on its neighbours."""
    from alignkit.dpo.steps import preference_step
    from alignkit.errors import ConfigError

    pair, ranked = [1.0, -1.0], [0.5, 2.0, -1.0]
    listwise = DPOConfig(loss_type="plackett_luce", beta=0.5)

    def loss(rows, config=listwise):
        return preference_step(*_lists(rows), config).loss.item()

    alone = loss([pair])
    assert alone == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * 2.0))), abs=1e-6)
    assert alone == pytest.approx(loss([pair], DPOConfig(beta=0.5)), abs=1e-6)
    assert loss([pair, ranked]) == pytest.approx((alone + loss([ranked])) / 2, abs=1e-6)
    with pytest.raises(ConfigError, match="defined for pairs"):
        loss([pair, ranked], DPOConfig(beta=0.5))
    constrained = DPOConfig(loss_type="plackett_luce", beta=0.5, kl_coef=1.0)
    assert loss([ranked], constrained) > loss([ranked]) + 1e-3  # kl_coef was ignored here
