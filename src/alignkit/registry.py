"""One registry mechanism for plugins: scorers, judges, attacks and DPO losses register alike.

A :class:`Registry` maps names to factories (functions or classes) with their metadata in one
place (:class:`Entry`: description, paper, and what each figure measures), so configs, the CLI
and reports read the same text. Every kind behaves alike:

- ``@REGISTRY.register(name, description=..., paper=..., measures={...})`` adds a factory; a
  name that is already taken is refused (pass ``replace=True`` to override a plugin on
  purpose), so a second plugin can no longer shadow the first without a word.
- :meth:`Registry.build` checks the options against the factory's signature
  (:func:`inspect.signature`) and raises one :class:`~alignkit.errors.ConfigError` wording for
  every kind: ``<kind> '<name>': unknown option(s) x; it takes a, b``. With ``shared=True``
  (one set of options handed to several plugins of a kind, as campaigns do for their judges
  and evaluations for their scorers) options that another plugin of the kind takes are left
  out instead; a name no plugin takes is still an error.
- A factory that takes ``**options`` checks its own options (they are all passed on).

DPO losses (:mod:`alignkit.dpo.registry`) are a :class:`Registry` too; their factory is the
loss itself, and their hyper-parameters are checked against declared bounds (a signature carries
no bounds) by :func:`alignkit.dpo.registry.check_config`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from alignkit.errors import ConfigError

__all__ = ["Entry", "Registry"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[F]):
    """A registered plugin: its factory and the metadata reports read."""

    kind: str
    name: str
    factory: F
    description: str = ""
    paper: str = ""
    measures: Mapping[str, str] = field(default_factory=dict)  # figure -> what it measures
    fixed: tuple[str, ...] = ()  # leading arguments the caller supplies (not options)

    def options(self) -> frozenset[str] | None:
        """The keyword options the factory declares (None: it takes ``**options``)."""
        params = self._params()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        return frozenset(
            p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )

    def required(self) -> list[str]:
        """Options without a default."""
        return sorted(
            p.name
            for p in self._params()
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )

    def _params(self) -> list[inspect.Parameter]:
        params = inspect.signature(self.factory).parameters.values()
        return [p for p in params if p.name not in self.fixed and p.kind is not p.VAR_POSITIONAL]

    def to_dict(self) -> dict[str, Any]:
        options = self.options()
        return {
            "name": self.name,
            "description": self.description,
            "paper": self.paper,
            "measures": dict(self.measures),
            "options": None if options is None else sorted(options),
        }


class Registry(Mapping[str, F]):
    """Named factories of one kind (``registry[name]`` is the factory, as with a dict).

    ``fixed`` names leading factory arguments the caller passes positionally (an attack's
    ``context``); ``load`` imports the built-in plugins on first use.
    """

    def __init__(
        self, kind: str, fixed: tuple[str, ...] = (), load: Callable[[], None] | None = None
    ) -> None:
        self.kind = kind
        self.fixed = fixed
        self._load = load
        self._loaded = load is None
        self._entries: dict[str, Entry[F]] = {}

    # ------------------------------------------------------------------ registering
    def register(
        self,
        name: str,
        *,
        description: str = "",
        paper: str = "",
        measures: Mapping[str, str] | None = None,
        replace: bool = False,
    ) -> Callable[[F], F]:
        """Decorator: add the factory under ``name`` (see :meth:`add`)."""

        def decorate(factory: F) -> F:
            self.add(name, factory, description, paper, measures, replace=replace)
            return factory

        return decorate

    def add(
        self,
        name: str,
        factory: F,
        description: str = "",
        paper: str = "",
        measures: Mapping[str, str] | None = None,
        replace: bool = False,
    ) -> Entry[F]:
        """Add ``factory`` under ``name``; a taken name raises unless ``replace``."""
        self._ensure_loaded()  # the built-ins first, so a plugin cannot take their names
        old = self._entries.get(name)
        if old is not None and not replace and not _same_definition(old.factory, factory):
            raise ConfigError(
                f"{self.kind} {name!r} is already registered (by {_where(old.factory)}); "
                "choose another name or pass replace=True"
            )
        doc = description or (inspect.getdoc(factory) or "").split("\n\n")[0]
        entry = Entry(self.kind, name, factory, doc, paper, dict(measures or {}), self.fixed)
        self._entries[name] = entry
        return entry

    # ------------------------------------------------------------------ looking up
    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True  # before loading: plugin modules register while importing
            assert self._load is not None
            self._load()

    def entry(self, name: str) -> Entry[F]:
        """The entry registered as ``name`` (a ConfigError naming the choices if none is)."""
        self._ensure_loaded()
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose from {', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def __getitem__(self, name: str) -> F:
        self._ensure_loaded()
        return self._entries[name].factory

    def __iter__(self) -> Iterator[str]:
        self._ensure_loaded()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._entries)

    def metadata(self) -> dict[str, dict[str, Any]]:
        """Every entry's metadata, by name (what reports and ``--help`` texts read)."""
        self._ensure_loaded()
        return {name: e.to_dict() for name, e in sorted(self._entries.items())}

    # ------------------------------------------------------------------ building
    def options_for(self, name: str, options: Mapping[str, Any], shared: bool = False) -> dict:
        """The options ``name``'s factory receives; unknown ones raise one ConfigError line."""
        entry = self.entry(name)
        takes = entry.options()
        if takes is None:
            return dict(options)
        others: set[str] = set()
        if shared:
            for other in self._entries.values():
                others |= other.options() or set()
        unknown = sorted(k for k in options if k not in takes and k not in others)
        if unknown:
            raise ConfigError(
                f"{self.kind} {name!r}: unknown option(s) {', '.join(unknown)}; "
                f"it takes {', '.join(sorted(takes)) or 'no options'}"
            )
        missing = [k for k in entry.required() if k not in options]
        if missing:
            raise ConfigError(f"{self.kind} {name!r}: missing option(s) {', '.join(missing)}")
        return {k: v for k, v in options.items() if k in takes}

    def build(self, name: str, *args: Any, shared: bool = False, **options: Any) -> Any:
        """``factory(*args, **options)`` for the entry ``name``, its options checked first."""
        kept = self.options_for(name, options, shared=shared)
        return self._entries[name].factory(*args, **kept)


def _same_definition(a: Callable, b: Callable) -> bool:
    """The same factory, or its re-definition when its module is imported again (a reload)."""
    key = (getattr(a, "__module__", None), getattr(a, "__qualname__", None))
    other = (getattr(b, "__module__", None), getattr(b, "__qualname__", None))
    return a is b or (key[1] is not None and key == other)


def _where(factory: Callable) -> str:
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', factory)}"
