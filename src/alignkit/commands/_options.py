"""Typer commands whose options are generated from a pydantic config model.

:func:`config_command` registers ``fn(config)`` as a typer command. Each option of the config
(see :func:`alignkit.config.config_options`, nested groups flattened) becomes a ``--flag`` named
after it (``max_new_tokens`` -> ``--max-new-tokens``), with the field's type, default and
description, in a help panel per group. Typer builds commands from ``inspect.signature``, so the
callback gets a synthetic ``__signature__``. At run time only the flags actually given on the
command line (click's parameter source) override the ``--config`` YAML file, so the precedence
is defaults < YAML < flags; :func:`alignkit.config.load_config` validates the merge.

Options whose type has no command-line form (dicts, nested lists, unions) are left to YAML and
Python.
"""

from __future__ import annotations

import enum
import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar, Union, get_args, get_origin

import typer
from pydantic import BaseModel

from alignkit.config import config_options, dump_config, load_config

C = TypeVar("C", bound=BaseModel)

_SCALARS = (str, int, float, bool, Path)
_CONFIG_PARAM = "config_file__"
_PRINT_PARAM = "print_config__"
_CTX_PARAM = "ctx__"
# option names taken by --config, --print-config and the parameters of the synthetic signature
_RESERVED = {"config", "print_config", _CTX_PARAM, _CONFIG_PARAM, _PRINT_PARAM}


@dataclass(frozen=True)
class CliOption:
    """One config option as a typer parameter."""

    name: str
    annotation: Any
    info: Any  # typer's OptionInfo

    def value(self, raw: Any) -> Any:
        """The value typer parsed, as the config expects it (enum members become strings)."""
        if isinstance(raw, enum.Enum):
            return raw.value
        if isinstance(raw, (list, tuple)):
            return [self.value(item) for item in raw]
        return raw


def _cli_type(annotation: Any, name: str) -> tuple[Any, type[enum.Enum] | None] | None:
    """The type typer should parse for ``annotation`` (and its choices enum), or None."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:  # e.g. an optional ModelString: the validators stay with pydantic
        return _cli_type(args[0], name)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = _cli_type(rest[0], name) if len(rest) == 1 else None
        return (Optional[inner[0]], inner[1]) if inner else None  # noqa: UP045 (a runtime type)
    if origin is Literal and all(isinstance(a, str) for a in args):
        choices = enum.Enum(name, {a: a for a in args}, type=str)
        return choices, choices
    if origin is list and len(args) == 1 and args[0] in _SCALARS and args[0] is not bool:
        return list[args[0]], None
    if annotation in _SCALARS:
        return annotation, None
    return None


def _none_or(number: type) -> Callable[[str], Any]:
    """A parser of ``none`` / ``null`` (None) or a number of type ``number``."""

    def parse(text: Any) -> Any:
        if text is None or isinstance(text, int | float):
            return text
        if str(text).strip().lower() in ("none", "null"):
            return None
        try:
            return number(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not {number.__name__} or 'none'") from None

    return parse


def cli_options(cls: type[BaseModel]) -> list[CliOption]:
    """The typer parameters for every option of ``cls`` that has a command-line form."""
    out = []
    for name, (path, field) in config_options(cls).items():
        mapped = _cli_type(field.annotation, name)
        if mapped is None:
            continue
        annotation, choices = mapped
        flag = "--" + name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if field.annotation is bool else [flag]
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        if choices is not None and default is not None:
            default = choices(default)
        help_text = (field.description or "") + (" (required)" if field.is_required() else "")
        panel = f"{path[0].replace('_', ' ').capitalize()} options" if len(path) > 1 else None
        extra: dict[str, Any] = {}
        number = get_args(annotation)[0] if get_origin(annotation) is Union else None
        if number in (int, float):  # an optional number: `none` gives None (e.g. --seed none)
            annotation = str
            extra = {"parser": _none_or(number), "metavar": f"{number.__name__}|none"}
            default = None if default is None else str(default)
        info = typer.Option(
            default, *decls, help=help_text, show_default=not field.is_required(),
            rich_help_panel=panel, **extra,
        )  # fmt: skip
        out.append(CliOption(name, annotation, info))
    return out


def _given_on_command_line(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _signature(options: list[CliOption]) -> inspect.Signature:
    """ctx, one keyword parameter per option, then --config and --print-config."""

    def param(name: str, annotation: Any, default: Any) -> inspect.Parameter:
        return inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
        )

    config_help = "YAML file of options; flags given here override it."
    return inspect.Signature(
        [
            param(_CTX_PARAM, typer.Context, inspect.Parameter.empty),
            *(param(o.name, o.annotation, o.info) for o in options),
            param(_CONFIG_PARAM, Optional[Path], typer.Option(None, "--config", help=config_help)),  # noqa: UP045
            param(
                _PRINT_PARAM,
                bool,
                typer.Option(False, "--print-config", help="Print the merged config and exit."),
            ),
        ]
    )


def config_command(
    app: typer.Typer, name: str, config_cls: type[C], **command_kwargs: Any
) -> Callable[[Callable[[C], Any]], Callable[[C], Any]]:
    """Register ``fn(config: config_cls)`` as command ``name`` of ``app``.

    The command gets one flag per option of ``config_cls`` plus ``--config FILE`` and
    ``--print-config``; ``command_kwargs`` go to ``app.command`` (the help defaults to the
    docstring of ``fn``).
    """
    options = cli_options(config_cls)
    clash = set(config_options(config_cls)) & (
        _RESERVED | {_CTX_PARAM, _CONFIG_PARAM, _PRINT_PARAM}
    )
    if clash:
        raise TypeError(f"{config_cls.__name__}: option names {sorted(clash)} are reserved")

    def register(fn: Callable[[C], Any]) -> Callable[[C], Any]:
        def callback(**kwargs: Any) -> Any:
            ctx = kwargs.pop(_CTX_PARAM)
            given = {
                o.name: o.value(kwargs[o.name])
                for o in options
                if _given_on_command_line(ctx, o.name)
            }
            config = load_config(config_cls, kwargs[_CONFIG_PARAM], given, flag_names=True)
            if kwargs[_PRINT_PARAM]:
                typer.echo(dump_config(config), nl=False)
                return None
            return fn(config)

        # typer reads the synthetic signature; name and help come from fn
        callback.__signature__ = _signature(options)  # type: ignore[attr-defined]
        callback.__name__, callback.__doc__ = fn.__name__, fn.__doc__
        app.command(name, **command_kwargs)(callback)
        return fn

    return register
