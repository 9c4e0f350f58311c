"""The OpenAI-compatible backend, against a real ``transformers serve`` and a fault-injecting fake.

All traffic stays on 127.0.0.1. Retry tests use small budgets so the suite stays fast.
"""

from __future__ import annotations

import time
import traceback

import pytest
from servers import FaultServer, Reply, fake_logprob, fake_template, free_port, transformers_serve

from alignkit.errors import BackendError, DataError, UnsupportedError
from alignkit.models import ModelBackend, load_backend, score
from alignkit.models.base import BackendOptions, GenerationConfig, ModelSpec
from alignkit.models.openai_compat import OpenAIBackend
from alignkit.models.retry import RetryPolicy, parse_retry_after
from alignkit.models.sampling import prompt_key, request_seed, sample_key

FAST = RetryPolicy(max_retries=3, budget=5.0, base_delay=0.01, max_delay=0.05)
SECRET = "sk-alignkit-test-7f3a9c2e5b1d-DO-NOT-LEAK"
GREEDY = GenerationConfig(max_new_tokens=12, temperature=0.0)


def make_backend(
    url: str, model: str = "fake-model", probe: bool = False, retry=FAST, **options
) -> OpenAIBackend:
    spec = ModelSpec(kind="openai", model=model, base_url=url)
    return OpenAIBackend(spec, BackendOptions(**options), probe=probe, retry=retry)


# ----- a real server: transformers serve -----


def _serve_available() -> bool:
    from transformers.utils.import_utils import is_serve_available

    return is_serve_available()


@pytest.fixture(scope="module")
def served(testbed_path):
    """``transformers serve`` on the built-in testbed model (its generation config samples)."""
    if not _serve_available():
        pytest.skip("transformers[serving] (fastapi, uvicorn) is not installed")
    with transformers_serve(testbed_path) as server:
        yield server


def test_served_testbed_answers_like_the_local_backend(served, testbed_backend):
    """The same model behind a server and in-process gives the same greedy answers."""
    prompts = ["What is the capital of France?", "How do I make toast?"]
    remote = make_backend(served.base_url, served.model).generate(prompts, GREEDY)
    local = testbed_backend.generate(prompts, GREEDY)
    assert [c.text for c in remote] == [c.text for c in local]
    assert "Paris" in remote[0].text


def test_real_server_probe(served):
    backend = make_backend(served.base_url, served.model, probe=True)
    assert isinstance(backend, ModelBackend)
    assert backend.check() == [served.model]
    assert backend.supports_logprobs is False  # transformers serve gives no prompt log-probs
    backend.close()


def test_real_server_chat_generation_concurrent_equals_sequential(served):
    prompts = [
        "Hello",
        "What is two plus two?",
        "Tell me a joke.",
        [{"role": "user", "content": "Hi"}],
    ]
    parallel = make_backend(served.base_url, served.model, max_concurrency=4).generate(
        prompts, GREEDY
    )
    sequential = make_backend(served.base_url, served.model, max_concurrency=1).generate(
        prompts, GREEDY
    )
    assert parallel == sequential
    for completion in parallel:
        assert completion.text
        assert 1 <= completion.num_tokens <= GREEDY.max_new_tokens
        assert completion.finish_reason in ("stop", "length")
    assert len({c.text for c in parallel}) > 1  # different prompts, different answers


def test_real_server_seeds(served):
    backend = make_backend(served.base_url, served.model, max_concurrency=1)

    def sample(seed: int) -> str:
        config = GenerationConfig(max_new_tokens=24, temperature=1.0, seed=seed)
        return backend.generate(["Tell me a tiny story about the moon."], config)[0].text

    assert sample(1) == sample(1)
    assert len({sample(1), sample(2), sample(3)}) > 1


def test_real_server_logprobs_unsupported(served):
    chat = make_backend(served.base_url, served.model)
    with pytest.raises(UnsupportedError, match="tokenize") as info:
        chat.logprobs(["Hello"], [" there"])
    assert served.base_url in info.value.message
    text = make_backend(served.base_url, served.model, api="completions")
    with pytest.raises(UnsupportedError, match="no prompt log-probs"):
        text.logprobs(["Hello"], [" there"])


def test_real_server_completions_api(served):
    backend = make_backend(served.base_url, served.model, api="completions")
    [completion] = backend.generate(["The capital of France is"], GREEDY)
    assert completion.text and completion.num_tokens >= 1


def test_real_server_rejections_are_clear(served):
    backend = make_backend(served.base_url, served.model)
    with pytest.raises(UnsupportedError, match="top_k"):
        backend.generate(["Hello"], GenerationConfig(top_k=5))
    unknown = make_backend(served.base_url, "no-such-model")
    start = time.monotonic()
    with pytest.raises(BackendError, match="HTTP 400") as info:
        unknown.generate(["Hello"])
    assert "no-such-model" in info.value.message
    assert time.monotonic() - start < 5  # not retried


