"""Tests of the local Hugging Face backend on tiny random models built in ``tiny_models``."""

from __future__ import annotations

import logging
import time

import pytest
import tiny_models as tm
import torch
import torch.nn.functional as F

from alignkit.errors import ModelError
from alignkit.models import (
    BackendOptions,
    GenerationConfig,
    ModelBackend,
    ModelSpec,
    load_backend,
    score,
)
from alignkit.models.hf import PLAIN_STOP, HFBackend, pad_token_ids

GREEDY = GenerationConfig(max_new_tokens=16, temperature=0)
PROMPTS = [
    "Hi",
    "What is the capital of France?",
    "Write a short poem about the sea, the waves and the gulls at the river bank.",
    "2+2?",
    "Tell me a joke about a fox.",
    "How do I bake bread with flour, water, salt and yeast?",
    "x",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def dirs(tmp_path_factory):
    """Every tiny checkpoint the tests use, built once per session."""
    root = tmp_path_factory.mktemp("tiny_models")
    out = {
        "chatml": tm.make_tiny_model(root / "chatml", chat_template="chatml"),
        "llama2": tm.make_tiny_model(root / "llama2", chat_template="llama2", seed=1),
        "plain": tm.make_tiny_model(root / "plain", chat_template=None, seed=2),
        "nopad": tm.make_tiny_model(root / "nopad", chat_template="chatml", pad_token=None),
        "turn_end": tm.make_tiny_model(root / "turn_end", chat_template=tm.CHATML_TEMPLATE),
        "encoder": tm.make_tiny_encoder(root / "encoder"),
    }
    out["adapter"] = tm.make_lora_adapter(out["chatml"], root / "adapter")
    return out


@pytest.fixture(scope="session")
def chatml(dirs) -> HFBackend:
    return load_backend(f"hf:{dirs['chatml']}", batch_size=3)


@pytest.fixture(scope="session")
def chatml_single(dirs) -> HFBackend:
    return load_backend(f"hf:{dirs['chatml']}", batch_size=1)


@pytest.fixture(scope="session")
def llama2(dirs) -> HFBackend:
    return load_backend(f"hf:{dirs['llama2']}", batch_size=4)


# ---------------------------------------------------------------------------------- loading


def test_load_backend_builds_an_hf_backend(dirs, chatml):
    assert isinstance(chatml, HFBackend)
    assert isinstance(chatml, ModelBackend)
    assert chatml.name == f"hf:{dirs['chatml']}"
    assert chatml.supports_logprobs is True
    assert chatml.device == torch.device("cpu")
    assert not chatml.model.training
    assert chatml.model.dtype == torch.float32
    assert chatml.tokenizer.pad_token == "<pad>"


def test_explicit_name_dtype_and_pad_token_from_eos(dirs):
    spec = ModelSpec.parse(f"hf:{dirs['nopad']}")
    backend = HFBackend(spec, BackendOptions(dtype="bfloat16"), name="my-model")
    assert backend.name == "my-model"
    assert backend.model.dtype == torch.bfloat16
    assert backend.tokenizer.pad_token == "<|im_end|>"
    assert backend.pad_id == backend.tokenizer.eos_token_id
    outs = backend.generate(PROMPTS[:3], GREEDY)
    assert all(o.num_tokens > 0 and o.text for o in outs)


@pytest.mark.parametrize(
    "model, message",
    [
        ("hf:/no/such/model/dir", "no such directory"),
        ("hf:./missing-model", "no such directory"),
        ("hf:some-org/some-model", "cannot be reached"),
    ],
)
def test_missing_models_fail_fast_with_one_line(model, message):
    start = time.perf_counter()
    with pytest.raises(ModelError) as err:
        load_backend(model)
    assert time.perf_counter() - start < 10
    assert message in err.value.message
    assert model[3:] in err.value.message
    assert "\n" not in err.value.message


def test_not_a_causal_lm_and_no_config(dirs, tmp_path):
    with pytest.raises(ModelError, match="not a causal language model") as err:
        load_backend(f"hf:{dirs['encoder']}")
    assert str(dirs["encoder"]) in err.value.message
    with pytest.raises(ModelError, match="no config.json"):
        load_backend(f"hf:{tmp_path}")


def test_missing_adapter_dir(dirs, tmp_path):
    with pytest.raises(ModelError, match="no such directory") as err:
        load_backend(f"hf:{dirs['chatml']}+{tmp_path / 'nope'}")
    assert str(tmp_path / "nope") in err.value.message
    with pytest.raises(ModelError, match="adapter_config.json"):
        load_backend(f"hf:{dirs['chatml']}+{tmp_path}")


def test_lora_adapter_changes_outputs(dirs, chatml):
    from peft import PeftModel

    tuned = load_backend(f"hf:{dirs['chatml']}+{dirs['adapter']}", batch_size=3)
    assert isinstance(tuned.model, PeftModel)
    assert tuned.name.endswith(f"+{dirs['adapter']}")
    base_lp = chatml.logprobs(PROMPTS[:3], ["Paris is nice."] * 3)
    tuned_lp = tuned.logprobs(PROMPTS[:3], ["Paris is nice."] * 3)
    assert all(abs(a.total - b.total) > 1e-3 for a, b in zip(base_lp, tuned_lp, strict=True))
    base = [c.text for c in chatml.generate(PROMPTS, GREEDY)]
    assert [c.text for c in tuned.generate(PROMPTS, GREEDY)] != base


# -------------------------------------------------------------------------------- rendering


def test_chat_template_rendering_and_system_prompt(dirs):
    backend = load_backend(f"hf:{dirs['chatml']}", system_prompt="Be brief.")
    assert backend.render("Hi") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    prefill = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Sure"}]
    assert backend.render(prefill).endswith("<|im_start|>assistant\nSure")


def test_no_double_bos(dirs, llama2, chatml):
    bos = llama2.tokenizer.bos_token_id
    ids = llama2.encode_prompt("Hi")
    assert llama2.render("Hi").startswith("<s>[INST]")
    assert ids[0] == bos and ids.count(bos) == 1
    assert bos not in chatml.encode_prompt("Hi")
    plain = load_backend(f"hf:{dirs['plain']}")
    assert plain.encode_prompt("Hi")[0] == bos and plain.encode_prompt("Hi").count(bos) == 1
    raw = load_backend(f"hf:{dirs['plain']}", use_chat_template=False)
    assert raw.render("Hi") == "Hi"
    assert raw.encode_prompt("Hi") == raw.tokenizer("Hi")["input_ids"]
    assert raw.encode_prompt("<s>Hi") == raw.encode_prompt("Hi")
    assert (
        llama2.encode_completion("Hi there")
        == llama2.tokenizer("Hi there", add_special_tokens=False)["input_ids"]
    )


def test_fallback_template_warns_once(dirs, caplog):
    backend = load_backend(f"hf:{dirs['plain']}", system_prompt="Be brief.")
    with caplog.at_level(logging.WARNING, logger="alignkit.models.hf"):
        assert backend.render("Hi") == "System: Be brief.\nUser: Hi\nAssistant:"
        backend.generate(PROMPTS[:2], GREEDY)
        backend.logprobs(PROMPTS[:2], ["a", "b"])
    warnings = [r for r in caplog.records if "no chat template" in r.getMessage()]
    assert len(warnings) == 1


def test_chat_template_does_not_warn(chatml, caplog):
    with caplog.at_level(logging.WARNING, logger="alignkit.models.hf"):
        chatml.render("Hi")
    assert not [r for r in caplog.records if "no chat template" in r.getMessage()]


def test_raw_text_mode(dirs):
    raw = load_backend(f"hf:{dirs['chatml']}", use_chat_template=False, system_prompt="S")
    assert raw.render("Once upon a time") == "S\n\nOnce upon a time"
    assert raw.render([{"role": "user", "content": "Hi"}]) == "System: S\nUser: Hi\nAssistant:"
    assert raw.stop_strings(GenerationConfig(stop=["."])) == ["."]


def test_plain_template_adds_the_user_turn_stop(dirs, chatml):
    plain = load_backend(f"hf:{dirs['plain']}")
    assert plain.stop_strings(GenerationConfig(stop=["."])) == [".", PLAIN_STOP]
    assert chatml.stop_strings(GenerationConfig()) == []
    ids = plain.tokenizer("Paris.\nUser: and", add_special_tokens=False)["input_ids"]
    done = plain._finish(ids, plain.stop_strings(GenerationConfig()), max_new=len(ids))
    assert (done.text, done.finish_reason) == ("Paris.", "stop")


# ------------------------------------------------------------------------------- generation


def test_left_padding():
    ids, mask = pad_token_ids([[5, 6, 7], [8]], pad_id=0, left=True)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_token_ids([[5, 6, 7], [8]], pad_id=0, left=False)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]


