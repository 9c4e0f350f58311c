"""A DPO training step reads values back from the device once, after its updates are queued.

Each read of a device value (``item``, ``tolist``, ``float``, ``bool``...) makes the host wait
for every kernel queued before it; on a GPU, a read between the forward and the backward
leaves the device idle while the host queues the rest of the step. The metrics of every
micro-batch stay on the device and are read together at the end of the step (with the
divergence check); whether the output head may be fused is read once, on the first batch.
Counted here are the reads that alignkit's own code makes, and those of transformers' mask
builder, which rows without a padding mask cut from two per forward to one (torch's optimizer
reads its host step counters: not counted).
"""

from __future__ import annotations

import pytest
import torch

from alignkit.dpo import DPOConfig, DPOTrainer
from alignkit.dpo.losses import PreferenceLogps, compute_loss
from alignkit.testbed import World
from alignkit.testbed.preferences import preference_pairs, write_jsonl


@pytest.mark.parametrize(
    ("accumulation", "adaptive"), [(1, False), (2, False), (2, True)], ids=["1", "2", "2-beta-dpo"]
)
def test_one_read_per_optimizer_step(tmp_path, count_reads, accumulation, adaptive):
    data = tmp_path / "pairs.jsonl"
    write_jsonl(preference_pairs(World(0), 24, split="train", seed=0), data)
    beta_dpo = {"adaptive_beta": True, "adaptive_filter": 0.5} if adaptive else {}
    config = DPOConfig(data=data, output_dir=tmp_path / "out", max_steps=3, batch_size=4,
                       gradient_accumulation_steps=accumulation, kl_samples=0, device="cpu",
                       **beta_dpo)  # fmt: skip
    trainer = DPOTrainer("testbed", config)
    trainer.output_dir.mkdir(parents=True)
    forwards = []  # of the decoder body: policy steps, and the reference unless cached on disk
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, _args: forwards.append(1) if type(module).__name__ == "LlamaModel" else None
    )
    count_reads.clear()
    trainer.prepare_reference()  # the head is checked here, or (reference log-probs read from
    for step in range(3):  # the disk cache) in the first step: once in all
        metrics = trainer.train_step(
            [trainer._micro_batch(step * accumulation + j) for j in range(accumulation)]
        )
        assert set(metrics) >= {"loss", "rewards/accuracies", "grad_norm", "beta"}
    hook.remove()
    cpu_only = count_reads.pop(("losses.py", "__post_init__"))  # token counts checked on CPU
    assert cpu_only == 2 * 3 * accumulation  # chosen and rejected counts of every micro-batch
    if adaptive:  # beta-DPO's beta is checked on CPU only, in every micro-batch's loss
        assert count_reads.pop(("losses.py", "_checked")) == 3 * accumulation
        assert metrics["adaptive/kept_fraction"] == 0.5
    # transformers' mask builder: one read per forward, the default position ids checked for
    # packed sequences (a padding mask would be read twice: is there padding, is it only at
    # the end)
    assert len(forwards) >= 3 * accumulation
    assert count_reads.pop_transformers() <= len(forwards)
    assert count_reads == {("trainer.py", "train_step"): 3, ("forward.py", "_head_input"): 1}


def test_values_on_a_device_are_not_read():
    """Preference log-probs on a device other than the CPU (here ``meta``, whose values cannot
    be read at all) are built, and their loss with per-pair label smoothing (soft labels) is
    computed, without reading their token counts or the smoothing."""
    values = torch.zeros(4, device="meta")
    logps = PreferenceLogps(values, values, values, values, values, values)
    assert logps.chosen_tokens.device.type == "meta"
    out = compute_loss(logps, "sigmoid", beta=0.1, label_smoothing=torch.zeros(4, device="meta"))
    assert out.losses.device.type == "meta" and out.metrics["nll"].device.type == "meta"


def test_beta_dpo_reads_nothing_on_a_device():
    """beta-DPO's statistics, beta, filtering and loss are computed where the margins are."""
    from alignkit.dpo.adaptive import AdaptiveDPO

    values = torch.zeros(8, device="meta")
    logps = PreferenceLogps(values, values, values, values, values, values)
    adaptive = AdaptiveDPO(filter_fraction=0.75)
    for _ in range(2):
        step = adaptive.step(logps)
        assert step.kept == 6 and step.mask.device.type == "meta"
        out = compute_loss(logps, "sigmoid", beta=step.beta)
        assert step.beta.device.type == "meta" and out.losses.device.type == "meta"
