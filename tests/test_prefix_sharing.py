"""Prefix sharing (``alignkit.dpo.prefix_sharing``): each prompt computed once for all of its
completions, examples packed into rows, and the same log-probs and gradients as one row per
completion, for every attention implementation that takes the masks (sdpa, eager,
FlexAttention), with and without the fused head, for pairs and ranked lists of three."""

from __future__ import annotations

import pytest
import torch
from test_dpo_forward import _examples, _llama

from alignkit.data.tokenize import TokenizedExample
from alignkit.dpo import forward
from alignkit.dpo.prefix_sharing import allowed, shared_layout


def _ranked(n: int, seed: int) -> list[TokenizedExample]:
    """Examples with three completions, of lengths unlike each other's."""
    pairs = _examples(n, seed)
    extra = _examples(n, seed + 1)
    return [TokenizedExample(a.prompt_ids, [*a.completion_ids, b.completion_ids[1]], a.source)
            for a, b in zip(pairs, extra, strict=True)]  # fmt: skip


def _logps_and_grads(model, examples, **options):
    model.zero_grad()
    out = forward.get_log_probs(model, examples, pad_id=0, **options)
    weights = torch.randn(out.logps.shape, generator=torch.Generator().manual_seed(4))
    (out.logps * weights).sum().backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("completions", [2, 3])
def test_shared_prompts_give_the_same_log_probs_and_gradients(implementation, fused, completions):
    model = _llama(seed=2, tie=fused)
    model.config._attn_implementation = implementation
    make = _examples if completions == 2 else _ranked
    examples = make(7, seed=11)
    plain, plain_grads = _logps_and_grads(model, examples, fused=fused)
    shared, shared_grads = _logps_and_grads(model, examples, fused=fused, share_prompt=True)
    torch.testing.assert_close(shared.logps, plain.logps, rtol=0, atol=1e-5)
    assert torch.equal(shared.tokens, plain.tokens)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("fused", [True, False])
def test_flex_attention_block_mask_gives_the_same_log_probs(fused):
    """FlexAttention (the GPU's efficient masked attention) runs forward-only on CPU: the
    reference's log-probs; its backward is exercised on a lent GPU (benchmarks/gpu_check.sh)."""
    model = _llama(seed=2, tie=fused)
    examples = _ranked(7, seed=11)
    with torch.no_grad():
        plain = forward.get_log_probs(model, examples, fused=fused)
        model.config._attn_implementation = "flex_attention"
        shared = forward.get_log_probs(model, examples, fused=fused, share_prompt=True)
    torch.testing.assert_close(shared.logps, plain.logps, rtol=0, atol=1e-5)


def test_layout_computes_each_prompt_once_and_packs_examples():
    examples = _examples(9, seed=5)
    layout = shared_layout(examples, pad_id=0)
    real = int((layout.doc >= 0).sum())
    prompts = sum(len(ex.prompt_ids) for ex in examples)
    completions = sum(len(c) for ex in examples for c in ex.completion_ids)
    assert real == prompts + completions  # every prompt once, every completion once
    assert layout.ids.shape[0] < len(examples)  # several examples share a row
    assert layout.ids.shape[1] == max(len(ex.prompt_ids) + sum(map(len, ex.completion_ids))
                                      for ex in examples)  # fmt: skip
    assert sorted(set(layout.doc.flatten().tolist()) - {-1}) == list(range(9))


def test_mask_keeps_examples_and_completions_apart():
    a = TokenizedExample([5, 6], [[7, 8], [9]], "a")  # 5 tokens
    b = TokenizedExample([4], [[3], [2]], "b")  # 3 tokens: fits beside a
    c = TokenizedExample([1, 1], [[2, 3, 4, 5], [6, 7]], "c")  # 8 tokens: the longest, a row
    layout = shared_layout([a, b, c], pad_id=0)
    assert layout.ids.tolist() == [[1, 1, 2, 3, 4, 5, 6, 7], [5, 6, 7, 8, 9, 4, 3, 2]]
    assert layout.positions[1].tolist() == [0, 1, 2, 3, 2, 0, 1, 1]  # completions restart
    mask = allowed(layout.doc, layout.segment)[1].int().tolist()
    assert mask[4] == [1, 1, 0, 0, 1, 0, 0, 0]  # rejected sees the prompt and itself, not chosen
    assert mask[3] == [1, 1, 1, 1, 0, 0, 0, 0]
    assert mask[7] == [0, 0, 0, 0, 0, 1, 0, 1]  # the second example: its own prompt only
    # the first token of each completion is predicted by the last prompt token
    second = layout.row == 1
    assert layout.at[second].tolist() == [1, 2, 1, 5, 5]
    assert layout.target[second].tolist() == [7, 8, 9, 3, 2]
    assert layout.sequence[second].tolist() == [0, 0, 1, 2, 3]  # (a, chosen) ... (b, rejected)


def test_without_a_maskable_attention_or_a_prompt_the_rows_are_used():
    model = _llama(seed=3)
    examples = _examples(3, seed=2)
    empty = [TokenizedExample([], ex.completion_ids, ex.source) for ex in examples]
    assert shared_layout(empty, 0) is None  # nothing would predict the first tokens
    assert forward._shared_sums(model, empty, 0, None, None) is None
    model.config._attn_implementation = "flash_attention_2"  # takes no custom mask
    assert forward._shared_sums(model, examples, 0, None, None) is None
    model.config._attn_implementation = "sdpa"
    masks = []
    model.register_forward_pre_hook(
        lambda _m, _args, kwargs: masks.append(kwargs["attention_mask"]), with_kwargs=True
    )
    forward.get_log_probs(model, examples, share_prompt=True)
    assert masks[-1].dim() == 4  # the shared layout ran


def test_attention_implementation_is_chosen_at_load(tmp_path, testbed_path):
    """``attn_implementation`` reaches ``from_pretrained``: the policy runs eager attention, and
    prefix sharing then builds the additive mask; a missing kernel package is one line, exit 2."""
    import subprocess
    import sys

    from alignkit.dpo import DPOConfig, DPOTrainer
    from alignkit.dpo.prefix_sharing import attention_mask
    from alignkit.testbed import World
    from alignkit.testbed.preferences import preference_pairs, write_jsonl

    data = tmp_path / "pairs.jsonl"
    write_jsonl(preference_pairs(World(0), 8, split="train", seed=0), data)
    config = DPOConfig(data=data, max_steps=1, batch_size=4, kl_samples=0, device="cpu",
                       output_dir=tmp_path / "eager", attn_implementation="eager")  # fmt: skip
    trainer = DPOTrainer("testbed", config)
    assert forward.attention_implementation(trainer.model) == "eager"
    layout = shared_layout(_examples(2, seed=1), pad_id=0)
    assert attention_mask(layout, "eager", torch.float32).dtype == torch.float32
    done = subprocess.run(
        [sys.executable, "-m", "alignkit", "dpo", "--attn-implementation", "flash_attention_2",
         "--data", str(data), "--output-dir", str(tmp_path / "flash"), "--max-steps", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "FlashAttention2" in lines[0] and "Traceback" not in done.stderr
