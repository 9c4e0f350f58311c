"""Configuration: one pydantic model per command, the same option names everywhere.

Every command's options form a flat namespace of *option names*. Options may be organised in
nested groups (``generation:``, ``backend:``) for Python and YAML, but each option also answers
to its plain name, so these are the same setting::

    alignkit generate --max-new-tokens 64                      # CLI: the name with dashes
    max_new_tokens: 64            # YAML, flat ...
    generation: {max_new_tokens: 64}                           # ... or nested
    GenerateConfig(model="testbed", prompt="hi", max_new_tokens=64)   # Python, flat or nested

:func:`load_config` merges defaults < YAML file < overrides (the CLI flags actually given) and
turns every problem into one :class:`~alignkit.errors.ConfigError` that names the file, the line
and the option.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from alignkit.errors import ConfigError, ModelError
from alignkit.models.base import BackendOptions, GenerationConfig, ModelSpec
from alignkit.testbed.build import TestbedConfig
from alignkit.testbed.world import World

KeyPath = tuple[str, ...]
C = TypeVar("C", bound=BaseModel)


# ---------------------------------------------------------------------------------------------
# Option names
# ---------------------------------------------------------------------------------------------


def _key(name: str, field: Any) -> str:
    """The public name of a field: its alias if it has one, else its name."""
    return field.alias or name


def _group_model(field: Any) -> type[BaseModel] | None:
    """The model class of a nested option group, or None for a plain option."""
    ann = field.annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _is_section(group: type[BaseModel] | None) -> bool:
    """Whether a group is a *section*: reached only by its name, its options not flattened."""
    return group is not None and not getattr(group, "flatten_options", True)


class ConfigOption(NamedTuple):
    """One option of a command config: where it sits in the nested model, and its field."""

    path: KeyPath
    field: FieldInfo


@functools.cache
def config_options(cls: type[BaseModel]) -> dict[str, ConfigOption]:
    """Every option name of ``cls`` with its path in the nested model and its field, e.g.
    ``max_new_tokens -> (("generation", "max_new_tokens"), FieldInfo(...))``.

    Raises ``TypeError`` (a programming error) if two groups define the same option name.
    """
    options: dict[str, ConfigOption] = {}
    for name, field in cls.model_fields.items():
        key = _key(name, field)
        group = _group_model(field)
        leaves = {key: ConfigOption((key,), field)}
        if group is not None and not _is_section(group):
            leaves = {
                k: ConfigOption((key, *o.path), o.field) for k, o in config_options(group).items()
            }
        for leaf, option in leaves.items():
            if leaf in options:
                raise TypeError(
                    f"{cls.__name__}: option name {leaf!r} is defined twice "
                    f"({'.'.join(options[leaf].path)} and {'.'.join(option.path)})"
                )
            options[leaf] = option
    return options


def _as_data(value: Any) -> Any:
    """A nested model instance as a dict of its explicitly set fields; a dict as a copy."""
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True, by_alias=True)
    return dict(value) if isinstance(value, Mapping) else value


def nest_options(cls: type[BaseModel], data: Mapping[str, Any]) -> dict[str, Any]:
    """Route flat option names into their groups: ``{"temperature": 0}`` becomes
    ``{"generation": {"temperature": 0}}``. Keys that are already top-level fields stay; unknown
    keys are kept so validation can report them. Raises ``ValueError`` on a setting given twice.
    """
    top = {_key(n, f) for n, f in cls.model_fields.items()}
    options = config_options(cls)
    flat = {k: v for k, v in data.items() if k not in top and k in options}
    out = {k: _as_data(v) for k, v in data.items() if k not in flat}
    for key, value in flat.items():
        *groups, leaf = options[key].path
        node = out
        for group in groups:
            if not isinstance(node, dict):
                break
            node[group] = _as_data(node.get(group, {}))
            node = node[group]
        if not isinstance(node, dict):
            continue  # the group itself has a bad value; validation reports it
        if leaf in node:
            dotted = ".".join(options[key].path)
            raise ValueError(f"option {key!r} is given twice (also as {dotted!r})")
        node[leaf] = value
    return out


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, merging nested dicts key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class CommandConfig(BaseModel):
    """Base class of command configs: unknown keys are errors; flat option names are accepted.

    A config used as a group of another is flattened into it (its options answer to their plain
    names) unless it sets ``flatten_options = False``: then it is a *section*, one option of the
    outer config whose own options are written under its name (``redteam: {attacks: [...]}``),
    so sections may repeat option names (every pipeline stage has its own ``enabled``).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    flatten_options: ClassVar[bool] = True

    @model_validator(mode="before")
    @classmethod
    def _accept_flat_options(cls, data: Any) -> Any:
        return nest_options(cls, data) if isinstance(data, Mapping) else data