def test_batched_greedy_equals_one_at_a_time(chatml, chatml_single):
    batched = chatml.generate(PROMPTS, GREEDY)
    single = chatml_single.generate(PROMPTS, GREEDY)
    assert [c.text for c in batched] == [c.text for c in single]
    assert [c.num_tokens for c in batched] == [c.num_tokens for c in single]
    assert len({c.text for c in batched}) == len(PROMPTS)  # distinct prompts, distinct outputs


def test_results_follow_input_order(chatml):
    forward = chatml.generate(PROMPTS, GREEDY)
    backward = chatml.generate(PROMPTS[::-1], GREEDY)
    assert [c.text for c in backward] == [c.text for c in forward][::-1]


def test_greedy_matches_plain_transformers_generate(chatml):
    ids = torch.tensor([chatml.encode_prompt(PROMPTS[2])])
    out = chatml.model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None)
    expected = chatml.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    completion = chatml.generate([PROMPTS[2]], GREEDY)[0]
    assert completion.text == expected
    assert completion.finish_reason == "length" and completion.num_tokens == 16


def test_sampling_seeds(chatml):
    cfg = GenerationConfig(max_new_tokens=12, temperature=1.0, seed=7)
    first = [c.text for c in chatml.generate(PROMPTS, cfg)]
    assert [c.text for c in chatml.generate(PROMPTS, cfg)] == first
    other = [c.text for c in chatml.generate(PROMPTS, cfg.model_copy(update={"seed": 8}))]
    assert sum(a != b for a, b in zip(first, other, strict=True)) >= len(PROMPTS) - 1
    assert [c.text for c in chatml.generate(PROMPTS, GREEDY)] != first


