"""The memory-lean log-softmax of ``alignkit.dpo.forward`` gives exact values and gradients."""

from __future__ import annotations

import pytest
import torch

from alignkit.dpo import forward


def _reference(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    steps = targets.shape[1]
    logps = logits[:, :steps].float().log_softmax(-1)
    return logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("chunk", [1 << 24, 37])  # one chunk, and many chunks of one row
def test_token_log_probs_matches_log_softmax_in_value_and_gradient(monkeypatch, chunk):
    monkeypatch.setattr(forward, "_CHUNK_ELEMENTS", chunk)
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(5, 8, 41, generator=gen, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(0, 41, (5, 7), generator=gen)
    weights = torch.randn(5, 7, generator=gen, dtype=torch.float64)

    ours = forward.token_log_probs(logits, targets)
    theirs = _reference(logits, targets)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), logits)
    (grad_theirs,) = torch.autograd.grad((theirs * weights).sum(), logits)

    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=0, atol=1e-6)
    assert grad_ours[:, 7].abs().max() == 0  # the position past the targets gets no gradient


def test_token_log_probs_keeps_the_dtype_of_bf16_logits():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 19, generator=gen).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 19, (3, 4), generator=gen)
    out = forward.token_log_probs(logits, targets)
    out.sum().backward()
    assert out.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(out, _reference(logits.detach(), targets), rtol=0, atol=1e-5)


# -- the fused projection + log-softmax (alignkit.dpo.fused_logps) ------------------------------
def _examples(n: int, seed: int):
    from alignkit.data.tokenize import TokenizedExample

    gen = torch.Generator().manual_seed(seed)

    def ids(low: int, high: int) -> list[int]:
        return torch.randint(3, 60, (int(torch.randint(low, high, (1,), generator=gen)),),
                             generator=gen).tolist()  # fmt: skip

    return [TokenizedExample(ids(2, 9), [ids(1, 7), ids(1, 11)], f"ex{i}") for i in range(n)]


def _llama(seed: int = 0, tie: bool = False, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=tie)  # fmt: skip
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("chunk", [1 << 24, 64 * 5])  # one chunk, and chunks of five positions
def test_fused_log_probs_equal_the_plain_path_in_value_and_gradient(monkeypatch, tie, chunk):
    from alignkit.dpo import fused_logps

    monkeypatch.setattr(fused_logps, "CHUNK_ELEMENTS", chunk)
    model, examples = _llama(tie=tie), _examples(6, seed=3)
    weights = torch.randn(6, 2, generator=torch.Generator().manual_seed(4))
    results = {}
    for fused in (False, True):
        model.zero_grad()
        out = forward.get_log_probs(model, examples, pad_id=0, fused=fused)
        (out.logps * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results[fused] = (out, grads)
    (plain, plain_grads), (ours, our_grads) = results[False], results[True]
    torch.testing.assert_close(ours.logps, plain.logps, rtol=0, atol=1e-5)
    assert torch.equal(ours.tokens, plain.tokens)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_head_that_reads_something_else_falls_back_to_the_plain_path():
    """A model whose head does not read its last hidden state as it is (here a hook rescales
    the head's input) is caught by the one-position check and computed the plain way."""
    from alignkit.dpo.fused_logps import fusable_head

    model, examples = _llama(seed=1), _examples(4, seed=5)
    model.lm_head.register_forward_pre_hook(lambda _module, args: (2 * args[0],))
    plain = forward.get_log_probs(model, examples, fused=False)
    ours = forward.get_log_probs(model, examples, fused=True)
    torch.testing.assert_close(ours.logps, plain.logps, rtol=0, atol=1e-5)
    assert fusable_head(model) is None  # remembered: later batches go the plain way at once


def test_soft_capped_or_scaled_heads_are_not_fused():
    from alignkit.dpo.fused_logps import fusable_head

    model = _llama()
    assert fusable_head(model) is model.lm_head
    model.config.final_logit_softcapping = 30.0
    assert fusable_head(model) is None


@pytest.mark.parametrize("path", ["plain", "fused", "shared"])
def test_compiled_layers_run_one_graph_for_every_layer(path, monkeypatch):
    """A forward builds no KV cache, so the compiled decoder layers need no graph per layer: a
    cache slot per layer made torch recompile for each, and past torch's recompile limit (8) the
    remaining layers of a real model ran eager. Any recompilation fails here. (Graphs are
    captured, not code-generated: recompiling is the compiler front end's decision; the
    inductor's code is checked in test_dpo_same_path.)"""
    from alignkit.dpo.model_io import compile_layers

    compile_module = torch.nn.Module.compile

    def capture_only(module, **options):
        compile_module(module, backend="eager", **options)

    monkeypatch.setattr(torch.nn.Module, "compile", capture_only)
    model, examples = _llama(layers=3), _examples(4, seed=5)
    assert compile_layers(model) == 3
    torch._dynamo.reset()  # no graphs left from other tests of this process
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = forward.get_log_probs(model, examples, pad_id=0, fused=path != "plain",
                                    share_prompt=path == "shared")  # fmt: skip
        out.logps.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_sampling_for_the_kl_estimate_runs_compiled_layers_eager(monkeypatch):
    """Generation changes the KV cache's shapes at every step: compiled layers would recompile
    step after step (past the limit, then eager anyway). Sampling runs them eager, and samples
    as the plain model does."""
    from alignkit.dpo.evaluation import sample_completions
    from alignkit.dpo.model_io import compile_layers

    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(
        torch.nn.Module, "compile", lambda module, **o: compile_module(module, backend="eager", **o)
    )
    plain, compiled = _llama(layers=2), _llama(layers=2)
    compile_layers(compiled)
    prompts = [ex.prompt_ids for ex in _examples(3, seed=2)]
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True), torch.no_grad():
        got = sample_completions(compiled, prompts, pad_id=0, end_ids={1}, max_new_tokens=6)
    want = sample_completions(plain, prompts, pad_id=0, end_ids={1}, max_new_tokens=6)
    assert [s.completion_ids for s in got] == [s.completion_ids for s in want]
