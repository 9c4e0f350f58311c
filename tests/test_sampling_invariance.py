"""A sampled completion depends on (model, prompt, settings, seed, occurrence), never on batching.

The same 64 prompts at temperature 1 give the same text at batch sizes 1, 7 and 32, in reverse
order, and through a call cache that already holds half of them; a rerun with another batch size
is served entirely from the cache; equal prompts in one call get distinct samples; greedy
decoding is what it was. For a tiny random Llama and for the testbed model.
"""

from __future__ import annotations

import random

import pytest
import tiny_models as tm
import torch
from scipy import stats
from servers import FaultServer
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from alignkit.evaluation.cache import CachedBackend, CallCache
from alignkit.models import BackendOptions, GenerationConfig, ModelSpec, load_backend
from alignkit.models.hf_sampling import (
    GumbelSampler,
    gumbel_noise,
    key_words,
    row_words,
    token_bits,
    uniform_bits,
)
from alignkit.models.openai_compat import OpenAIBackend
from alignkit.models.sampling import (
    occurrence_seed,
    occurrences,
    prompt_key,
    request_seed,
    sample_key,
    sample_keys,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAMPLE = GenerationConfig(max_new_tokens=24, temperature=1.0, seed=3)
WORDS = "fox river bread sea poem capital France joke gulls tide water salt".split()  # noqa: SIM905
GENERIC = [f"{WORDS[i % 12]} {WORDS[i * 5 % 12]} {'and ' * (i % 9)}number {i}" for i in range(64)]


def _testbed_prompts() -> list[str]:
    """64 distinct testbed requests of varied length: benign, harmful and jailbreak-wrapped."""
    from alignkit.testbed import World
    from alignkit.testbed import content as C
    from alignkit.testbed.world import wrap

    world, rng = World(0), random.Random(0)
    harmful = world.requests("harmful")[:21]
    wrapped = [wrap(r, rng.choice(list(C.JAILBREAKS))).text for r in harmful]
    prompts = [r.text for r in world.requests("benign")[:22] + harmful] + wrapped
    assert len(set(prompts)) == 64
    return prompts


@pytest.fixture(scope="module")
def generic_dir(tmp_path_factory):
    return tm.make_tiny_model(tmp_path_factory.mktemp("tiny") / "chatml", chat_template="chatml")


def _texts(backend, prompts, config=SAMPLE) -> list[str]:
    return [c.text for c in backend.generate(prompts, config)]


def _check_invariance(model: str, prompts: list[str], config: GenerationConfig, tmp_path):
    """Batch sizes 1, 7, 32, reversed order, a half-filled cache and a rerun: identical text."""
    by_size = {bs: _texts(load_backend(model, batch_size=bs), prompts, config) for bs in (1, 7, 32)}
    assert by_size[7] == by_size[1]
    assert by_size[32] == by_size[1]
    assert len(set(by_size[1])) > len(prompts) // 2  # really sampled: mostly distinct answers
    backend = load_backend(model, batch_size=5)
    assert _texts(backend, prompts[::-1], config) == by_size[1][::-1]

    cache = CallCache(tmp_path / "calls.sqlite")
    _texts(CachedBackend(backend, cache), prompts[1::2], config)  # every other prompt, cached
    half = CachedBackend(load_backend(model, batch_size=32), cache, chunk_size=16)
    assert _texts(half, prompts, config) == by_size[1]
    assert (half.hits, half.misses) == (32, 32)
    rerun = CachedBackend(load_backend(model, batch_size=7), cache, chunk_size=64)
    assert _texts(rerun, prompts, config) == by_size[1]
    assert (rerun.hits, rerun.misses) == (64, 0)


def test_generic_model_samples_do_not_depend_on_batching_or_cache(generic_dir, tmp_path):
    _check_invariance(f"hf:{generic_dir}", GENERIC, SAMPLE, tmp_path)


def test_testbed_samples_do_not_depend_on_batching_or_cache(testbed_path, tmp_path):
    config = GenerationConfig(max_new_tokens=48, temperature=1.0, seed=0)
    _check_invariance("testbed", _testbed_prompts(), config, tmp_path)


def test_top_p_top_k_and_temperature_samples_are_invariant(generic_dir):
    config = GenerationConfig(max_new_tokens=16, temperature=0.8, top_p=0.9, top_k=40, seed=5)
    prompts = GENERIC[:20]
    one = _texts(load_backend(f"hf:{generic_dir}", batch_size=1), prompts, config)
    assert _texts(load_backend(f"hf:{generic_dir}", batch_size=20), prompts, config) == one


def test_equal_prompts_in_one_call_get_distinct_samples(generic_dir, tmp_path):
    prompts = [GENERIC[0]] * 4 + [GENERIC[1], GENERIC[0], GENERIC[1]]
    backend = load_backend(f"hf:{generic_dir}", batch_size=3)
    texts = _texts(backend, prompts)
    assert len(set(texts[:4] + [texts[5]])) == 5
    assert texts[4] != texts[6]
    # the first copy is the sample a call with one copy gives; the k-th copy, the sample of the
    # first copy under occurrence_seed(seed, k)
    assert _texts(backend, [GENERIC[0]]) == [texts[0]]
    third = SAMPLE.model_copy(update={"seed": occurrence_seed(SAMPLE.seed, 2)})
    assert _texts(backend, [GENERIC[0]], third) == [texts[2]]
    # through a cache that holds only some of the copies
    cache = CallCache(tmp_path / "calls.sqlite")
    _texts(CachedBackend(backend, cache), [GENERIC[0], GENERIC[1], GENERIC[0]])
    cached = CachedBackend(load_backend(f"hf:{generic_dir}", batch_size=2), cache)
    assert _texts(cached, prompts) == texts
    assert (cached.hits, cached.misses) == (3, 4)


def test_seed_changes_samples_and_none_draws_fresh_ones(generic_dir):
    backend = load_backend(f"hf:{generic_dir}", batch_size=8)
    first = _texts(backend, GENERIC[:8])
    other = _texts(backend, GENERIC[:8], SAMPLE.model_copy(update={"seed": 4}))
    assert sum(a != b for a, b in zip(first, other, strict=True)) >= 7
    fresh = SAMPLE.model_copy(update={"seed": None})
    assert _texts(backend, GENERIC[:8], fresh) != _texts(backend, GENERIC[:8], fresh)


def test_greedy_is_plain_argmax_decoding(generic_dir, tmp_path):
    backend = load_backend(f"hf:{generic_dir}", batch_size=4)
    greedy = GenerationConfig(max_new_tokens=12, temperature=0)
    for prompt, text in zip(GENERIC[:3], _texts(backend, GENERIC[:3], greedy), strict=True):
        ids = torch.tensor([backend.encode_prompt(prompt)])
        out = backend.model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
        assert text == backend.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    # greedy cache keys have no occurrence: a duplicate is a hit of the same entry
    cached = CachedBackend(backend, CallCache(tmp_path / "calls.sqlite"))
    _texts(cached, GENERIC[:2], greedy)
    _texts(cached, [GENERIC[0], GENERIC[0]], greedy)
    assert (cached.hits, cached.misses) == (2, 2)


# ----- the draw itself -----


def test_noise_depends_only_on_key_step_and_token():
    keys = [sample_key(0, prompt_key(p)) for p in GENERIC[:6]]
    together = uniform_bits(key_words(keys), step=3, vocab=50)
    for row, key in enumerate(keys):
        assert torch.equal(uniform_bits(key_words([key]), step=3, vocab=50)[0], together[row])
    assert not torch.equal(uniform_bits(key_words(keys), 4, 50), together)
    assert int(together.min()) >= 0 and int(together.max()) < 2**32
    noise = gumbel_noise(key_words(keys), 3, 50000)
    assert torch.isfinite(noise).all()


def test_the_hash_is_pinned():
    """The noise is part of every sampled result (the README's tables among them): a change of
    the hash, or of its arithmetic, changes what a seed samples; these values must not move."""
    words = key_words([0, 12345, 2**64 - 1])
    assert uniform_bits(words, 7, 5).tolist() == [
        [3206535849, 1774569624, 905769401, 1345405314, 1572288871],
        [2397483545, 4253180141, 2136377014, 997375812, 3773124330],
        [1285989899, 2373331009, 2014686347, 4075611182, 1487912176],
    ]
    assert uniform_bits(words, 2**40 + 3, 5)[0].tolist() == [
        4294106266,
        1894079036,
        2192926018,
        2991461358,
        331964958,
    ]
    steps = torch.tensor([7, 7, 7])  # each row's own step (continuous batching): the same bits
    assert torch.equal(token_bits(row_words(words, steps), 5), uniform_bits(words, 7, 5))
    assert gumbel_noise(words, 7, 5)[1].tolist() == pytest.approx(
        [
            0.5395264625549316,
            4.627725601196289,
            0.3590598702430725,
            -0.37848544120788574,
            2.0437612533569336,
        ],
        abs=1e-6,
    )


def test_gumbel_max_draws_follow_the_warped_softmax():
    """Draws over 20,000 keys match softmax of transformers' warped logits (chi-square test)."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0, -8.0]])
    config = GenerationConfig(temperature=0.7, top_p=0.9)
    keys = [sample_key(1, str(i)) for i in range(20000)]
    sampler = GumbelSampler(config, keys, start=0, device="cpu")
    ids = torch.zeros((len(keys), 5), dtype=torch.long)
    drawn = sampler(ids, logits.expand(len(keys), -1)).argmax(-1)
    counts = torch.bincount(drawn, minlength=8).double()
    warped = logits
    for warper in (TemperatureLogitsWarper(0.7), TopPLogitsWarper(0.9)):
        warped = warper(ids[:1], warped)
    probs = torch.softmax(warped[0], -1).double()
    kept = probs > 0
    assert 2 < int(kept.sum()) < 8 and counts[~kept].sum() == 0
    expected = (probs[kept] / probs[kept].sum() * len(keys)).numpy()
    assert stats.chisquare(counts[kept].numpy(), expected).pvalue > 1e-3


def test_occurrence_rule():
    keys = [prompt_key(p) for p in ["a", "b", "a", [{"role": "user", "content": "a"}], "a"]]
    assert occurrences(keys) == [0, 0, 1, 0, 2]
    assert occurrence_seed(7, 0) == 7 and occurrence_seed(None, 3) is None
    assert occurrence_seed(7, 1) != occurrence_seed(7, 2) != 7
    assert sample_keys(["a", "b", "a"], 7)[2] == sample_key(occurrence_seed(7, 1), keys[0])


def test_openai_requests_carry_per_prompt_seeds():
    """The seed sent for a prompt depends on the prompt and its occurrence, not on neighbours."""
    with FaultServer() as server:
        spec = ModelSpec(kind="openai", model="fake-model", base_url=server.base_url)
        backend = OpenAIBackend(spec, BackendOptions(max_concurrency=1), probe=False)
        backend.generate(["a", "b", "a"], SAMPLE)
        backend.generate(["c", "a"], SAMPLE)
        seeds = [r["body"]["seed"] for r in server.requests]
    assert seeds[0] == seeds[4] == request_seed(sample_key(3, prompt_key("a")))
    assert len(set(seeds[:4])) == 4  # the second "a" has its own seed


def test_dpo_kl_samples_do_not_depend_on_the_other_prompts(generic_dir):
    """The DPO evaluation's KL samples (drawn from the model directly, not through a backend)
    follow the same rule: a prompt's completion is the same alone, among others, reordered."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.dpo.evaluation import sample_completions

    tok = AutoTokenizer.from_pretrained(generic_dir)
    model = AutoModelForCausalLM.from_pretrained(generic_dir).eval()
    prompts = [tok(p)["input_ids"] for p in GENERIC[:12]]
    pad, ends = tok.pad_token_id or 0, {tok.eos_token_id}

    def draw(batch, seed=0):
        with torch.no_grad():
            out = sample_completions(model, batch, pad, ends, max_new_tokens=12, seed=seed)
        return [s.completion_ids[0] for s in out]

    together = draw(prompts)
    alone = [draw([p])[0] for p in prompts[:4]]
    reordered = draw(prompts[::-1])[::-1]
    assert together[:4] == alone and together == reordered
    assert len({tuple(c) for c in together}) > 6  # sampled, not one fixed answer
    assert draw(prompts[:4], seed=1) != together[:4]  # the seed matters