def test_sampling_leaves_global_rng_alone(chatml):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    chatml.generate(PROMPTS[:2], GenerationConfig(max_new_tokens=4, seed=5))
    assert torch.equal(torch.rand(3), expected)


def test_top_k_one_is_greedy(chatml):
    cfg = GenerationConfig(max_new_tokens=12, temperature=0.7, top_k=1, seed=3)
    sampled = [c.text for c in chatml.generate(PROMPTS, cfg)]
    greedy = [
        c.text for c in chatml.generate(PROMPTS, GREEDY.model_copy(update={"max_new_tokens": 12}))
    ]
    assert sampled == greedy


def _spy_generated_lengths(backend: HFBackend, monkeypatch) -> list[int]:
    """Record how many tokens each ``model.generate`` call (one decoding round) produced."""
    lengths: list[int] = []
    original = backend.model.generate

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        lengths.append(out.sequences.shape[1] - kwargs["input_ids"].shape[1])
        return out

    monkeypatch.setattr(backend.model, "generate", spy)
    return lengths


def _ascii_word(text: str, after: int) -> str:
    """A 2-character run of letters/digits in ``text`` starting at or after ``after``."""
    for i in range(after, len(text) - 1):
        if text[i : i + 2].isascii() and text[i : i + 2].isalnum():
            return text[i : i + 2]
    raise AssertionError(f"no ASCII pair in {text!r}")


