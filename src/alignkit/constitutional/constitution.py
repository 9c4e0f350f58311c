"""Constitutions: sets of principles that guide critique, revision and AI feedback.

A constitution file (YAML or JSON) is either a list of principles or a mapping with a
``principles`` list (and an optional ``name``). Each principle has an ``id``, a
``critique_request``, a ``revision_request``, a ``comparison_question`` and optional ``tags``.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from alignkit.errors import ConfigError

Tag = Literal["harmlessness", "honesty", "helpfulness"]


class Principle(BaseModel):
    """One principle: how to critique a response, how to revise it, how to compare two."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, description="Unique name of the principle.")
    critique_request: str = Field(min_length=1, description="Asks the critic what to look for.")
    revision_request: str = Field(min_length=1, description="Asks the reviser what to change.")
    comparison_question: str = Field(
        min_length=1, description="Asks a feedback model which of two responses is better."
    )
    tags: list[Tag] = Field(default_factory=list)

    @field_validator("id", "critique_request", "revision_request", "comparison_question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


class Constitution(BaseModel):
    """An ordered, non-empty set of principles with unique ids."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "constitution"
    principles: list[Principle] = Field(min_length=1)

    @field_validator("principles")
    @classmethod
    def _unique_ids(cls, principles: list[Principle]) -> list[Principle]:
        seen: set[str] = set()
        for p in principles:
            if p.id in seen:
                raise ValueError(f"duplicate principle id {p.id!r}")
            seen.add(p.id)
        return principles

    def __len__(self) -> int:
        return len(self.principles)

    def __getitem__(self, principle_id: str) -> Principle:
        for p in self.principles:
            if p.id == principle_id:
                return p
        raise KeyError(principle_id)

    def sample(self, rng: random.Random) -> Principle:
        """One principle drawn uniformly with ``rng``."""
        return rng.choice(self.principles)

    def select(self, *ids: str) -> Constitution:
        """The principles named by ``ids``, in that order (``KeyError`` for an unknown id)."""
        return Constitution(name=self.name, principles=[self[i] for i in ids])

    def with_tags(self, *tags: str) -> Constitution:
        """The principles carrying any of ``tags``."""
        kept = [p for p in self.principles if set(p.tags) & set(tags)]
        return Constitution(name=self.name, principles=kept)


def _describe(error: ValidationError, raw: object) -> str:
    """'principle <id> (#n) field <f>: message' for the first validation error."""
    first = error.errors()[0]
    loc = list(first["loc"])
    where = ""
    if loc[:1] == ["principles"] and len(loc) >= 2 and isinstance(loc[1], int):
        index = loc[1]
        items = raw.get("principles") if isinstance(raw, dict) else None
        pid = None
        if isinstance(items, list) and index < len(items) and isinstance(items[index], dict):
            pid = items[index].get("id")
        where = f"principle #{index}" + (f" ({pid!r})" if pid else "")
        loc = loc[2:]
    field = ".".join(str(part) for part in loc)
    parts = [p for p in (where, f"field {field!r}" if field else "") if p]
    return f"{', '.join(parts) or 'constitution'}: {first['msg']}"


def parse_constitution(raw: object, source: str = "constitution") -> Constitution:
    """Validate already-loaded data (a list of principles or a mapping) into a Constitution."""
    if isinstance(raw, list):
        raw = {"principles": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a list of principles or a mapping with 'principles'")
    try:
        return Constitution.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_describe(error, raw)}") from None


def load_constitution(path: str | Path) -> Constitution:
    """Read and validate a YAML or JSON constitution; errors name the file, principle and field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: constitution file not found")
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise ConfigError(f"{path}: not valid {kind}: {' '.join(str(error).split())}") from None
    return parse_constitution(raw, str(path))


def default_constitution() -> Constitution:
    """The constitution shipped with alignkit (``constitutional/data/default.yaml``)."""
    resource = resources.files("alignkit.constitutional") / "data" / "default.yaml"
    raw = yaml.safe_load(resource.read_text(encoding="utf-8"))
    return parse_constitution(raw, "alignkit default constitution")
