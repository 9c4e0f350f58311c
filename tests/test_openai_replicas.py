"""Replicas of one model behind one model string (``openai:MODEL@URL1,URL2``): requests are
spread over them, a failing replica is passed over at once, and what is sampled does not
depend on which replica answered. All servers are fakes on 127.0.0.1."""

from __future__ import annotations

import time
from contextlib import ExitStack

import pytest
from servers import FaultServer, Reply, free_port

from alignkit.errors import BackendError, ModelError
from alignkit.models import load_backend
from alignkit.models.base import BackendOptions, GenerationConfig, ModelSpec
from alignkit.models.endpoints import EndpointPool
from alignkit.models.openai_compat import OpenAIBackend
from alignkit.models.retry import RetryPolicy

PROMPTS = [f"prompt {i}" for i in range(12)] + ["prompt 0"]  # an equal prompt: its own seed
SAMPLED = GenerationConfig(max_new_tokens=8, temperature=1.0, seed=7)
SLOW_RETRIES = RetryPolicy(max_retries=3, budget=30.0, base_delay=5.0, max_delay=5.0)


def backend(urls: list[str], retry=SLOW_RETRIES, **options) -> OpenAIBackend:
    spec = ModelSpec.parse("openai:fake-model@" + ",".join(urls))
    return OpenAIBackend(spec, BackendOptions(**options), probe=False, retry=retry)


def sent(*servers: FaultServer) -> list[tuple[str, int]]:
    """(prompt, seed) of every generation request the servers received, sorted."""
    bodies = [r["body"] for s in servers for r in s.requests if r["path"].endswith("completions")]
    return sorted((b["messages"][-1]["content"], b["seed"]) for b in bodies)


def test_model_string_with_replicas():
    spec = ModelSpec.parse("openai:m@http://a:8000/v1, http://b:8000/v1/")
    assert spec.base_urls == ["http://a:8000/v1", "http://b:8000/v1/"]
    assert ModelSpec.parse(str(spec)) == spec
    assert ModelSpec.parse("openai:m@http://a/v1").base_urls == ["http://a/v1"]
    with pytest.raises(ModelError, match="MODEL@URL1,URL2"):
        ModelSpec.parse("openai:m@http://a/v1,b/v1")
    with pytest.raises(ModelError, match="same URL twice"):
        ModelSpec.parse("openai:m@http://a/v1,http://a/v1/")


def test_requests_are_spread_and_answers_do_not_depend_on_the_replica():
    with ExitStack() as stack:
        one = stack.enter_context(FaultServer(delay=0.05))
        a, b = (stack.enter_context(FaultServer(delay=0.05)) for _ in range(2))
        alone = backend([one.base_url], max_concurrency=2).generate(PROMPTS, SAMPLED)
        pair = backend([a.base_url, b.base_url], max_concurrency=2)
        together = pair.generate(PROMPTS, SAMPLED)
        assert [c.text for c in together] == [c.text for c in alone]
        assert sent(a, b) == sent(one)  # the same request, and seed, for every prompt
        counts = [s.count("/v1/chat/completions") for s in (a, b)]
        assert sum(counts) == len(PROMPTS) and min(counts) >= 4, counts
        assert a.max_in_flight <= 2 and b.max_in_flight <= 2  # max_concurrency per replica
        assert max(a.max_in_flight, b.max_in_flight) == 2
        assert [r["sent"] for r in pair.replica_stats()] == counts


def test_a_failing_replica_is_passed_over_without_waiting():
    """Every request that meets the broken replica is retried at once on the healthy one (the
    retry policy would otherwise wait 5 s), and the broken one is left alone while it cools."""
    with FaultServer(persistent=Reply(503)) as broken, FaultServer() as healthy:
        start = time.monotonic()
        pair = backend([broken.base_url, healthy.base_url], max_concurrency=1)
        results = pair.generate(PROMPTS, SAMPLED)
        assert time.monotonic() - start < 4.0
        assert all(c.text for c in results)
        assert healthy.count("/v1/chat/completions") == len(PROMPTS)
        assert broken.count("/v1/chat/completions") == 1  # then cooling down: not asked again
        assert pair.replica_stats()[0] == {"url": broken.base_url, "sent": 1, "failed": 1}