def test_stop_strings_cut_text_and_end_early(chatml, chatml_single, monkeypatch):
    full = chatml.generate(PROMPTS, GenerationConfig(max_new_tokens=32, temperature=0))
    stops = [_ascii_word(c.text, len(c.text) // 3) for c in full]
    generated = _spy_generated_lengths(chatml_single, monkeypatch)
    for i, (prompt, c, stop) in enumerate(zip(PROMPTS, full, stops, strict=True)):
        cfg = GenerationConfig(max_new_tokens=32, temperature=0, stop=[stop])
        generated.clear()
        cut = chatml_single.generate([prompt], cfg)[0]
        assert cut.text == c.text[: c.text.find(stop)], i
        assert cut.finish_reason == "stop"
        assert cut.num_tokens < 32
        assert sum(generated) == cut.num_tokens  # generation stopped on the stop string
    # batched: each row stops at its own string; finished rows do not change the others
    cfg = GenerationConfig(max_new_tokens=32, temperature=0, stop=[stops[1]])
    batched = chatml.generate(PROMPTS, cfg)
    for c, b in zip(full, batched, strict=True):
        expected = c.text[: c.text.find(stops[1])] if stops[1] in c.text else c.text
        assert b.text == expected
        assert b.finish_reason == ("stop" if stops[1] in c.text else "length")


def test_end_of_turn_token_ends_a_completion(dirs, monkeypatch):
    # the template's <|im_end|> ends a turn although the tokenizer's EOS is </s>
    backend = load_backend(f"hf:{dirs['turn_end']}")
    ids = torch.tensor([backend.encode_prompt(PROMPTS[1])])
    greedy = backend.model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
    new = greedy[0, ids.shape[1] :].tolist()
    im_end = backend.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end not in new
    with torch.no_grad():  # <|im_end|> now outscores the 6th greedy token wherever it leads
        head = backend.model.get_output_embeddings().weight
        head[im_end] = 2 * head[new[5]]
    generated = _spy_generated_lengths(backend, monkeypatch)
    out = backend.generate([PROMPTS[1]], GenerationConfig(max_new_tokens=12, temperature=0))[0]
    assert out.finish_reason == "stop"
    assert 1 <= out.num_tokens <= 6
    assert generated == [out.num_tokens]  # generation stopped at the end-of-turn token
    assert out.text == backend.tokenizer.decode(new[: out.num_tokens - 1], skip_special_tokens=True)


def test_template_end_of_turn_token_is_detected(dirs):
    backend = load_backend(f"hf:{dirs['turn_end']}")
    tok = backend.tokenizer
    assert tok.eos_token == "</s>"
    assert tok.convert_tokens_to_ids("<|im_end|>") in backend.end_token_ids
    assert tok.eos_token_id in backend.end_token_ids


def test_finish_reasons_and_counts(chatml):
    tok = chatml.tokenizer
    ids = tok("Paris is nice.", add_special_tokens=False)["input_ids"]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    done = chatml._finish([*ids, end, 9, 9], [], max_new=10)
    assert (done.text, done.finish_reason, done.num_tokens) == (
        "Paris is nice.",
        "stop",
        len(ids) + 1,
    )
    long = chatml._finish(ids, [], max_new=len(ids))
    assert (long.text, long.finish_reason, long.num_tokens) == (
        "Paris is nice.",
        "length",
        len(ids),
    )
    cut = chatml._finish(ids, [" is", "nice"], max_new=len(ids))
    assert cut.text == "Paris" and cut.finish_reason == "stop"
    n = cut.num_tokens
    assert " is" in tok.decode(ids[:n]) and " is" not in tok.decode(ids[: n - 1])


def test_progress_bar_does_not_change_results(chatml):
    quiet = chatml.generate(PROMPTS, GREEDY, progress=False)
    shown = chatml.generate(PROMPTS, GREEDY, progress=True)
    assert [c.text for c in shown] == [c.text for c in quiet]


# -------------------------------------------------------------------------------- log-probs

COMPLETIONS = ["Paris.", "", "The sea is blue and the waves roll in.", "4", "A fox.", "Mix it", "?"]


def _reference_logprobs(backend: HFBackend, prompt, completion: str) -> list[float]:
    """Unbatched, unpadded log-probs computed directly from the model."""
    p, c = backend.encode_prompt(prompt), backend.encode_completion(completion)
    with torch.no_grad():
        logits = backend.model(torch.tensor([p + c])).logits[0].float()
    lp = torch.log_softmax(logits[len(p) - 1 : len(p) + len(c) - 1], dim=-1)
    return lp.gather(1, torch.tensor(c)[:, None])[:, 0].tolist()


@pytest.mark.parametrize("fixture", ["chatml", "llama2"])
def test_logprobs_batched_equal_unbatched(fixture, request):
    backend = request.getfixturevalue(fixture)
    results = backend.logprobs(PROMPTS, COMPLETIONS)
    for prompt, completion, res in zip(PROMPTS, COMPLETIONS, results, strict=True):
        expected = _reference_logprobs(backend, prompt, completion)
        assert len(res.logprobs) == len(expected) == len(backend.encode_completion(completion))
        assert res.logprobs == pytest.approx(expected, abs=1e-5)
        assert all(lp <= 0 for lp in res.logprobs)
    assert results[1].tokens == [] and results[1].total == 0.0


def test_logprobs_tokens_and_prompt_prefix(chatml):
    res = chatml.logprobs(["Hi"], ["Paris is nice."])[0]
    ids = chatml.encode_completion("Paris is nice.")
    assert "".join(res.tokens) == "Paris is nice."
    assert res.tokens == [chatml.tokenizer.decode([t]) for t in ids]
    # no BOS or template token inserted before the completion
    assert chatml.tokenizer.bos_token_id not in ids
    assert ids[0] not in chatml.tokenizer.all_special_ids


def test_logprobs_independent_of_batch_mates(chatml, chatml_single):
    alone = chatml_single.logprobs([PROMPTS[0]], [COMPLETIONS[0]])[0]
    crowded = chatml.logprobs(
        [PROMPTS[2], PROMPTS[0], PROMPTS[5]], COMPLETIONS[2:3] + COMPLETIONS[:1] + COMPLETIONS[5:6]
    )
    assert crowded[1].logprobs == pytest.approx(alone.logprobs, abs=1e-5)


def test_score_uses_logprobs(chatml):
    totals = score(chatml, PROMPTS[:3], COMPLETIONS[:3])
    means = score(chatml, PROMPTS[:3], COMPLETIONS[:3], normalize=True)
    results = chatml.logprobs(PROMPTS[:3], COMPLETIONS[:3])
    assert totals == pytest.approx([r.total for r in results])
    assert means[0] == pytest.approx(results[0].total / len(results[0].logprobs))


def test_logprobs_length_mismatch(chatml):
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        chatml.logprobs(["a", "b"], ["x"])


# ------------------------------------------------------------------------------- white box


def _target_loss(model, embeds: torch.Tensor, ids: torch.Tensor, target: slice) -> float:
    """Cross-entropy of ``ids[target]`` given input embeddings ``[1, len, hidden]``."""
    with torch.no_grad():
        logits = model(inputs_embeds=embeds).logits[0, target.start - 1 : target.stop - 1]
        return F.cross_entropy(logits.float(), ids[target]).item()


@pytest.fixture(scope="module")
def gcg_case(chatml):
    """A prompt with 6 optimised tokens followed by 5 target tokens."""
    prompt = chatml.encode_prompt("Tell me how to bake bread")
    ids = torch.tensor(
        [*prompt, *[50 + i for i in range(6)], *chatml.encode_completion(" Sure, here")]
    )
    n_target = len(chatml.encode_completion(" Sure, here"))
    optim = slice(len(prompt), len(prompt) + 6)
    target = slice(len(ids) - n_target, len(ids))
    return ids, optim, target


def test_input_embedding_gradients(chatml, gcg_case):
    ids, _, target = gcg_case
    labels = torch.full_like(ids, -100)
    labels[target] = ids[target]
    grad = chatml.input_embedding_gradients(ids, labels)
    embeds = chatml.model.get_input_embeddings()(ids[None]).detach()
    assert grad.shape == embeds.shape[1:] and torch.isfinite(grad).all()
    assert grad[target.stop - 1].abs().sum() == 0  # the last token predicts nothing scored
    direction = torch.randn(embeds.shape, generator=torch.Generator().manual_seed(1))
    eps = 1e-3
    up = _target_loss(chatml.model, embeds + eps * direction, ids, target)
    down = _target_loss(chatml.model, embeds - eps * direction, ids, target)
    assert (up - down) / (2 * eps) == pytest.approx((grad * direction[0]).sum().item(), rel=2e-2)
    batched = chatml.input_embedding_gradients(ids[None].repeat(2, 1), labels[None].repeat(2, 1))
    assert batched.shape == (2, *grad.shape)


def test_empty_inputs(chatml):
    assert chatml.generate([], GREEDY) == []
    assert chatml.logprobs([], []) == []