# ----- retries, against the fault server -----


def test_retries_5xx_then_succeeds():
    with FaultServer(failures=[Reply(500), Reply(503)]) as server:
        [completion] = make_backend(server.base_url).generate(["ping"])
        assert server.count("/v1/chat/completions") == 3
    assert completion.text == "echo: ping"


def test_retry_after_is_honoured():
    with FaultServer(failures=[Reply(429, {"Retry-After": "1"})]) as server:
        start = time.monotonic()
        [completion] = make_backend(server.base_url).generate(["ping"])
        elapsed = time.monotonic() - start
        assert server.count("/v1/chat/completions") == 2
    assert completion.text == "echo: ping"
    assert 0.95 <= elapsed < 3


def test_retry_after_is_capped_by_budget():
    policy = RetryPolicy(max_retries=10, budget=0.5, base_delay=0.01)
    with FaultServer(persistent=Reply(429, {"Retry-After": "30"})) as server:
        start = time.monotonic()
        with pytest.raises(BackendError, match="HTTP 429") as info:
            make_backend(server.base_url, retry=policy).generate(["ping"])
        elapsed = time.monotonic() - start
        assert server.count("/v1/chat/completions") == 2
    assert "retry budget of 0.5s spent" in info.value.message
    assert 0.45 <= elapsed < 3


def test_budget_bounds_total_backoff():
    """Many allowed retries, but sleeping stops once retry_budget seconds are spent."""
    with FaultServer(persistent=Reply(500)) as server:
        backend = make_backend(server.base_url, retry=None, max_retries=50, retry_budget=1.0)
        start = time.monotonic()
        with pytest.raises(BackendError, match="budget"):
            backend.generate(["ping"])
        elapsed = time.monotonic() - start
        assert 2 <= server.count("/v1/chat/completions") <= 5  # base delay 0.5s, doubling
    assert 0.95 <= elapsed < 2.5


def test_persistent_500_ends_in_clear_error():
    with FaultServer(persistent=Reply(500)) as server:
        with pytest.raises(BackendError) as info:
            make_backend(server.base_url).generate(["ping"])
        assert server.count("/v1/chat/completions") == FAST.max_retries + 1
    message = info.value.message
    assert server.base_url in message and "fake-model" in message
    assert "HTTP 500" in message and "after 3 retries" in message


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_are_not_retried(status):
    reply = Reply(status, body={"error": {"message": "model 'fake-model' not found"}})
    with FaultServer(persistent=reply) as server:
        with pytest.raises(BackendError, match=f"HTTP {status}: model 'fake-model' not found"):
            make_backend(server.base_url).generate(["ping"])
        assert server.count("/v1/chat/completions") == 1


def test_timeouts_are_retried():
    with FaultServer(delay=1.0) as server:
        backend = make_backend(server.base_url, timeout=0.2, retry=RetryPolicy(1, 1.0, 0.01))
        start = time.monotonic()
        with pytest.raises(BackendError, match=r"timed out after 0.2s after 1 retry"):
            backend.generate(["ping"])
        assert time.monotonic() - start < 3
        assert server.count("/v1/chat/completions") == 2


def test_server_down_fails_fast():
    url = f"http://127.0.0.1:{free_port()}/v1"
    start = time.monotonic()
    with pytest.raises(BackendError, match="could not connect") as info:
        load_backend(f"openai:some-model@{url}")  # the constructor's /models probe
    assert time.monotonic() - start < 2
    assert url in info.value.message

    backend = make_backend(url, retry=None, max_retries=3, retry_budget=2.0)
    start = time.monotonic()
    with pytest.raises(BackendError) as info:
        backend.generate(["ping"])
    assert time.monotonic() - start < 5
    assert info.value.message == f"could not connect to {url} (connection refused) after 3 retries"


# ----- concurrency -----


@pytest.mark.parametrize("limit", [1, 3])
def test_concurrency_limit(limit):
    prompts = [f"prompt {i}" for i in range(9)]
    with FaultServer(delay=0.15) as server:
        results = make_backend(server.base_url, max_concurrency=limit).generate(prompts)
        assert server.max_in_flight == limit
    assert [c.text for c in results] == [f"echo: {p}" for p in prompts]


def test_first_failure_stops_the_batch():
    with FaultServer(persistent=Reply(400), delay=0.05) as server:
        with pytest.raises(BackendError, match="HTTP 400"):
            make_backend(server.base_url, max_concurrency=2).generate(["p"] * 20)
        assert server.count("/v1/chat/completions") < 20


# ----- the API key -----


