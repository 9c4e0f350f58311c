"""Tokenize preference examples with the model's chat template, once and correctly.

For a tokenizer with a chat template:

- ``prompt_ids`` are the tokens of ``apply_chat_template(prompt, add_generation_prompt=True)``;
- each completion's ids are the tokens of the text the template adds for that assistant turn:
  the prompt + reply conversation is rendered, the rendered prompt is checked to be its prefix,
  and the remainder (the reply and its end-of-turn marker, e.g. ``<|im_end|>\\n`` or ``</s>``)
  is tokenized.

Both are tokenized with ``add_special_tokens=False`` because the rendered text already holds
every special token the model needs (its BOS included), so nothing is duplicated and the model
input is exactly ``prompt_ids + completion_ids``.

Without a chat template the plain format of :mod:`alignkit.models.hf` stands in (``User: ...``
lines ending in ``Assistant:``); the tokenizer's BOS is prepended once if it uses one, each
completion is ``" " + text`` and ends with the EOS token.

Truncation (all counted in :class:`~alignkit.data.preference.LoadReport`):

1. A prompt longer than ``max_length`` tokens makes the record bad (reason
   ``prompt_too_long``): ``DataError`` with ``on_bad_record="error"``, else dropped.
2. If prompt + longest completion exceed ``max_length``, a prompt longer than
   ``max_prompt_length`` is cut to it: ``keep_end`` drops its start (keeping a leading BOS),
   ``keep_start`` drops its end. Then every completion is cut to the room left (its start is
   kept).
3. Completions that become identical after truncation carry no preference (reason
   ``identical_after_truncation``): an error, or dropped, as in 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from alignkit.data.preference import (
    LoadReport,
    OnBadRecord,
    check_on_bad_record,
    load_preferences,
    parse_records,
)
from alignkit.data.records import BadRecord, PreferenceExample
from alignkit.errors import ConfigError, DataError, ModelError
from alignkit.models.hf import _plain_render

TruncationMode = Literal["keep_end", "keep_start"]


@dataclass
class TokenizedExample:
    """Token ids of one preference example; the model input is ``prompt_ids + completion``."""

    prompt_ids: list[int]
    completion_ids: list[list[int]]  # best -> worst
    source: str
    soft_label: float | None = None  # P(chosen is better), from AI feedback; None: a hard label
    margin: float | None = None  # offset the implicit reward margin must clear (MODPO, ODPO)

    @property
    def num_tokens(self) -> int:
        """Tokens in the prompt and all completions (the prompt counted once)."""
        return len(self.prompt_ids) + sum(len(c) for c in self.completion_ids)


class ChatEncoder:
    """Renders and tokenizes prompts and completions for one tokenizer (see module docstring)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.uses_template = bool(getattr(tokenizer, "chat_template", None))
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        if not self.uses_template and eos is None:
            raise ModelError("the tokenizer has neither a chat template nor an EOS token")
        adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
        self._prefix = [bos] if adds_bos and not self.uses_template else []
        self._suffix = [] if self.uses_template else [eos]

    def render(self, example: PreferenceExample) -> tuple[str, list[str]]:
        """The prompt text and, for each completion, the text that follows it."""
        if not self.uses_template:
            return _plain_render(example.prompt), [" " + c for c in example.completions]
        try:
            prompt = self._apply(example.prompt, add_generation_prompt=True)
            fulls = [
                self._apply([*example.prompt, {"role": "assistant", "content": c}])
                for c in example.completions
            ]
        except Exception as exc:  # jinja raises for conversations a template rejects
            problem = f"the chat template rejected it: {str(exc).splitlines()[0]}"
            raise BadRecord(example.source, "prompt", problem, "template_error") from None
        if not all(full.startswith(prompt) for full in fulls):
            problem = (
                "the chat template does not render the prompt as a prefix of prompt + reply, "
                "so the completion tokens cannot be separated"
            )
            raise BadRecord(example.source, "prompt", problem, "template_error")
        return prompt, [full[len(prompt) :] for full in fulls]

    def _apply(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of many texts at once, without special tokens added."""
        if not texts:
            return []
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def tokenize(
        self, examples: Sequence[PreferenceExample], rendered: Sequence[tuple[str, list[str]]]
    ) -> list[TokenizedExample]:
        """Tokenize rendered examples (one batched tokenizer call for all their texts)."""
        flat = [t for prompt, completions in rendered for t in (prompt, *completions)]
        ids = iter(self.encode(flat))
        out = []
        for example, (_, completions) in zip(examples, rendered, strict=True):
            prompt_ids = [*self._prefix, *next(ids)]
            completion_ids = [[*next(ids), *self._suffix] for _ in completions]
            meta = example.metadata
            out.append(
                TokenizedExample(
                    prompt_ids,
                    completion_ids,
                    example.source,
                    meta.get("soft_label"),
                    meta.get("margin"),
                )
            )
        return out


def truncate(
    item: TokenizedExample,
    max_length: int,
    max_prompt_length: int,
    mode: TruncationMode = "keep_end",
    bos_id: int | None = None,
) -> tuple[TokenizedExample, list[str]]:
    """Fit ``item`` into ``max_length`` tokens; returns it and the parts cut ("prompt", ...).

    Assumes the prompt itself fits in ``max_length`` (the caller checks it).
    """
    prompt, completions = item.prompt_ids, item.completion_ids
    longest = max(len(c) for c in completions)
    if len(prompt) + longest <= max_length:
        return item, []
    cut = []
    if len(prompt) > max_prompt_length:
        cut.append("prompt")
        if mode == "keep_start":
            prompt = prompt[:max_prompt_length]
        elif bos_id is not None and prompt[0] == bos_id:
            prompt = [prompt[0], *prompt[len(prompt) - max_prompt_length + 1 :]]
        else:
            prompt = prompt[len(prompt) - max_prompt_length :]
    room = max_length - len(prompt)
    if longest > room:
        cut.append("completion")
        completions = [c[:room] for c in completions]
    return dataclasses.replace(item, prompt_ids=prompt, completion_ids=completions), cut


class DPODataset(torch.utils.data.Dataset):
    """Tokenized preference examples (items are :class:`TokenizedExample`), with a report.

    ``max_prompt_length`` defaults to ``max_length // 2``, so any ``max_length`` works alone.

    ``examples`` are :class:`PreferenceExample` objects or raw records (dicts in any accepted
    layout). ``report`` counts records read, loaded, converted, skipped, truncated and dropped by
    reason. ``pku_preference`` (``"better"`` / ``"safer"``) orders raw PKU-SafeRLHF records by
    that response id (see :func:`~alignkit.data.load_preferences`).
    """

    def __init__(
        self,
        examples: Sequence[PreferenceExample | dict],
        tokenizer: Any,
        max_length: int = 1024,
        max_prompt_length: int | None = None,
        truncation_mode: TruncationMode = "keep_end",
        on_bad_record: OnBadRecord = "error",
        report: LoadReport | None = None,
        pku_preference: str = "better",
    ) -> None:
        if max_prompt_length is None and isinstance(max_length, int):
            max_prompt_length = max_length // 2
        _check_lengths(max_length, max_prompt_length, truncation_mode)
        check_on_bad_record(on_bad_record)
        self.tokenizer = tokenizer
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        self.truncation_mode = truncation_mode
        examples = list(examples)
        if any(not isinstance(e, PreferenceExample) for e in examples):
            examples, parsed = parse_records(examples, on_bad_record, pku_preference=pku_preference)
            report = report or parsed
        if report is None:
            report = LoadReport(source="examples", read=len(examples), loaded=len(examples))
            report.formats["examples"] = len(examples)
        self.report = report
        self.items = self._build(examples, on_bad_record)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        tokenizer: Any,
        on_bad_record: OnBadRecord = "error",
        pku_preference: str = "better",
        **kwargs: Any,
    ) -> DPODataset:
        """Load, validate and tokenize a preference file (see :func:`load_preferences`)."""
        examples, report = load_preferences(
            path, on_bad_record=on_bad_record, pku_preference=pku_preference
        )
        return cls(examples, tokenizer, on_bad_record=on_bad_record, report=report, **kwargs)

    def _build(
        self, examples: list[PreferenceExample], on_bad_record: OnBadRecord
    ) -> list[TokenizedExample]:
        encoder = ChatEncoder(self.tokenizer)
        usable, rendered = [], []
        for example in examples:
            try:
                rendered.append(encoder.render(example))
                usable.append(example)
            except BadRecord as err:
                self._bad(err, on_bad_record)
        items = []
        bos = self.tokenizer.bos_token_id
        for item in encoder.tokenize(usable, rendered):
            try:
                items.append(self._fit(item, bos))
            except BadRecord as err:
                self._bad(err, on_bad_record)
        if not items:
            raise DataError(f"no record left after tokenizing: {self.report.summary()}")
        return items

    def _bad(self, err: BadRecord, on_bad_record: OnBadRecord) -> None:
        if on_bad_record == "error":
            raise err from None
        self.report.drop(err.reason, err.source)

    def _fit(self, item: TokenizedExample, bos: int | None) -> TokenizedExample:
        if len(item.prompt_ids) > self.max_length:
            problem = f"{len(item.prompt_ids)} tokens, longer than max_length={self.max_length}"
            raise BadRecord(item.source, "prompt", problem, "prompt_too_long")
        fitted, cut = truncate(
            item, self.max_length, self.max_prompt_length, self.truncation_mode, bos
        )
        if cut:
            if len({tuple(c) for c in fitted.completion_ids}) < len(fitted.completion_ids):
                problem = (
                    f"identical to another completion once cut to max_length={self.max_length}"
                )
                raise BadRecord(item.source, "chosen", problem, "identical_after_truncation")
            self.report.truncate(cut)
        return fitted

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> TokenizedExample:
        return self.items[index]

    @property
    def is_ranked(self) -> bool:
        """True when any example has more than two completions (use a listwise loss)."""
        return any(len(item.completion_ids) > 2 for item in self.items)


def _check_lengths(max_length: int, max_prompt_length: int, mode: str) -> None:
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2, got {max_length}")
    if not 1 <= max_prompt_length < max_length:
        raise ConfigError(
            f"max_prompt_length must be at least 1 and below max_length={max_length}, "
            f"got {max_prompt_length}"
        )
    if mode not in ("keep_end", "keep_start"):
        raise ConfigError(f"truncation_mode must be 'keep_end' or 'keep_start', got {mode!r}")
