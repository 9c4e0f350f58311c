"""Scoring given completions on an OpenAI-compatible server (prompt log-probs).

Only some servers can: the completions endpoint with ``echo=True`` and ``logprobs`` (vLLM). In
chat mode the chat template is applied by the server's ``/tokenize`` endpoint (vLLM), and the
token ids are then scored with ``echo``. Servers without these (``transformers serve``, the
OpenAI API) raise :class:`UnsupportedError`. :class:`ServerScoring` is the part of
:class:`~alignkit.models.openai_compat.OpenAIBackend` that does it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import openai

from alignkit.errors import DataError, UnsupportedError
from alignkit.models.base import Message, Prompt, TokenLogprobs
from alignkit.models.endpoints import Endpoint
from alignkit.models.retry import describe_failure

UNSUPPORTED_STATUS = frozenset({400, 404, 405, 422, 501})
"""Answers to a scoring request that mean 'this server cannot do that'."""


class ServerScoring:
    """Log-probs of given completions, for a backend with ``_render``, ``_call``, ``model``,
    ``api``, ``base_url``, ``_redact`` and ``supports_logprobs``."""

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

        def send(endpoint: Endpoint) -> Any:
            try:
                return endpoint.client.completions.create(
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
                raise self._unsupported(
                    endpoint.base_url, "the completions endpoint with echo=True", exc
                ) from None

        response = self._call(send, "scoring request")
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
        payload = {"model": self.model, **body}

        def send(endpoint: Endpoint) -> Any:
            url = endpoint.base_url.removesuffix("/v1") + "/tokenize"
            try:
                return endpoint.client.post(url, cast_to=object, body=payload)
            except openai.APIStatusError as exc:
                if exc.status_code not in UNSUPPORTED_STATUS:
                    raise
                raise self._unsupported(endpoint.base_url, url, exc) from None

        data = self._call(send, "tokenize request")
        ids = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise UnsupportedError("/tokenize did not answer with a list of token ids")
        return ids

    def _unsupported(self, url: str, what: str, exc: openai.APIStatusError) -> UnsupportedError:
        return UnsupportedError(
            self._redact(
                f"server {url} cannot score given completions in {self.api} mode: "
                f"{what} answered {describe_failure(exc, 0)} (scoring needs prompt log-probs "
                "via echo=True, and in chat mode a /tokenize endpoint, as vLLM has)"
            )
        )


def _token_logprobs(tokens: Sequence[str], values: Sequence[float | None]) -> TokenLogprobs:
    """Pair tokens with log-probs, dropping a leading token the server gave no log-prob."""
    kept = [(t, float(v)) for t, v in zip(tokens, values, strict=True) if v is not None]
    return TokenLogprobs(tokens=[t for t, _ in kept], logprobs=[v for _, v in kept])