# ---------------------------------------------------------------------------------------------
# Loading and error messages
# ---------------------------------------------------------------------------------------------


def _key_lines(node: yaml.Node | None, prefix: KeyPath = ()) -> dict[KeyPath, int]:
    """Line number (1-based) of every mapping key in a composed YAML document."""
    lines: dict[KeyPath, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, str(key_node.value))
            lines[path] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, path))
    return lines


def read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """Read a YAML config file: its top-level mapping and the line of each key."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise ConfigError(f"config file {str(path)!r} {what}")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of option names to values at the top level, "
            f"got {type(data).__name__}"
        )
    return data, _key_lines(node)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _has_path(data: Mapping[str, Any], path: KeyPath) -> bool:
    node: Any = data
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _model_at(cls: type[BaseModel], path: KeyPath) -> type[BaseModel] | None:
    """The model class of the group at ``path`` (``()`` is ``cls`` itself)."""
    for part in path:
        fields = {_key(n, f): f for n, f in cls.model_fields.items()}
        group = _group_model(fields[part]) if part in fields else None
        if group is None:
            return None
        cls = group
    return cls


def _unknown_key(cls: type[BaseModel], loc: KeyPath, name: str) -> str:
    """'unknown <name>' with the closest valid names, or the list of valid names."""
    *parent, key = loc
    group = _model_at(cls, tuple(parent)) if parent else None
    if group is not None and not _is_section(group):
        candidates = sorted(_key(n, f) for n, f in group.model_fields.items())
    else:
        group = group or cls
        top = [_key(n, f) for n, f in group.model_fields.items()]
        candidates = sorted(set(top) | set(config_options(group)))
    name = name or f"option {key!r}"
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
    if close:
        return f"unknown {name}; did you mean {' or '.join(map(repr, close))}?"
    return f"unknown {name}; valid options: {', '.join(candidates)}"


def _option_path(cls: type[BaseModel], loc: KeyPath) -> KeyPath:
    """The longest prefix of an error location that is an option (drops list indices); inside
    a section, the option of the section."""
    options = {option.path: option for option in config_options(cls).values()}
    for i in range(len(loc), 0, -1):
        option = options.get(loc[:i])
        if option is None:
            continue
        section = _group_model(option.field)
        if _is_section(section) and len(loc) > i:
            return (*loc[:i], *_option_path(section, loc[i:]))
        return loc[:i]
    return loc


def _describe_error(err: Mapping[str, Any], cls: type[BaseModel], name: str) -> str:
    """One pydantic error as '<name>: expected X, got Y' (or the validator's own words)."""
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return _unknown_key(cls, tuple(str(p) for p in err["loc"]), name)
    if kind == "missing":
        leaf = str(err["loc"][-1])
        return (
            f"missing required option {leaf!r} (--{leaf.replace('_', '-')} on the command line "
            f"or '{leaf}:' in a config file)"
        )
    if msg.startswith("Value error, "):
        msg = msg.removeprefix("Value error, ")
    else:
        if msg.startswith("Input should be "):
            msg = "expected " + msg.removeprefix("Input should be ")
        msg = f"{msg}, got {_short(err.get('input'))}"
    return f"{name}: {msg}" if name else msg


def _error_message(
    exc: ValidationError,
    cls: type[BaseModel],
    file: Path | None,
    file_data: Mapping[str, Any],
    lines: Mapping[KeyPath, int],
    overrides: Mapping[str, Any],
    flag_names: bool,
) -> str:
    """All validation errors on one line, each naming where the bad value came from."""
    parts = []
    for err in exc.errors():
        loc = _option_path(cls, tuple(str(p) for p in err["loc"]))
        dotted = ".".join(loc)
        prefix = ""
        if loc and _has_path(overrides, loc):
            leaf = loc[-1]
            name = f"--{leaf.replace('_', '-')}" if flag_names else f"option {leaf!r}"
        elif file is not None and (not loc or _has_path(file_data, loc)):
            written = loc if loc in lines or not loc else loc[-1:]  # nested, or flat in the file
            line = lines.get(written)
            prefix = f"{file}, line {line}: " if line else f"{file}: "
            name = f"key {'.'.join(written)!r}" if loc else ""
        else:
            name = f"option {dotted!r}" if loc else ""
        parts.append(prefix + _describe_error(err, cls, name))
    return "; ".join(parts)


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    flag_names: bool = False,
) -> C:
    """Build ``cls`` from its defaults, a YAML file and overrides (in that order of precedence).

    ``overrides`` use option names (flat, ``{"temperature": 0}``) or nested groups. Every problem
    becomes a :class:`ConfigError` naming the file, line and key; ``flag_names=True`` (the CLI)
    names overridden options as ``--flag`` instead.
    """
    file = Path(path) if path is not None else None
    file_data, lines = read_yaml(file) if file is not None else ({}, {})
    try:
        nested_file = nest_options(cls, file_data)
    except ValueError as exc:
        raise ConfigError(f"{file}: {exc}") from None
    try:
        nested_over = nest_options(cls, dict(overrides or {}))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return cls.model_validate(_deep_merge(nested_file, nested_over))
    except ValidationError as exc:
        raise ConfigError(
            _error_message(exc, cls, file, nested_file, lines, nested_over, flag_names)
        ) from None


