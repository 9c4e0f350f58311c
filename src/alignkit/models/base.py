"""The model backend Protocol shared by every stage, and the model-string grammar.

A backend turns prompts into completions and scores given completions under given prompts.
Every stage (DPO, Constitutional AI, red teaming, evaluation) talks to models only through
this Protocol, so the same code runs on a local Hugging Face model, on any OpenAI-compatible
server, and on the built-in testbed.

Model strings, one grammar everywhere (CLI, YAML, Python)::

    hf:PATH_OR_HUB_ID            local transformers causal LM
    hf:BASE+ADAPTER_DIR          the same, with a LoRA adapter on top
    openai:MODEL@BASE_URL        any OpenAI-compatible server (vLLM, Ollama, transformers serve)
    testbed                      the built-in tiny model (built and cached on first use)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Union, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from alignkit.errors import DataError, ModelError

Message = dict[str, str]
"""One chat message: ``{"role": "user" | "assistant" | "system", "content": "..."}``."""

Prompt = Union[str, Sequence[Message]]  # noqa: UP007 (a runtime alias, Python 3.10)
"""A prompt: a plain user request (wrapped as one user turn) or a list of chat messages."""


class GenerationConfig(BaseModel):
    """Sampling settings, the same for every backend. ``temperature=0`` means greedy."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(128, ge=1, description="Most tokens to generate per prompt.")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, description="Keep only the k most likely tokens; 0 keeps all.")
    seed: int | None = Field(0, description="Seed for sampling; none (null) draws a fresh one.")
    stop: list[str] = Field(default_factory=list, description="Strings that end a completion.")


class BackendOptions(BaseModel):
    """Options for building a backend; each backend reads the ones that apply to it."""

    model_config = ConfigDict(extra="forbid")

    # local Hugging Face models
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field("auto", description="'auto' (CUDA if present, else CPU), 'cpu', 'cuda:0'")
    trust_remote_code: bool = False
    batch_size: int = Field(16, ge=1, description="Prompts per forward pass.")
    attn_implementation: Literal[
        "auto", "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"
    ] = Field(
        "auto",
        description="Attention kernels of local models; 'auto': what transformers picks (sdpa).",
    )
    kv_cache: Literal["dynamic", "static", "paged"] = Field(
        "dynamic",
        description="'dynamic': the KV cache grows per token and finished rows leave the batch; "
        "'static': preallocated, so that on CUDA transformers compiles each decoding step into "
        "CUDA graphs (torch.compile; the first batches wait for the compiler); 'paged': "
        "transformers' continuous batching over a paged cache (requests join and leave the "
        "batch token by token; batch_size caps requests per forward pass).",
    )
    use_chat_template: bool = Field(
        True, description="Render prompts with the tokenizer's chat template (False: raw text)."
    )
    system_prompt: str | None = None
    # OpenAI-compatible servers
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Name of the environment variable holding the API key."
    )
    api: Literal["chat", "completions"] = "chat"
    max_concurrency: int = Field(
        8, ge=1, description="Requests in flight at once to a server (to each replica)."
    )
    timeout: float = Field(60.0, gt=0, description="Seconds per request.")
    max_retries: int = Field(5, ge=0, description="Retries on 429 / 5xx / connection errors.")
    retry_budget: float = Field(
        60.0, ge=0, description="Most seconds spent sleeping between retries, per request."
    )
    max_tries: int = Field(
        3,
        ge=1,
        description="Sends of a prompt whose request still failed with 429 / 5xx / no "
        "connection after its retries, per run; what is left fails the run, keeping the rest.",
    )


@dataclass
class Completion:
    """One generated completion."""

    text: str
    finish_reason: str = "stop"
    """'stop' (end of turn or a stop string) or 'length' (hit max_new_tokens)."""
    num_tokens: int = 0
    token_logprobs: list[float] | None = None
    """Log-prob of each generated token, where the backend reports them."""


@dataclass
class TokenLogprobs:
    """Log-probabilities of the tokens of a given completion under a given prompt."""

    tokens: list[str]
    logprobs: list[float] = field(default_factory=list)

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))

    @property
    def mean(self) -> float:
        return self.total / max(len(self.logprobs), 1)


@runtime_checkable
class ModelBackend(Protocol):
    """What every stage needs from a model."""

    name: str
    supports_logprobs: bool

    def generate(
        self, prompts: Sequence[Prompt], config: GenerationConfig | None = None
    ) -> list[Completion]:
        """One completion per prompt, in order."""
        ...

    def logprobs(
        self, prompts: Sequence[Prompt], completions: Sequence[str]
    ) -> list[TokenLogprobs]:
        """Log-probs of each completion's tokens given its prompt (as the assistant turn)."""
        ...

    def close(self) -> None:
        """Release resources (servers, threads, GPU memory)."""
        ...


def score(
    backend: ModelBackend,
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    normalize: bool = False,
) -> list[float]:
    """Total (or per-token mean, if ``normalize``) log-prob of each completion under its prompt."""
    results = backend.logprobs(prompts, completions)
    return [r.mean if normalize else r.total for r in results]


