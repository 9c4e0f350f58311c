"""Continuous batching over a paged KV cache (``kv_cache="paged"``, transformers' engine with
alignkit's per-request sampler) generates what the dynamic path generates.

The testbed's 64 mixed prompts, greedy, sampled, warped and with a stop string, with up to 32
and up to 5 requests per forward pass (with 5, most requests wait and join as others finish),
and a tiny chat Llama with prompts of many lengths: the same texts, token counts and finish
reasons as the default backend. The model is left as it was found (its attention
implementation and its log-probs), and an engine failure is one :class:`BackendError`.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import tiny_models as tm
import torch
from test_sampling_invariance import _testbed_prompts
from test_static_cache import GREEDY, SAMPLED, STOPPED, _outputs

from alignkit.errors import BackendError
from alignkit.models import GenerationConfig, hf_paged, load_backend
from alignkit.models.hf_sampling import gumbel_noise, key_words

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WARPED = GenerationConfig(max_new_tokens=24, temperature=0.7, top_k=20, top_p=0.9, seed=3)


@pytest.mark.parametrize(
    "config", [SAMPLED, GREEDY, STOPPED, WARPED], ids=["sampled", "greedy", "stop", "warped"]
)
def test_testbed_paged_generates_what_the_dynamic_path_does(testbed_path, config):
    prompts = _testbed_prompts()
    dynamic = _outputs("testbed", prompts, config, batch_size=32)
    assert len({text for text, _, _ in dynamic}) > 30  # varied completions, not one repeated
    assert {reason for _, _, reason in dynamic} == {"stop", "length"}  # rows end at different steps
    for batch_size in (32, 5):  # 5: requests queue and take the places of finished ones
        paged = _outputs("testbed", prompts, config, batch_size=batch_size, kv_cache="paged")
        assert paged == dynamic


def test_a_chat_model_with_prompts_of_many_lengths(tmp_path):
    path = tm.make_tiny_model(tmp_path / "chatml", chat_template="chatml")
    prompts = [f"tell me about number {i} " + "and more " * (3 * i) for i in range(11)]
    dynamic = _outputs(f"hf:{path}", prompts, SAMPLED, batch_size=8)
    paged = _outputs(f"hf:{path}", prompts, SAMPLED, batch_size=4, kv_cache="paged")
    assert paged == dynamic


def test_the_sampler_adds_the_noise_of_each_requests_key_and_step():
    keys, steps = [3, 2**63 + 5, 3], [0, 7, 4]
    requests = [
        SimpleNamespace(
            state=SimpleNamespace(
                logit_processor_kwargs={"sample_key": key}, generated_len=lambda s=step: s
            )
        )
        for key, step in zip(keys, steps, strict=True)
    ]
    sampler = hf_paged.PagedGumbelSampler(GenerationConfig(temperature=1.0))
    args = sampler.prepare_tensor_args(requests)
    assert args.dtype == torch.int32
    scores = torch.randn(3, 50)
    noise = sampler(scores.clone(), torch.cat([args, torch.zeros(5, dtype=torch.int32)])) - scores
    for row, (key, step) in enumerate(zip(keys, steps, strict=True)):
        expected = gumbel_noise(key_words([key]), step, 50)[0]
        torch.testing.assert_close(noise[row], expected, rtol=0, atol=1e-5)
    assert sampler.prepare_tensor_args([]).numel() == 0


def test_the_model_is_left_as_it_was(testbed_path):
    backend = load_backend("testbed", device="cpu", batch_size=4, kv_cache="paged")
    prompts, completions = ["hello there", "how do I pick a lock"], ["Sure.", "No."]
    before = [r.logprobs for r in backend.logprobs(prompts, completions)]
    attention = backend.model.config._attn_implementation
    backend.generate(prompts * 3, SAMPLED)
    assert backend.model.config._attn_implementation == attention
    assert [r.logprobs for r in backend.logprobs(prompts, completions)] == before
    backend.close()


def test_an_engine_failure_is_one_backend_error(testbed_path, monkeypatch):
    def fail(self, scores, tensor_arg):
        raise RuntimeError("kernel exploded")

    backend = load_backend("testbed", device="cpu", batch_size=4, kv_cache="paged")
    attention = backend.model.config._attn_implementation
    expected = backend.generate(["hello", "there"], SAMPLED)
    monkeypatch.setattr(hf_paged.PagedGumbelSampler, "__call__", fail)
    with pytest.raises(BackendError, match="kernel exploded"):
        backend.generate(["hello", "there"], SAMPLED)
    assert backend._paged.manager is None  # the failed engine is gone
    assert backend.model.config._attn_implementation == attention
    monkeypatch.undo()
    assert backend.generate(["hello", "there"], SAMPLED) == expected  # a new engine
    backend.close()


def test_one_engine_serves_the_backends_calls(testbed_path):
    """The engine (its pages and batch tensors) is kept from call to call: sampled, greedy and
    shorter calls reuse it; a call that needs more pages builds a larger one; close releases it.
    Every call generates what a fresh backend generates."""
    prompts = _testbed_prompts()[:12]
    short = GenerationConfig(max_new_tokens=8, temperature=1.0, seed=5)
    calls = [(prompts, SAMPLED), (prompts[:3], GREEDY), (prompts[5:], short)]
    fresh = [_outputs("testbed", p, c, batch_size=4, kv_cache="paged") for p, c in calls]
    backend = load_backend("testbed", device="cpu", batch_size=4, kv_cache="paged")
    assert backend.generate([], SAMPLED) == []  # nothing to do: no engine
    engines = []
    for (batch, config), expected in zip(calls, fresh, strict=True):
        out = [(c.text, c.num_tokens, c.finish_reason) for c in backend.generate(batch, config)]
        assert out == expected
        engines.append(backend._paged.manager)
    assert engines[0] is engines[1] is engines[2] and not engines[0].is_running()
    longer = GenerationConfig(max_new_tokens=4 * SAMPLED.max_new_tokens, temperature=0.0)
    pages = backend._paged.pages
    backend.generate(prompts[:2], longer)
    assert backend._paged.manager is not engines[0] and backend._paged.pages > pages
    backend.close()
    assert backend._paged is not None and backend._paged.manager is None
