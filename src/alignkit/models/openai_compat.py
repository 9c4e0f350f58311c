"""A model backend for any OpenAI-compatible server (vLLM, Ollama, llama.cpp, transformers serve).

Model string: ``openai:MODEL@BASE_URL``, e.g.
``openai:Qwen/Qwen2.5-0.5B-Instruct@http://localhost:8000/v1``.

* Generation sends one request per prompt, at most ``options.max_concurrency`` at a time,
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
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import openai

from alignkit.errors import AlignkitError, BackendError, DataError, ModelError, UnsupportedError
from alignkit.models.base import (
    BackendOptions,
    Completion,
    GenerationConfig,
    Message,
    ModelSpec,
    Prompt,
    TokenLogprobs,
    as_messages,
)
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

UNSUPPORTED_STATUS = frozenset({400, 404, 405, 422, 501})
"""Answers to a scoring request that mean 'this server cannot do that'."""


class OpenAIBackend:
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
        self.base_url = spec.base_url.rstrip("/")
        self.api = self.options.api
        key = os.environ.get(self.options.api_key_env) or None
        self._redact = _redactor(key)
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=key or DUMMY_API_KEY,
            max_retries=0,
            timeout=self.options.timeout,
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
        """Ask the server for ``/models`` once (no retries, short timeout).

        Returns the model ids it lists. Raises :class:`BackendError` when the server cannot
        be reached or refuses the API key; other answers (e.g. a server without ``/models``)
        only log a warning, as does a model list that lacks this backend's model.
        """
        timeout = min(self.options.timeout, PROBE_TIMEOUT)
        context = dataclasses.replace(self._context, timeout=timeout)
        try:
            listed = [m.id for m in self._client.with_options(timeout=timeout).models.list().data]
        except openai.APIConnectionError as exc:
            raise context.error("model list request", exc) from None
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403):
                note = f"check the API key in ${self.options.api_key_env}"
                raise context.error("model list request", exc, note=note) from None
            logger.warning(
                "%s", self._redact(f"{self.base_url}/models: {describe_failure(exc, 0)}")
            )
            return []
        if listed and self.model not in listed:
            logger.warning(
                "server %s does not list model %r (it lists %s); requests may fail",
                self.base_url,
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

        def send() -> Any:
            try:
                return self._create(item, params, self._ask_logprobs)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                detail = str(exc.body or exc.message)
                if "top_k" in params.get("extra_body", {}) and "top_k" in detail:
                    message = (
                        f"server {self.base_url} rejects top_k (it is not an OpenAI API field; "
                        f"the server said: {describe_failure(exc, 0)}): use top_k=0"
                    )
                    raise UnsupportedError(self._redact(message)) from None
                if not (self._ask_logprobs and "logprob" in detail.lower()):
                    raise
                logger.info("server %s refuses logprobs; asking without them", self.base_url)
                self._ask_logprobs = False
                return self._create(item, params, False)

        response = call_with_retries(send, self.retry, self._context, f"{self.api} request")
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

    def _create(self, item: str | list[Message], params: dict[str, Any], logprobs: bool) -> Any:
        if self.api == "chat":
            extra = {"logprobs": True} if logprobs else {}
            return self._client.chat.completions.create(
                model=self.model, messages=item, **params, **extra
            )
        extra = {"logprobs": 1} if logprobs else {}
        return self._client.completions.create(model=self.model, prompt=item, **params, **extra)

    # ----- scoring -----

    def logprobs(
        self, prompts: Sequence[Prompt], completions: Sequence[str]
    ) -> list[TokenLogprobs]:
        """Log-probs of each completion's tokens given its prompt (as the assistant turn).

        Raises :class:`UnsupportedError` when the server gives no prompt log-probs.
        """
        if len(prompts) != len(completions):
            raise DataError(f"got {len(prompts)} prompts but {len(completions)} completions")
        rendered = [self._render(i, p) for i, p in enumerate(prompts)]
        pairs = list(zip(rendered, completions, strict=True))
        results = self._map(self._score_one, pairs)
        self.supports_logprobs = True
        return results

    def _score_one(self, pair: tuple[str | list[Message], str]) -> TokenLogprobs:
        """Score one (rendered prompt, completion) pair."""
        prompt, completion = pair
        if isinstance(prompt, str):
            return self._score_text(prompt, completion)
        return self._score_chat(prompt, completion)

    def _score_text(self, prompt: str, completion: str) -> TokenLogprobs:
        """Score ``completion`` after a plain-text prompt: echo the joined text, split by offset."""
        full = prompt + completion
        lp = self._echo(full)
        offsets = lp.text_offset
        if not offsets or len(offsets) != len(lp.token_logprobs):
            raise UnsupportedError(
                f"server {self.base_url} returned prompt log-probs without text offsets, "
                "so completion tokens cannot be told from prompt tokens"
            )
        names = lp.tokens or [""] * len(offsets)
        tokens, values = [], []
        boundary, n = len(prompt), len(offsets)
        for i in range(n):
            # a token belongs to the completion if it ends after the prompt and starts
            # before the end of the text (which drops the one generated token)
            end = offsets[i + 1] if i + 1 < n else len(full) + 1
            if end > boundary and offsets[i] < len(full):
                tokens.append(names[i])
                values.append(lp.token_logprobs[i])
        return _token_logprobs(tokens, values)

    def _score_chat(self, messages: list[Message], completion: str) -> TokenLogprobs:
        """Score ``completion`` as the assistant turn, templated by the server's ``/tokenize``."""
        prompt_ids = self._tokenize({"messages": messages, "add_generation_prompt": True})
        reply = {"role": "assistant", "content": completion}
        full_ids = self._tokenize(
            {
                "messages": [*messages, reply],
                "add_generation_prompt": False,
                "continue_final_message": True,
            }
        )
        if full_ids[: len(prompt_ids)] != prompt_ids:
            raise UnsupportedError(
                f"the chat template of {self.model!r} does not render the prompt as a prefix of "
                "prompt + reply, so the reply's tokens cannot be scored in chat mode"
            )
        if len(full_ids) == len(prompt_ids):
            return TokenLogprobs(tokens=[], logprobs=[])
        lp = self._echo(full_ids)
        start, stop = len(prompt_ids), len(full_ids)
        names = lp.tokens or [str(i) for i in full_ids]
        return _token_logprobs(names[start:stop], lp.token_logprobs[start:stop])

    def _echo(self, prompt: str | list[int]) -> Any:
        """The ``logprobs`` block of an ``echo=True`` completion of ``prompt`` (one new token)."""

        def send() -> Any:
            try:
                return self._client.completions.create(
                    model=self.model,
                    prompt=prompt,
                    echo=True,
                    logprobs=1,
                    max_tokens=1,
                    temperature=0.0,
                )
            except openai.APIStatusError as exc:
                if exc.status_code not in UNSUPPORTED_STATUS:
                    raise
                raise self._unsupported("the completions endpoint with echo=True", exc) from None

        response = call_with_retries(send, self.retry, self._context, "scoring request")
        choice = response.choices[0] if response.choices else None
        lp = choice.logprobs if choice is not None else None
        n_prompt = len(prompt) if isinstance(prompt, list) else 1
        if lp is None or not lp.token_logprobs or len(lp.token_logprobs) < n_prompt:
            raise UnsupportedError(
                f"server {self.base_url} returned no prompt log-probs for echo=True, so it cannot "
                "score given completions (vLLM can; transformers serve and the OpenAI API cannot)"
            )
        return lp

    def _tokenize(self, body: dict[str, Any]) -> list[int]:
        """Token ids from the server's (vLLM-style) ``/tokenize`` endpoint."""
        root = self.base_url.removesuffix("/v1")
        payload = {"model": self.model, **body}

        def send() -> Any:
            try:
                return self._client.post(f"{root}/tokenize", cast_to=object, body=payload)
            except openai.APIStatusError as exc:
                if exc.status_code not in UNSUPPORTED_STATUS:
                    raise
                raise self._unsupported(f"{root}/tokenize", exc) from None

        data = call_with_retries(send, self.retry, self._context, "tokenize request")
        ids = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise UnsupportedError(f"{root}/tokenize did not answer with a list of token ids")
        return ids

    def _unsupported(self, what: str, exc: openai.APIStatusError) -> UnsupportedError:
        return UnsupportedError(
            self._redact(
                f"server {self.base_url} cannot score given completions in {self.api} mode: "
                f"{what} answered {describe_failure(exc, 0)} (scoring needs prompt log-probs "
                "via echo=True, and in chat mode a /tokenize endpoint, as vLLM has)"
            )
        )

    # ----- plumbing -----

    def _outcomes(
        self, fn: Callable[[T], R], items: Sequence[T], stop_on_error: bool
    ) -> list[R | AlignkitError | None]:
        workers = min(self.options.max_concurrency, len(items))
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
        """Close the HTTP client."""
        self._client.close()

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


def _token_logprobs(tokens: Sequence[str], values: Sequence[float | None]) -> TokenLogprobs:
    """Pair tokens with log-probs, dropping a leading token the server gave no log-prob."""
    kept = [(t, float(v)) for t, v in zip(tokens, values, strict=True) if v is not None]
    return TokenLogprobs(tokens=[t for t, _ in kept], logprobs=[v for _, v in kept])


def _redactor(secret: str | None) -> Callable[[str], str]:
    """A function that masks ``secret`` in a text (identity when there is no secret)."""
    if not secret:
        return lambda text: text
    return lambda text: text.replace(secret, "***")
