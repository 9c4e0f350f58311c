"""The local Hugging Face backend: any transformers causal LM, optionally with a LoRA adapter.

Prompts are rendered with the tokenizer's chat template (``add_generation_prompt=True``). When the
tokenizer has none, a plain format stands in (with a one-time warning)::

    System: Be brief.
    User: What is 2+2?
    Assistant:

and ``"\nUser:"`` (:data:`PLAIN_STOP`) also ends a completion, since a base model tends to write
the next user turn itself. With ``BackendOptions.use_chat_template=False`` a string prompt is used
as raw text (after ``system_prompt`` and a blank line, if one is set) and a list of messages is
written in the plain format, without the extra stop string.

Special tokens follow the transformers convention: text rendered by a chat template already holds
every special token the model needs (its BOS included), so it is tokenized with
``add_special_tokens=False``; raw and plain-template text gets the tokenizer's own BOS, if it
uses one, exactly once. Completions are always tokenized without special tokens, so the prompt's
token ids are an exact prefix of prompt + completion.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Sequence

import torch
import transformers
from transformers import LogitsProcessorList, StoppingCriteriaList

from alignkit.errors import ModelError
from alignkit.models import hf_whitebox
from alignkit.models.base import (
    BackendOptions,
    Completion,
    GenerationConfig,
    Message,
    ModelSpec,
    Prompt,
    PromptTooLongError,
    TokenLogprobs,
    as_messages,
)
from alignkit.models.hf_loading import context_length, load_pretrained, resolve_device
from alignkit.models.hf_padding import StopOnStrings, no_cache, pad_right, pad_token_ids
from alignkit.models.hf_paged import PagedEngine
from alignkit.models.hf_sampling import GumbelSampler
from alignkit.models.hf_static import cache_length, generate_static
from alignkit.models.sampling import sample_keys
from alignkit.progress import counter

logger = logging.getLogger(__name__)

PLAIN_STOP = "\nUser:"
CHARS_PER_TOKEN_BOUND = 20
"""A prompt of more than this many characters per context token is refused untokenized
(tokenizing megabytes takes minutes); no real text averages anywhere near 20 per token."""


def _plain_render(messages: list[Message]) -> str:
    """Render messages as plain ``Role: content`` lines; a final assistant turn is continued."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    if messages[-1]["role"] == "assistant":
        return "\n".join(lines)
    return "\n".join([*lines, "Assistant:"])


def _batches(order: list[int], size: int) -> Iterator[list[int]]:
    """Consecutive chunks of ``order`` of at most ``size`` indices."""
    for start in range(0, len(order), size):
        yield order[start : start + size]