def as_messages(prompt: Prompt, system_prompt: str | None = None) -> list[Message]:
    """Normalise a prompt to a list of chat messages (a string becomes one user turn)."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [dict(m) for m in prompt]
        for i, m in enumerate(messages):
            if "role" not in m or "content" not in m:
                raise ModelError(f"prompt message {i} needs 'role' and 'content' keys, got {m}")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def preview(prompt: Prompt, width: int = 40) -> str:
    """A short one-line quote of a prompt (its last message's text), for error messages."""
    text = prompt if isinstance(prompt, str) else str(list(prompt)[-1].get("content", ""))
    return repr(text[:width] + "..." if len(text) > width else text)


class PromptTooLongError(DataError):
    """A prompt (plus the tokens to generate) does not fit the model's context.

    ``index`` is the prompt's position in the call; ``tokens`` its length in tokens (None when
    it was refused on its character count alone, without tokenizing); ``context`` the limit.
    """

    def __init__(self, message: str, index: int, tokens: int | None, context: int) -> None:
        super().__init__(message)
        self.index, self.tokens, self.context = index, tokens, context

    @classmethod
    def build(
        cls,
        model: str,
        context: int,
        index: int,
        prompt: Prompt,
        label: str | None = None,
        chars: int | None = None,
        tokens: int = 0,
        more: int = 0,
        what: str = "max_new_tokens",
    ) -> PromptTooLongError:
        """The error for prompt ``index`` (called ``label`` if given): refused on its ``chars``
        characters, or on its ``tokens`` plus ``more`` (``what``: tokens to generate)."""
        where = f"{label or f'prompt {index}'} ({preview(prompt)})"
        limit = f"the {context:,}-token context of {model}"
        if chars is not None:
            message = f"{where} has {chars:,} characters, far more than fit {limit}"
            return cls(message, index, None, context)
        total = f"{tokens + more:,}"
        message = f"{where} has {tokens:,} tokens; with {more:,} {what} that is {total}, "
        return cls(message + f"more than {limit}", index, tokens, context)


_GRAMMAR = (
    "expected hf:PATH_OR_HUB_ID[+ADAPTER_DIR], openai:MODEL@BASE_URL[,BASE_URL...] or testbed"
)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model string."""

    kind: Literal["hf", "openai", "testbed"]
    path: str | None = None
    adapter: str | None = None
    model: str | None = None
    base_url: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        text = (text or "").strip()
        if text == "testbed":
            return cls(kind="testbed")
        prefix, sep, rest = text.partition(":")
        if not sep or not rest:
            raise ModelError(f"model string {text!r} is not valid: {_GRAMMAR}")
        if prefix == "hf":
            base, plus, adapter = rest.rpartition("+")
            if plus and base and adapter:
                return cls(kind="hf", path=base, adapter=adapter)
            return cls(kind="hf", path=rest)
        if prefix == "openai":
            model, at, url = rest.rpartition("@")
            urls = [u.strip() for u in url.split(",")]
            if not at or not model or not all(u.startswith(("http://", "https://")) for u in urls):
                raise ModelError(
                    f"model string {text!r} is not valid: openai models need MODEL@BASE_URL "
                    "(replicas: MODEL@URL1,URL2), e.g. openai:my-model@http://localhost:8000/v1"
                )
            if len({u.rstrip("/") for u in urls}) < len(urls):
                raise ModelError(f"model string {text!r} names the same URL twice")
            return cls(kind="openai", model=model, base_url=",".join(urls))
        raise ModelError(f"model string {text!r} has unknown kind {prefix!r}: {_GRAMMAR}")

    @property
    def base_urls(self) -> list[str]:
        """The replicas' base URLs of an openai model string (one unless several are given)."""
        return [u.strip() for u in (self.base_url or "").split(",") if u.strip()]

    @property
    def identity(self) -> str:
        """The model string less its extra replicas: what decides the answers. Replicas serve
        the model of the first URL, and each request carries its own seed, so which replica
        answered does not change an answer (tests/test_openai_backend.py): adding or removing
        a replica keeps caches and resumable stages keyed on this."""
        if self.kind == "openai" and len(self.base_urls) > 1:
            return f"openai:{self.model}@{self.base_urls[0]}"
        return str(self)

    def __str__(self) -> str:
        if self.kind == "testbed":
            return "testbed"
        if self.kind == "openai":
            return f"openai:{self.model}@{self.base_url}"
        return f"hf:{self.path}" + (f"+{self.adapter}" if self.adapter else "")


def replica_free(text: Any) -> Any:
    """``text`` with an openai model string's extra replicas left out (:attr:`ModelSpec.identity`),
    any other value (another model string, not a string) as it is."""
    if not isinstance(text, str) or not text.startswith("openai:") or "," not in text:
        return text
    try:
        return ModelSpec.parse(text).identity
    except ModelError:
        return text
