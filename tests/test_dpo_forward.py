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