def test_a_replica_that_is_down_fails_fast_by_name():
    down = f"http://127.0.0.1:{free_port()}/v1"
    with FaultServer() as up, pytest.raises(BackendError, match=f"could not connect to {down}"):
        load_backend(f"openai:fake-model@{up.base_url},{down}")


def test_when_every_replica_fails_the_error_names_the_last_one_tried():
    fast = RetryPolicy(max_retries=2, budget=1.0, base_delay=0.01, max_delay=0.02)
    with FaultServer(persistent=Reply(500)) as a, FaultServer(persistent=Reply(500)) as b:
        with pytest.raises(BackendError, match=r"HTTP 500.* after 2 retries") as caught:
            backend([a.base_url, b.base_url], retry=fast).generate(["p"], SAMPLED)
        assert a.base_url in str(caught.value) or b.base_url in str(caught.value)
        assert a.count("/v1/chat/completions") + b.count("/v1/chat/completions") == 3


def test_pool_prefers_idle_and_healthy_replicas():
    now = [0.0]
    pool = EndpointPool(["u1", "u2"], lambda url: _Closable(), cooldown=5.0, clock=lambda: now[0])
    first, second = pool.acquire(), pool.acquire()
    assert {first.base_url, second.base_url} == {"u1", "u2"}  # the idle one first
    pool.release(first, _transient())
    pool.release(second)
    assert pool.acquire().base_url == second.base_url  # first is cooling down
    now[0] = 6.0
    assert pool.acquire().base_url == first.base_url  # cooled: it has fewer in flight
    pool.close()


class _Closable:
    def close(self) -> None:
        pass


def _transient() -> Exception:
    import httpx
    import openai

    request = httpx.Request("POST", "http://u1/v1/chat/completions")
    return openai.APIStatusError("busy", response=httpx.Response(503, request=request), body=None)


def test_cli_generates_through_replicas(tmp_path):
    from typer.testing import CliRunner

    from alignkit.cli import app

    out = tmp_path / "out.jsonl"
    with FaultServer() as a, FaultServer() as b:
        model = f"openai:fake-model@{a.base_url},{b.base_url}"
        args = ["generate", "--model", model, "--output", str(out), "--max-new-tokens", "8"]
        args += [arg for i in range(6) for arg in ("--prompt", f"question {i}")]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert a.count("/v1/chat/completions") > 0 and b.count("/v1/chat/completions") > 0
    assert len(out.read_text().splitlines()) == 6


def test_adding_a_replica_keeps_cached_calls_and_finished_stages(tmp_path):
    """Replicas serve the model of the first URL: the evaluation cache's model identity and the
    pipeline's stage identities leave the others out (the same cache entries are read and no
    finished stage is refused after a replica is added); another first URL is another model."""
    from types import SimpleNamespace

    from alignkit.evaluation.cache import model_identity
    from alignkit.pipeline.config import STAGES, PipelineConfig
    from alignkit.pipeline.runner import AlignmentPipeline

    one, two, other = (
        "openai:m@http://a/v1",
        "openai:m@http://a/v1,http://b/v1",
        "openai:m@http://b/v1",
    )
    assert ModelSpec.parse(two).identity == one and ModelSpec.parse(one).identity == one

    def cached(model: str) -> str | None:
        return model_identity(SimpleNamespace(spec=ModelSpec.parse(model), options=None))

    assert cached(two) == cached(one) != cached(other)

    def stages(model: str) -> dict[str, str]:
        config = PipelineConfig(
            model="testbed",
            serve_model=model,
            output_dir=str(tmp_path),
            redteam={"attacks": ["templates"]},
        )
        pipeline = AlignmentPipeline(config)
        return {stage: pipeline.identity(stage, {}) for stage in STAGES}

    assert stages(two) == stages(one)
    assert all(
        mine != theirs
        for mine, theirs in zip(stages(other).values(), stages(one).values(), strict=True)
    )