def dump_config(config: BaseModel) -> str:
    """A config as YAML that :func:`load_config` reads back to the same config."""
    data = config.model_dump(mode="json", by_alias=True)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------------------------------------
# Command configs
# ---------------------------------------------------------------------------------------------


def _check_model_string(value: str) -> str:
    try:
        return str(ModelSpec.parse(value))
    except ModelError as exc:
        raise ValueError(exc.message) from None


ModelString = Annotated[str, AfterValidator(_check_model_string)]
"""A model string (``hf:PATH[+ADAPTER]``, ``openai:MODEL@URL``, ``testbed``), checked on load."""


class GenerateConfig(CommandConfig):
    """``alignkit generate``: complete prompts with any model."""

    model: ModelString = Field(
        description="Model string: hf:PATH[+ADAPTER], openai:MODEL@URL or testbed."
    )
    prompt: list[str] = Field(default_factory=list, description="A prompt (repeat for several).")
    prompts_file: Path | None = Field(
        None, description="JSONL file of {'prompt': ...} lines, or .txt with one prompt per line."
    )
    output: Path | None = Field(None, description="Write JSONL completions here (else print).")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    backend: BackendOptions = Field(default_factory=BackendOptions)

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _needs_prompts(self) -> GenerateConfig:
        if not self.prompt and self.prompts_file is None:
            raise ValueError("give at least one --prompt or a --prompts-file")
        return self


class BuildTestbedConfig(CommandConfig):
    """``alignkit testbed build``: train and cache the testbed model."""

    testbed: TestbedConfig = Field(default_factory=TestbedConfig)
    force: bool = Field(False, description="Rebuild even if a cached model exists.")


class BehaviourConfig(CommandConfig):
    """``alignkit testbed info``: measure a model's behaviour."""

    model: ModelString = Field("testbed", description="Model string of the model to measure.")
    n: int = Field(100, ge=1, description="Prompts per behaviour metric.")
    seed: int = Field(0, description="Seed for sampling the evaluation prompts.")
    json_path: Path | None = Field(None, alias="json", description="Also write the report as JSON.")


TestbedKind = Literal[World.KINDS]  # type: ignore[valid-type]
"""A kind of testbed example: benign, unanswerable, harmful, jailbreak, critique, ..."""


WorldSeed = Annotated[
    int,
    Field(
        description="Seed of the testbed world, which decides its train / held-out split: 0 is "
        "the world the built-in testbed model learnt (another seed's held-out prompts are partly "
        "its training prompts); use the seed of `alignkit testbed build --seed` for such a model."
    ),
]
"""The ``--world-seed`` option of the commands that draw testbed data."""


class SampleTestbedConfig(CommandConfig):
    """``alignkit testbed sample``: show examples from the testbed world."""

    kind: TestbedKind | None = Field(None, description="Kind of example (default: a mix).")
    n: int = Field(5, ge=1, description="Number of examples.")
    split: Literal["train", "heldout"] = Field("heldout", description="Which split to draw from.")
    seed: int = Field(0, description="Seed of the draw.")
    world_seed: WorldSeed = 0
    jsonl: bool = Field(False, description="Print JSON lines instead of a table.")


class TestbedPreferencesConfig(CommandConfig):
    """``alignkit testbed preferences``: write preference data drawn from the testbed world."""

    output: Path = Field(description="JSONL file to write.")
    n: int = Field(512, ge=1, description="Number of records.")
    split: Literal["train", "heldout"] = Field("train", description="Which split to draw from.")
    seed: int = Field(0, description="Seed of the draw.")
    world_seed: WorldSeed = 0
    ranked: bool = Field(False, description="Ranked multi-response records instead of pairs.")


__all__ = [
    "BehaviourConfig",
    "TestbedPreferencesConfig",
    "BuildTestbedConfig",
    "CommandConfig",
    "ConfigOption",
    "GenerateConfig",
    "ModelString",
    "SampleTestbedConfig",
    "config_options",
    "dump_config",
    "load_config",
    "nest_options",
    "read_yaml",
]