class HFBackend:
    """A transformers causal LM behind the :class:`~alignkit.models.base.ModelBackend` Protocol.

    Attributes: ``model`` (a ``PeftModel`` when an adapter is loaded), ``tokenizer``, ``device``,
    ``name``, ``end_token_ids`` (ids that end a completion: EOS and the template's end of turn),
    ``context`` (the most tokens the model attends to, prompt and completion; None if unknown).
    """

    supports_logprobs = True
    refill_every = 16
    """Tokens decoded per round before finished rows leave the batch (see ``_generate_batch``)."""

    def __init__(self, spec: ModelSpec, options: BackendOptions, name: str | None = None) -> None:
        if spec.kind != "hf" or not spec.path:
            raise ModelError(f"HFBackend needs an hf:PATH model string, got {spec}")
        if options.device == "auto":  # a tiny model is faster on the CPU (models.auto_device)
            from alignkit.models.auto_device import auto_device

            device = torch.device(auto_device(str(spec)))
        else:
            device = resolve_device(options.device)
        model, tokenizer = load_pretrained(spec, options, device)
        self._setup(model, tokenizer, options, name or str(spec), device, spec)

    @classmethod
    def from_model(
        cls, model, tokenizer, options: BackendOptions | None = None, name: str = "model"
    ) -> HFBackend:
        """Wrap a model already in memory (e.g. a policy being trained) as a backend."""
        backend = cls.__new__(cls)
        device = next(model.parameters()).device
        backend._setup(model, tokenizer, options or BackendOptions(), name, device, None)
        return backend

    def _setup(self, model, tokenizer, options, name, device, spec) -> None:
        self._paged = PagedEngine(self) if options.kv_cache == "paged" else None  # checks it runs
        self.spec = spec
        self.options = options
        self.name = name
        self.device = device
        self.model, self.tokenizer = model, tokenizer
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._chat = options.use_chat_template and bool(self.tokenizer.chat_template)
        self._plain = options.use_chat_template and not self._chat
        self._warned_fallback = False
        self._adds_bos = self._detect_adds_bos()
        self.end_token_ids = self._collect_end_ids()
        self.context = context_length(self.model.config, self.tokenizer)
        # transformers 5 renamed the KV-cache argument from past_key_values to cache
        forward_args = inspect.signature(
            self.model.get_base_model().forward
            if hasattr(self.model, "get_base_model")
            else self.model.forward
        ).parameters
        self._cache_kwarg = "cache" if "cache" in forward_args else "past_key_values"

    # ----------------------------------------------------------------- rendering / tokenizing

    def render(self, prompt: Prompt) -> str:
        """The text the model sees for ``prompt``, ending where the assistant's reply starts.

        A prompt whose last message is from the assistant is continued (a prefilled reply).
        """
        system = self.options.system_prompt
        if not self.options.use_chat_template and isinstance(prompt, str):
            return f"{system}\n\n{prompt}" if system else prompt
        messages = as_messages(prompt, system)
        if not self._chat:
            self._warn_fallback()
            return _plain_render(messages)
        prefill = messages[-1]["role"] == "assistant"
        try:
            return self.tokenizer.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=not prefill,
                continue_final_message=prefill,
            )
        except Exception as exc:  # jinja raises for conversations a template rejects
            raise ModelError(f"the chat template of {self.name} rejected a prompt: {exc}") from None

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of the rendered prompt (special tokens as the module docstring says)."""
        return self._encode_rendered(self.render(prompt))

    def _encode_rendered(self, text: str) -> list[int]:
        # verbose=False: the tokenizer's own "longer than the maximum" warning is replaced by
        # the errors of check_prompts
        ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if not self._chat and self._adds_bos and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def encode_completion(self, completion: str) -> list[int]:
        """Token ids of a completion, without any special tokens added."""
        return self.tokenizer(completion, add_special_tokens=False, verbose=False)["input_ids"]

    # --------------------------------------------------------------------------- context length

    def check_prompts(
        self, prompts: Sequence[Prompt], config: GenerationConfig | None = None, labels=None
    ) -> list[list[int]]:
        """Token ids of each prompt; a :class:`~alignkit.models.base.PromptTooLongError` naming
        the first (``labels[i]``, default ``prompt i``) whose tokens plus
        ``config.max_new_tokens`` exceed :attr:`context`. :meth:`generate` runs it first."""
        new, out = (config or GenerationConfig()).max_new_tokens, []
        for i, prompt in enumerate(prompts):
            out.append(self._fit(i, prompt, new, labels[i] if labels else None))
            if isinstance(out[-1], PromptTooLongError):
                raise out[-1]
        return out

    def fits(self, prompts: Sequence[Prompt], config: GenerationConfig | None = None) -> list[bool]:
        """Whether each prompt fits the context with ``config.max_new_tokens`` to generate, for
        callers built to skip over-long prompts (``generate`` refuses them)."""
        new = (config or GenerationConfig()).max_new_tokens
        return [isinstance(self._fit(i, p, new), list) for i, p in enumerate(prompts)]

    def _fit(self, index: int, prompt: Prompt, new: int, label=None, completion=None):
        """The prompt's ids if they and ``new`` more tokens (or ``completion``'s) fit the
        context, else the error saying why; text longer than :data:`CHARS_PER_TOKEN_BOUND`
        characters per context token is refused untokenized."""
        text = self.render(prompt)
        chars = len(text) + len(completion or "")
        where = (self.name, self.context, index, prompt, label)
        if self.context is not None and chars > CHARS_PER_TOKEN_BOUND * self.context:
            return PromptTooLongError.build(*where, chars=chars)
        ids = self.encode_prompt(prompt)  # the one encoding path (subclasses, spies)
        more = new if completion is None else len(self.encode_completion(completion))
        if self.context is None or len(ids) + more <= self.context:
            return ids
        what = "max_new_tokens" if completion is None else "completion tokens"
        return PromptTooLongError.build(*where, tokens=len(ids), more=more, what=what)

    def _warn_fallback(self) -> None:
        """Log once per backend that the plain template stands in for a chat template."""
        if not self._warned_fallback:
            self._warned_fallback = True
            logger.warning(
                "%s: the tokenizer has no chat template; using the plain 'User: ...\\nAssistant:' "
                "format instead",
                self.name,
            )

    def _detect_adds_bos(self) -> bool:
        """Whether plain ``tokenizer(text)`` prepends the BOS token."""
        bos = self.tokenizer.bos_token_id
        return bos is not None and self.tokenizer("a")["input_ids"][:1] == [bos]

    def _collect_end_ids(self) -> list[int]:
        """EOS ids (tokenizer and generation config) plus the chat template's end-of-turn token."""
        ids: list[int] = []
        for value in (self.tokenizer.eos_token_id, self.model.generation_config.eos_token_id):
            ids.extend(value if isinstance(value, list) else [value] if value is not None else [])
        turn_end = self._template_turn_end()
        if turn_end is not None:
            ids.append(turn_end)
        return sorted(set(ids))

    def _template_turn_end(self) -> int | None:
        """The special token the chat template writes right after an assistant message."""
        if not self._chat:
            return None
        marker = "\x1fEND-OF-REPLY\x1f"
        turns = [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}]
        try:
            text = self.tokenizer.apply_chat_template(turns, tokenize=False)
        except Exception:  # a template may reject this probe; then EOS alone ends a reply
            return None
        tail = text.split(marker, 1)[-1].strip() if marker in text else ""
        ids = self.tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
        special = set(self.tokenizer.all_special_ids) | set(self.tokenizer.added_tokens_decoder)
        return ids[0] if ids and ids[0] in special else None

    # ----------------------------------------------------------------------------- generation

    def generate(
        self,
        prompts: Sequence[Prompt],
        config: GenerationConfig | None = None,
        progress: bool | None = None,
    ) -> list[Completion]:
        """One completion per prompt, in input order.

        Prompts are sorted by length and generated in left-padded batches of
        ``options.batch_size`` (``kv_cache="paged"``: continuous batching,
        :mod:`~alignkit.models.hf_paged`). ``config.temperature == 0`` is greedy decoding.
        Otherwise each prompt is sampled with its own randomness, keyed on (``config.seed``,
        the prompt, its occurrence among equal prompts of this call) by the rule of
        :mod:`alignkit.models.sampling`, so a completion does not depend on the batch size, the
        order of the prompts or the other prompts of the call; ``seed=None`` draws a fresh seed
        from torch's global RNG. A completion ends at an end-of-turn token, at a stop string
        (cut from the text) or after ``max_new_tokens``. A prompt too long for the model's
        context is refused before anything is generated (:meth:`check_prompts`; :meth:`fits`
        tells which prompts fit). ``progress`` shows progress (default: for 4+ batches; see
        :mod:`alignkit.progress` for output that is not a terminal).
        """
        config = config or GenerationConfig()
        encoded = self.check_prompts(prompts, config)
        if not encoded:
            return []
        keys: list[int | None] = [None] * len(encoded)
        if config.temperature > 0:
            seed = config.seed
            if seed is None:
                seed = int(torch.randint(0, 2**62, ()).item())
            keys = list(sample_keys(prompts, seed))
        stops = self.stop_strings(config)
        if self._paged is not None:
            show = len(encoded) >= 4 * self.options.batch_size if progress is None else progress
            rows = self._paged.generate(encoded, keys, config, show)
            return [self._finish(row, stops, config.max_new_tokens) for row in rows]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        results: list[Completion | None] = [None] * len(encoded)
        batches = list(_batches(order, self.options.batch_size))
        cache_len = None  # a static cache is sized once for the call's widest prompt
        if self.options.kv_cache == "static":
            widest = max(len(ids) for ids in encoded)
            cache_len = cache_length(widest, config.max_new_tokens, self.context)
        show = len(batches) >= 4 if progress is None else progress
        with counter(f"generating ({self.name})", len(batches), show) as advance:
            for batch in batches:
                rows = ([encoded[i] for i in batch], [keys[i] for i in batch])
                outs = self._generate_batch(*rows, config, stops, cache_len)
                for i, out in zip(batch, outs, strict=True):
                    results[i] = out
                advance()
        return results  # type: ignore[return-value]

    def stop_strings(self, config: GenerationConfig) -> list[str]:
        """The strings that end a completion: ``config.stop``, plus :data:`PLAIN_STOP` when the
        plain fallback template is in use."""
        return [*config.stop, *([PLAIN_STOP] if self._plain else [])]

    def _generate_batch(
        self,
        encoded: list[list[int]],
        keys: list[int | None],
        config: GenerationConfig,
        stops: list[str],
        cache_len: int | None = None,
    ) -> list[Completion]:
        """Generate for one left-padded batch and turn each row into a :class:`Completion`.

        Decoding runs in rounds of :attr:`refill_every` tokens. After each round the rows that
        have ended leave the batch, and their entries are dropped from the KV cache, so the
        rest go on without recomputing anything: a batch costs what its live rows cost, not
        what its longest row costs (completion lengths often differ tenfold). Sampling draws
        each row's tokens from its own sample key (``keys``), by
        :class:`~alignkit.models.hf_sampling.GumbelSampler`. With ``cache_len``
        (``kv_cache="static"``) :func:`~alignkit.models.hf_static.generate_static` decodes it.
        """
        if cache_len is not None:
            generated = generate_static(self, encoded, keys, config, stops, cache_len)
            return [self._finish(row, stops, config.max_new_tokens) for row in generated]
        ids, mask = pad_token_ids(encoded, self.pad_id, left=True)
        ids, mask = ids.to(self.device), mask.to(self.device)
        width = ids.shape[1]
        generated: list[list[int]] = [[] for _ in encoded]
        active, cache = list(range(len(encoded))), None
        hf_config = self._hf_generation_config(config)
        hf_config.return_dict_in_generate = True
        sampler = None
        if config.temperature > 0:
            sampler = GumbelSampler(config, keys, width, self.device)  # type: ignore[arg-type]
        processors = [sampler] if sampler is not None else []
        while active:
            done = ids.shape[1] - width
            hf_config.max_new_tokens = min(self.refill_every, config.max_new_tokens - done)
            out = self._decode(ids, mask, hf_config, stops, width, processors, cache)
            new = out.sequences[:, ids.shape[1] :]
            for i, row in zip(active, new.tolist(), strict=True):
                generated[i] += row
            keep = [r for r, i in enumerate(active) if not self._ended(generated[i], stops, config)]
            if not keep:
                break
            index = torch.tensor(keep, device=self.device)
            ids = out.sequences.index_select(0, index)
            mask = torch.cat([mask, torch.ones_like(new)], dim=1).index_select(0, index)
            cache = out.get("cache") or out.get("past_key_values")  # renamed in transformers 5
            cache.batch_select_indices(index)
            if sampler is not None:
                sampler.select(index)
            active = [active[r] for r in keep]
        return [self._finish(row, stops, config.max_new_tokens) for row in generated]

    def _decode(self, ids, mask, hf_config, stops: list[str], width: int, processors, cache=None):
        """One ``model.generate`` call on a left-padded batch whose generated text starts at
        column ``width`` (stop strings are looked for from there), continuing ``cache``."""
        criteria = [StopOnStrings(self.tokenizer, stops, width)] if stops else []
        with torch.inference_mode():
            return self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=hf_config,
                stopping_criteria=StoppingCriteriaList(criteria),
                logits_processor=LogitsProcessorList(processors),
                **({self._cache_kwarg: cache} if cache is not None else {}),
            )

    def _ended(self, ids: list[int], stops: list[str], config: GenerationConfig) -> bool:
        """Whether a row is done: an end token, a stop string, or ``max_new_tokens`` reached."""
        if len(ids) >= config.max_new_tokens or any(t in self.end_token_ids for t in ids):
            return True
        if not stops:
            return False
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return any(s in text for s in stops)

    def _hf_generation_config(self, config: GenerationConfig) -> transformers.GenerationConfig:
        """Our settings as a transformers config (overriding the model's defaults).

        transformers always decodes greedily here: sampling is the argmax of logits that
        :class:`~alignkit.models.hf_sampling.GumbelSampler` warped and perturbed. Its neutral
        sampling values keep the model's own defaults (e.g. temperature=0.6) from being merged
        in and warned on.
        """
        return transformers.GenerationConfig(
            max_new_tokens=config.max_new_tokens,
            do_sample=False,
            temperature=1.0,
            top_p=1.0,
            top_k=50,
            eos_token_id=self.end_token_ids or None,
            pad_token_id=self.pad_id,
        )

    def _finish(self, new_ids: list[int], stops: list[str], max_new: int) -> Completion:
        """Cut generated ids at the first end token and the text at the first stop string.

        ``num_tokens`` counts the generated tokens up to and including the one that ended the
        completion (the end token, or the token that completed the stop string).
        """
        ends = set(self.end_token_ids)
        end_at = next((i for i, t in enumerate(new_ids) if t in ends), None)
        kept = new_ids if end_at is None else new_ids[:end_at]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        hits = sorted((text.find(s), -len(s), s) for s in stops if s in text)
        if hits:
            cut, _, stop = hits[0]
            return Completion(text[:cut], "stop", self._tokens_until(kept, cut + len(stop)))
        if end_at is not None:
            return Completion(text, "stop", end_at + 1)
        return Completion(text, "length" if len(kept) >= max_new else "stop", len(kept))

    def _tokens_until(self, ids: list[int], n_chars: int) -> int:
        """The fewest leading tokens of ``ids`` that decode to at least ``n_chars`` characters."""
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self.tokenizer.decode(ids[:mid], skip_special_tokens=True)) >= n_chars:
                hi = mid
            else:
                lo = mid + 1
        return hi

    # ------------------------------------------------------------------------------ log-probs

    def logprobs(
        self, prompts: Sequence[Prompt], completions: Sequence[str]
    ) -> list[TokenLogprobs]:
        """Log-prob of each completion token given the rendered prompt and earlier tokens.

        Prompt and completion are tokenized separately and concatenated (no BOS or other special
        token before the completion). Batches are right-padded and sorted by length. A pair
        longer than the model's context is refused before any is scored.
        """
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        pairs = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            ids = self._fit(i, prompt, 0, completion=completion)
            if isinstance(ids, PromptTooLongError):
                raise ids
            pairs.append((ids, self.encode_completion(completion)))
        for i, (prompt_ids, _) in enumerate(pairs):
            if not prompt_ids:
                raise ModelError(
                    f"prompt {i} is empty and the tokenizer adds no BOS: nothing to condition on"
                )
        order = sorted(range(len(pairs)), key=lambda i: -sum(map(len, pairs[i])))
        results: list[TokenLogprobs | None] = [None] * len(pairs)
        for batch in _batches(order, self.options.batch_size):
            for i, res in zip(batch, self._logprobs_batch([pairs[i] for i in batch]), strict=True):
                results[i] = res
        return results  # type: ignore[return-value]

    def _logprobs_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[TokenLogprobs]:
        """Score one right-padded batch of (prompt ids, completion ids)."""
        ids = pad_right([p + c for p, c in pairs], self.pad_id)  # no mask needed: see there
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(self.device), **no_cache(self.model)).logits
        results = []
        for row, (prompt_ids, completion_ids) in enumerate(pairs):
            start, stop = len(prompt_ids), len(prompt_ids) + len(completion_ids)
            row_logits = logits[row, start - 1 : stop - 1].float()
            targets = ids[row, start:stop].to(row_logits.device)
            lp = torch.log_softmax(row_logits, dim=-1).gather(1, targets[:, None])[:, 0]
            tokens = self.tokenizer.batch_decode([[t] for t in completion_ids])
            results.append(TokenLogprobs(tokens=tokens, logprobs=lp.tolist()))
        return results

    # ------------------------------------------------------------------------------ white box

    def embedding_matrix(self) -> torch.Tensor:
        """The input embedding weight, ``[vocab, hidden]``."""
        return hf_whitebox.embedding_matrix(self.model)

    def input_embedding_gradients(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss gradient w.r.t. ``inputs_embeds``; see :mod:`alignkit.models.hf_whitebox`."""
        return hf_whitebox.input_embedding_gradients(self.model, input_ids, labels, attention_mask)

    def close(self) -> None:
        """Drop the model (and its continuous-batching engine) and free accelerator memory."""
        if getattr(self, "_paged", None) is not None:
            self._paged.close()
        self.model = None  # type: ignore[assignment]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __repr__(self) -> str:
        return f"HFBackend(name={self.name!r}, device={self.device}, chat_template={self._chat})"