def test_api_key_is_sent_but_never_shown(monkeypatch, caplog):
    monkeypatch.setenv("ALIGNKIT_TEST_KEY", SECRET)
    with FaultServer(persistent=Reply(500), echo_auth=True) as server:
        backend = make_backend(server.base_url, api_key_env="ALIGNKIT_TEST_KEY")
        assert SECRET not in repr(backend) and SECRET not in str(backend)
        with caplog.at_level("DEBUG"), pytest.raises(BackendError) as info:
            backend.generate(["ping"])
        assert server.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    shown = "".join(traceback.format_exception(info.value)) + caplog.text
    assert "bad auth Bearer ***" in info.value.message  # the server echoed it; we masked it
    assert SECRET not in shown

    refuse_key = FaultServer(persistent=Reply(401), echo_auth=True, fault_paths=("/v1/models",))
    with refuse_key as server:
        with pytest.raises(BackendError, match="ALIGNKIT_TEST_KEY") as info:
            make_backend(server.base_url, probe=True, api_key_env="ALIGNKIT_TEST_KEY")
        assert SECRET not in info.value.message and "HTTP 401" in info.value.message


def test_dummy_key_when_unset(monkeypatch):
    monkeypatch.delenv("ALIGNKIT_UNSET_KEY", raising=False)
    with FaultServer() as server:
        make_backend(server.base_url, api_key_env="ALIGNKIT_UNSET_KEY").generate(["ping"])
        assert server.requests[0]["headers"]["authorization"] == "Bearer EMPTY"


# ----- requests and answers -----


def test_generation_config_mapping():
    config = GenerationConfig(max_new_tokens=7, temperature=0.7, top_p=0.9, seed=3, stop=["\n"])
    with FaultServer() as server:
        make_backend(server.base_url, system_prompt="Be brief.").generate(["ping"], config)
        make_backend(server.base_url).generate(["ping"], GenerationConfig(top_k=4, seed=None))
        first, second = (r["body"] for r in server.requests)
    assert first["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "ping"},
    ]
    seed = request_seed(sample_key(3, prompt_key("ping")))  # the per-prompt rule, not 3 itself
    expected = {"max_tokens": 7, "temperature": 0.7, "top_p": 0.9, "seed": seed, "stop": ["\n"]}
    assert {k: first[k] for k in expected} == expected
    assert first["logprobs"] is True and "top_k" not in first
    assert second["top_k"] == 4 and "seed" not in second and "stop" not in second


def test_completion_fields():
    with FaultServer() as server:
        backend = make_backend(server.base_url)
        full, cut = backend.generate(["a b", "a b c d e"], GenerationConfig(max_new_tokens=3))
        [stopped] = backend.generate(["x y z"], GenerationConfig(stop=[" y"]))
    assert (full.text, full.finish_reason, full.num_tokens) == ("echo: a b", "stop", 3)
    assert full.token_logprobs == [-0.5] * 3
    assert (cut.text, cut.finish_reason) == ("echo: a b", "length")
    assert stopped.text == "echo: x"  # the stop string the server kept is dropped


def test_server_refusing_logprobs_is_asked_again_without():
    refusal = Reply(400, body={"error": {"message": "logprobs is not supported"}})
    with FaultServer(failures=[refusal]) as server:
        backend = make_backend(server.base_url)
        [first] = backend.generate(["ping"])
        [second] = backend.generate(["pong"])
        bodies = [r["body"] for r in server.requests]
    assert first.text == "echo: ping" and first.token_logprobs is None
    assert second.text == "echo: pong"
    assert ["logprobs" in b for b in bodies] == [True, False, False]


def test_completions_api_takes_text_only():
    with FaultServer() as server:
        backend = make_backend(server.base_url, api="completions")
        [completion] = backend.generate(["abc"], GenerationConfig(max_new_tokens=2))
        assert completion.text == "!!" and completion.finish_reason == "length"
        with pytest.raises(UnsupportedError, match="prompt 1 is a list of chat messages"):
            backend.generate(["abc", [{"role": "user", "content": "hi"}]])
        assert server.count("/v1/completions") == 1


# ----- scoring -----


def expected_scores(completion: str) -> list[float]:
    return [fake_logprob(ord(c)) for c in completion]


def test_scoring_chat_mode_through_tokenize():
    prompts = ["hi", [{"role": "user", "content": "2+2?"}]]
    completions = ["ok!", "four"]
    with FaultServer() as server:
        backend = make_backend(server.base_url, probe=True, system_prompt="S")
        assert backend.supports_logprobs is True
        results = backend.logprobs(prompts, completions)
        totals = score(backend, prompts, completions)
        tokenized = [r["body"] for r in server.requests if r["path"] == "/tokenize"]
    for result, completion in zip(results, completions, strict=True):
        assert result.tokens == list(completion)
        assert result.logprobs == pytest.approx(expected_scores(completion))
    assert totals == pytest.approx([sum(expected_scores(c)) for c in completions])
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "2+2?"}]
    assert fake_template(messages, True) == "<system>S<user>2+2?<assistant>"
    reply = {"role": "assistant", "content": "four"}
    assert {"model": "fake-model", "messages": messages, "add_generation_prompt": True} in tokenized
    assert {
        "model": "fake-model",
        "messages": [*messages, reply],
        "add_generation_prompt": False,
        "continue_final_message": True,
    } in tokenized


