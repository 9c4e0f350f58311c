"""Decoding with a static KV cache (``kv_cache="static"``, the path compiled into CUDA graphs on
GPUs) generates what the dynamic path generates.

The testbed's 64 mixed prompts, greedy and sampled (also with a stop string), at batch sizes that
pad the last batch, and a tiny random Llama with a chat template: the same texts, token counts
and finish reasons as the default backend. The compiled decoding step that transformers uses on
CUDA is forced on CPU once (``COMPILE_ON_CPU``) and gives the same samples too.
"""

from __future__ import annotations

import pytest
import tiny_models as tm
from test_sampling_invariance import _testbed_prompts

from alignkit.models import GenerationConfig, hf_static, load_backend
from alignkit.models.hf_static import CACHE_STEP, cache_length, padded_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAMPLED = GenerationConfig(max_new_tokens=24, temperature=1.0, seed=5)
GREEDY = GenerationConfig(max_new_tokens=24, temperature=0)
STOPPED = GenerationConfig(max_new_tokens=24, temperature=1.0, seed=5, stop=[" the"])


def _outputs(model: str, prompts: list[str], config: GenerationConfig, **options):
    backend = load_backend(model, device="cpu", **options)
    try:
        return [(c.text, c.num_tokens, c.finish_reason) for c in backend.generate(prompts, config)]
    finally:
        backend.close()


@pytest.mark.parametrize("config", [SAMPLED, GREEDY, STOPPED], ids=["sampled", "greedy", "stop"])
def test_testbed_static_cache_generates_what_the_dynamic_one_does(testbed_path, config):
    prompts = _testbed_prompts()
    dynamic = _outputs("testbed", prompts, config, batch_size=32)
    assert len({text for text, _, _ in dynamic}) > 30  # varied completions, not one repeated
    assert {reason for _, _, reason in dynamic} == {"stop", "length"}  # rows end at different steps
    for batch_size in (32, 13):  # 64 = 4 x 13 + 12: the last 12 rows are padded to 13
        static = _outputs("testbed", prompts, config, batch_size=batch_size, kv_cache="static")
        assert static == dynamic


def test_a_chat_model_with_padding_rows(tmp_path):
    path = tm.make_tiny_model(tmp_path / "chatml", chat_template="chatml")
    prompts = [f"tell me about number {i} " + "and more " * (i % 7) for i in range(11)]
    dynamic = _outputs(f"hf:{path}", prompts, SAMPLED, batch_size=8)
    static = _outputs(f"hf:{path}", prompts, SAMPLED, batch_size=8, kv_cache="static")
    assert static == dynamic  # 11 = 8 + 3 rows: the 3 run padded to 4


def test_compiled_decoding_step_samples_the_same(testbed_path, monkeypatch):
    """The compiled decoding (what a GPU runs, minus CUDA graphs) on CPU: same samples."""
    prompts = _testbed_prompts()[::8]
    dynamic = _outputs("testbed", prompts, SAMPLED, batch_size=8)
    monkeypatch.setattr(hf_static, "COMPILE_ON_CPU", True)
    backend = load_backend("testbed", device="cpu", batch_size=8, kv_cache="static")
    compiled = [(c.text, c.num_tokens, c.finish_reason) for c in backend.generate(prompts, SAMPLED)]
    assert hasattr(backend.model, "_compiled_call")  # transformers compiled the decoding step
    assert compiled == dynamic


def test_cache_length_and_batch_padding():
    assert cache_length(10, 20, None) == CACHE_STEP
    assert cache_length(CACHE_STEP, 1, None) == 2 * CACHE_STEP
    assert cache_length(200, 60, 300) == 300  # the model's context, where it holds everything
    assert cache_length(300, 100, 300) == 2 * CACHE_STEP  # too long for the context: refused later
    assert [padded_rows(n, 8) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert padded_rows(7, 6) == 7 and padded_rows(5, 6) == 6  # never fewer rows, at most the batch
