"""A model backend for any OpenAI-compatible server (vLLM, Ollama, llama.cpp, transformers serve).

Model string: ``openai:MODEL@BASE_URL``, e.g.
``openai:Qwen/Qwen2.5-0.5B-Instruct@http://localhost:8000/v1``; replicas of the same model as
``openai:MODEL@URL1,URL2,...`` (:mod:`alignkit.models.endpoints`: each request to the least
busy replica, retries away from a failing one).

* Generation sends one request per prompt, at most ``options.max_concurrency`` at a time per
  replica,
  through the official ``openai`` client (its own retries off: :mod:`alignkit.models.retry`
  retries 429 / 5xx / connection errors with backoff, within ``options.retry_budget``).
  Requests of one call succeed or fail one by one, so a failure never throws away answers
  already received: :meth:`OpenAIBackend.generate_each` gives each prompt its completion or
  its error, and :meth:`OpenAIBackend.generate` raises a :class:`PartialBatchError` carrying
  the completions that did arrive when some requests of the call failed.
* ``options.api='chat'`` sends chat messages (the server applies the chat template);
  ``'completions'`` sends plain-text prompts to the legacy completions endpoint.
* The API key is read from the environment variable ``options.api_key_env``; local servers
  usually need none, and a dummy key is sent when it is unset. The key never appears in
  ``repr()``, logs or error messages.
* Fail fast: the constructor (``probe=True``, the default, which :func:`load_backend` uses)
  asks the server for ``/models`` once, so a server that is down fails in well under a second
  with a :class:`BackendError` naming its URL, before any long work starts; the same probe
  finds out whether the server can score given completions (``supports_logprobs``).
* Scoring (:meth:`OpenAIBackend.logprobs`) needs prompt log-probs, which only some servers
  give: the completions endpoint with ``echo=True`` and ``logprobs`` (vLLM). In chat mode the
  chat template is applied by the server's ``/tokenize`` endpoint (vLLM), and the token ids are
  then scored with ``echo``. Servers without these (``transformers serve``, the OpenAI API)
  raise :class:`UnsupportedError`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import openai

from alignkit.errors import AlignkitError, BackendError, ModelError, UnsupportedError
from alignkit.models.base import (
    BackendOptions,
    Completion,
    GenerationConfig,
    Message,
    ModelSpec,
    Prompt,
    as_messages,
)
from alignkit.models.endpoints import Endpoint, EndpointPool
from alignkit.models.openai_scoring import ServerScoring
from alignkit.models.retry import (
    PartialBatchError,
    RequestContext,
    RetryPolicy,
    call_each,
    call_with_retries,
    describe_failure,
)
from alignkit.models.sampling import request_seed, sample_keys

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

DUMMY_API_KEY = "EMPTY"
"""Sent when the API-key variable is unset: local servers ignore it, the client needs one."""

PROBE_TIMEOUT = 10.0
"""Most seconds the fail-fast ``/models`` probe waits."""


class OpenAIBackend(ServerScoring):
    """A :class:`~alignkit.models.base.ModelBackend` talking to an OpenAI-compatible server.

    Args:
        spec: a parsed ``openai:MODEL@BASE_URL`` model string.
        options: backend options; this backend reads ``api``, ``api_key_env``,
            ``system_prompt``, ``max_concurrency``, ``timeout``, ``max_retries`` and
            ``retry_budget``.
        probe: contact the server now (``/models``, then one tiny scoring request) so that a
            server that is down fails here, and ``supports_logprobs`` is known. With
            ``probe=False`` nothing is sent until the first call, and ``supports_logprobs``
            stays False until :meth:`probe_logprobs` or a successful :meth:`logprobs` call.
        retry: the retry policy; by default built from ``options``.
    """

    def __init__(
        self,
        spec: ModelSpec,
        options: BackendOptions | None = None,
        *,
        probe: bool = True,
        retry: RetryPolicy | None = None,
    ) -> None:
        if spec.kind != "openai" or not spec.model or not spec.base_url:
            raise ModelError(f"OpenAIBackend needs an openai:MODEL@BASE_URL model, got {spec}")
        self.spec = spec
        self.options = options or BackendOptions()
        self.name = str(spec)
        self.model = spec.model
        self.base_urls = [url.rstrip("/") for url in spec.base_urls]
        self.base_url = ",".join(self.base_urls)
        self.api = self.options.api
        key = os.environ.get(self.options.api_key_env) or None
        self._redact = _redactor(key)
        self._pool = EndpointPool(
            self.base_urls,
            lambda url: openai.OpenAI(
                base_url=url,
                api_key=key or DUMMY_API_KEY,
                max_retries=0,
                timeout=self.options.timeout,
            ),
        )
        self.retry = retry or RetryPolicy(
            max_retries=self.options.max_retries, budget=self.options.retry_budget
        )
        self._context = RequestContext(
            base_url=self.base_url,
            model=self.model,
            timeout=self.options.timeout,
            redact=self._redact,
        )
        self._ask_logprobs = True
        self.supports_logprobs = False
        if probe:
            try:
                self.check()
                self.probe_logprobs()
            except BaseException:
                self.close()
                raise

    def __repr__(self) -> str:
        return (
            f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r}, api={self.api!r}, "
            f"api_key_env={self.options.api_key_env!r})"
        )

    # ----- health -----

    def check(self) -> list[str]:
        """Ask every replica for ``/models`` once (no retries, short timeout).

        Returns the model ids the first lists. Raises :class:`BackendError` when a replica
        cannot be reached or refuses the API key; other answers (e.g. a server without
        ``/models``) only log a warning, as does a model list that lacks this backend's model.
        """
        lists = [self._check(endpoint) for endpoint in self._pool.endpoints]
        return lists[0]

    def _check(self, endpoint: Endpoint) -> list[str]:
        timeout = min(self.options.timeout, PROBE_TIMEOUT)
        url = endpoint.base_url
        context = dataclasses.replace(self._context, timeout=timeout, base_url=url)
        try:
            listed = [
                m.id for m in endpoint.client.with_options(timeout=timeout).models.list().data
            ]
        except openai.APIConnectionError as exc:
            raise context.error("model list request", exc) from None
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403):
                note = f"check the API key in ${self.options.api_key_env}"
                raise context.error("model list request", exc, note=note) from None
            logger.warning("%s", self._redact(f"{url}/models: {describe_failure(exc, 0)}"))
            return []
        if listed and self.model not in listed:
            logger.warning(
                "server %s does not list model %r (it lists %s); requests may fail",
                url,
                self.model,
                ", ".join(repr(m) for m in listed[:10]),
            )
        return listed

    def probe_logprobs(self) -> bool:
        """Find out (with one tiny scoring request) whether the server can score completions."""
        try:
            self._score_one((self._render(0, "Hi"), " there"))
        except UnsupportedError as exc:
            logger.info("%s", exc.message)
            self.supports_logprobs = False
        except BackendError as exc:
            logger.warning("could not tell whether the server gives log-probs: %s", exc.message)
            self.supports_logprobs = False
        else:
            self.supports_logprobs = True
        return self.supports_logprobs

    # ----- generation -----

    def generate(
        self, prompts: Sequence[Prompt], config: GenerationConfig | None = None
    ) -> list[Completion]:
        """One completion per prompt, in order; up to ``max_concurrency`` requests in flight.

        Each request carries its own ``seed``, derived from (``config.seed``, the prompt, its
        occurrence among equal prompts of this call) by the rule of
        :mod:`alignkit.models.sampling`, so on a server that seeds requests one by one (vLLM) a
        sample does not depend on the other prompts, and equal prompts get distinct samples.
        ``seed=None`` sends no seed.
        """
        config = config or GenerationConfig()
        inputs = [self._render(i, p) for i, p in enumerate(prompts)]
        outcomes = self._generate(prompts, inputs, config, stop_on_error=True)
        errors = [o if isinstance(o, AlignkitError) else None for o in outcomes]
        if not any(errors):
            return outcomes  # type: ignore[return-value]
        completions = [o if isinstance(o, Completion) else None for o in outcomes]
        if not any(completions):
            raise next(e for e in errors if e is not None)
        raise PartialBatchError(completions, errors)

    def generate_each(
        self, prompts: Sequence[Prompt], config: GenerationConfig | None = None
    ) -> list[Completion | AlignkitError]:
        """Like :meth:`generate`, but every prompt is sent whatever happens to the others, and
        each gets its completion or the error that ended its request (after retries): one
        failing request costs only its own prompt. A :class:`TransientBackendError` (429, 5xx,
        no connection) may go away if sent again; other errors would fail the same way."""
        config = config or GenerationConfig()
        inputs = [_rendered(self._render, i, p) for i, p in enumerate(prompts)]
        return self._generate(prompts, inputs, config, stop_on_error=False)  # type: ignore[return-value]

    def _generate(
        self,
        prompts: Sequence[Prompt],
        inputs: Sequence[Any],
        config: GenerationConfig,
        stop_on_error: bool,
    ) -> list[Completion | AlignkitError | None]:
        """Send one request per rendered input (an error in ``inputs`` stands for itself)."""
        params = _sampling_params(config)
        if config.seed is None:
            requests = [(item, params) for item in inputs]
        else:
            seeds = [request_seed(key) for key in sample_keys(prompts, config.seed)]
            requests = [(item, params | {"seed": s}) for item, s in zip(inputs, seeds, strict=True)]

        def one(request: tuple[Any, dict[str, Any]]) -> Completion:
            item, request_params = request
            if isinstance(item, AlignkitError):
                raise item
            completion = self._complete(item, request_params)
            completion.text = _strip_stop(completion.text, config.stop)
            return completion

        return self._outcomes(one, requests, stop_on_error)

    def _render(self, index: int, prompt: Prompt) -> str | list[Message]:
        """Chat messages (chat API) or the prompt text (completions API) of one prompt."""
        system = self.options.system_prompt
        if self.api == "chat":
            return as_messages(prompt, system)
        if not isinstance(prompt, str):
            raise UnsupportedError(
                f"prompt {index} is a list of chat messages, but {self.name} uses "
                "api='completions', which takes plain-text prompts: pass strings, or use api='chat'"
            )
        return f"{system}\n\n{prompt}" if system else prompt

    def _complete(self, item: str | list[Message], params: dict[str, Any]) -> Completion:
        """Send one generation request (with retries) and parse its answer."""

        def send(endpoint: Endpoint) -> Any:
            try:
                return self._create(endpoint, item, params, self._ask_logprobs)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                detail = str(exc.body or exc.message)
                if "top_k" in params.get("extra_body", {}) and "top_k" in detail:
                    message = (
                        f"server {endpoint.base_url} rejects top_k (it is not an OpenAI API "
                        f"field; the server said: {describe_failure(exc, 0)}): use top_k=0"
                    )
                    raise UnsupportedError(self._redact(message)) from None
                if not (self._ask_logprobs and "logprob" in detail.lower()):
                    raise
                logger.info("server %s refuses logprobs; asking without them", endpoint.base_url)
                self._ask_logprobs = False
                return self._create(endpoint, item, params, False)

        response = self._call(send, f"{self.api} request")
        if not response.choices:
            raise BackendError(
                f"server {self.base_url} returned no choices for model {self.model!r}"
            )
        choice = response.choices[0]
        if self.api == "chat":
            text = choice.message.content or ""
            content = choice.logprobs.content if choice.logprobs else None
            token_logprobs = [float(t.logprob) for t in content] if content else None
        else:
            text = choice.text or ""
            values = choice.logprobs.token_logprobs if choice.logprobs else None
            token_logprobs = [float(v) for v in values if v is not None] if values else None
        usage = getattr(response, "usage", None)
        num_tokens = usage.completion_tokens if usage else len(token_logprobs or [])
        finish = "length" if choice.finish_reason == "length" else "stop"
        return Completion(text, finish, int(num_tokens or 0), token_logprobs)

    def _create(
        self, endpoint: Endpoint, item: str | list[Message], params: dict[str, Any], logprobs: bool
    ) -> Any:
        client = endpoint.client
        if self.api == "chat":
            extra = {"logprobs": True} if logprobs else {}
            return client.chat.completions.create(
                model=self.model, messages=item, **params, **extra
            )
        extra = {"logprobs": 1} if logprobs else {}
        return client.completions.create(model=self.model, prompt=item, **params, **extra)

    # ----- plumbing -----

    def _call(self, send: Callable[[Endpoint], T], what: str) -> T:
        """``send(endpoint)`` (one HTTP request) on the replica the pool picks, retried by
        :attr:`retry`; with several replicas a retry goes to another at once when one is idle
        (no backoff wait), and errors name the replica of the last attempt."""
        tried: list[Endpoint] = []

        def attempt() -> T:
            with self._pool.use() as endpoint:
                tried.append(endpoint)
                return send(endpoint)

        def context() -> RequestContext:
            url = tried[-1].base_url if tried else self.base_url
            return dataclasses.replace(self._context, base_url=url)

        def wait(seconds: float) -> None:
            if not self._pool.idle_replica():
                time.sleep(seconds)

        return call_with_retries(attempt, self.retry, context, what, sleep=wait)

    def replica_stats(self) -> list[dict[str, Any]]:
        """Requests sent to and failed on each replica (``url``, ``sent``, ``failed``)."""
        return self._pool.stats()

    def _outcomes(
        self, fn: Callable[[T], R], items: Sequence[T], stop_on_error: bool
    ) -> list[R | AlignkitError | None]:
        workers = min(self.options.max_concurrency * len(self._pool), len(items))
        return call_each(fn, items, workers, stop_on_error, "alignkit-openai")

    def _map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``[fn(x) for x in items]`` with at most ``max_concurrency`` calls at once; the
        first error stops the sending and is raised."""
        outcomes = self._outcomes(fn, items, stop_on_error=True)
        for outcome in outcomes:
            if isinstance(outcome, AlignkitError):
                raise outcome
        return outcomes  # type: ignore[return-value]

    def close(self) -> None:
        """Close the HTTP clients."""
        self._pool.close()

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sampling_params(config: GenerationConfig) -> dict[str, Any]:
    """OpenAI request fields for a :class:`GenerationConfig` (the per-request seed aside)."""
    params: dict[str, Any] = {
        "max_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
    }
    if config.stop:
        params["stop"] = list(config.stop)
    if config.top_k:
        params["extra_body"] = {"top_k": config.top_k}
    return params


def _rendered(render: Callable[[int, Prompt], Any], index: int, prompt: Prompt) -> Any:
    """The rendered prompt, or the error that refused it (it then stands for the request)."""
    try:
        return render(index, prompt)
    except UnsupportedError as exc:
        return exc


def _strip_stop(text: str, stop: Sequence[str]) -> str:
    """Drop a stop string the server left at the end (``transformers serve`` keeps it)."""
    for marker in stop:
        if marker and text.endswith(marker):
            return text[: -len(marker)]
    return text


def _redactor(secret: str | None) -> Callable[[str], str]:
    """A function that masks ``secret`` in a text (identity when there is no secret)."""
    if not secret:
        return lambda text: text
    return lambda text: text.replace(secret, "***")