def test_scoring_text_mode_by_offsets():
    with FaultServer() as server:
        backend = make_backend(server.base_url, probe=True, api="completions")
        assert backend.supports_logprobs is True
        [result] = backend.logprobs(["Question: 2+2? Answer:"], [" four"])
    assert result.tokens == list(" four")
    assert result.logprobs == pytest.approx(expected_scores(" four"))


def test_scoring_unsupported_server():
    with FaultServer(scoring=False) as server:
        chat = make_backend(server.base_url, probe=True)
        text = make_backend(server.base_url, probe=True, api="completions")
        assert chat.supports_logprobs is False and text.supports_logprobs is False
        with pytest.raises(UnsupportedError, match="HTTP 404"):
            chat.logprobs(["hi"], ["ok"])
        with pytest.raises(UnsupportedError, match="no prompt log-probs"):
            text.logprobs(["hi"], ["ok"])


def test_scoring_needs_one_completion_per_prompt():
    with FaultServer() as server, pytest.raises(DataError, match="2 prompts but 1 completions"):
        make_backend(server.base_url).logprobs(["a", "b"], ["x"])


# ----- construction -----


def test_load_backend_builds_and_probes():
    with FaultServer() as server:
        backend = load_backend(f"openai:fake-model@{server.base_url}", max_concurrency=2)
        assert isinstance(backend, OpenAIBackend) and isinstance(backend, ModelBackend)
        assert backend.name == f"openai:fake-model@{server.base_url}"
        assert backend.supports_logprobs is True
        assert [r["path"] for r in server.requests][0] == "/v1/models"
        backend.close()


def test_parse_retry_after():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a past date
    policy = RetryPolicy(base_delay=1.0, max_delay=4.0)
    delays = [policy.backoff(i) for i in range(6)]
    assert all(0.5 * min(4, 2**i) <= d <= min(4, 2**i) for i, d in enumerate(delays))


def test_sampled_evaluation_through_the_server_matches_local(served, testbed_backend, tmp_path):
    """Issue 19: a sampled evaluation (temperature 1) of the testbed through `transformers
    serve` gives the local backend's figures within their intervals. It read honest 0.00
    against 0.45 when every request carried the same seed (every prompt drew the same random
    numbers); now each request's seed comes from the run seed and its prompt."""
    from alignkit.evaluation.alignment import AlignmentEvaluator
    from alignkit.pipeline.headline import headline

    generation = GenerationConfig(max_new_tokens=48, temperature=1.0, seed=0)
    remote = make_backend(served.base_url, served.model, max_concurrency=4)
    figures = {}
    for name, backend in (("served", remote), ("local", testbed_backend)):
        evaluator = AlignmentEvaluator(
            backend, "testbed", ["testbed"], n=25, seed=0, generation=generation, cache=False
        )
        figures[name] = headline(evaluator.run(tmp_path / name))["figures"]
    for key in ("harmful_compliance", "jailbreak_asr", "helpful", "honest"):
        served_fig, local = figures["served"][key], figures["local"][key]
        assert served_fig["n"] == local["n"] == 25
        assert local["low"] <= served_fig["value"] <= local["high"], (key, figures)
        assert served_fig["low"] <= local["value"] <= served_fig["high"], (key, figures)


def test_two_real_replicas_answer_as_one_server(served):
    """Two `transformers serve` processes of the testbed behind one model string give what one
    gives, greedy and sampled (each request carries its own seed), and both are used."""
    prompts = [f"What is {i} plus {i}?" for i in range(8)] + ["How do I bake bread?"] * 2
    sampled = GenerationConfig(max_new_tokens=24, temperature=1.0, seed=3)
    with transformers_serve(served.model) as second:
        both = make_backend(f"{served.base_url},{second.base_url}", served.model, max_concurrency=2)
        one = make_backend(served.base_url, served.model, max_concurrency=2)
        for config in (GREEDY, sampled):
            assert [c.text for c in both.generate(prompts, config)] == [
                c.text for c in one.generate(prompts, config)
            ]
        # The split follows the replicas' speed (least in flight), which depends on the
        # machine's load: only "both took part" is asserted here; the balance is asserted
        # with fake servers in test_openai_replicas.py.
        sent = [r["sent"] for r in both.replica_stats()]
        assert sum(sent) >= 2 * len(prompts) and min(sent) >= 2, sent
