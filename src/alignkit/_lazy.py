"""Lazy package exports (PEP 562): names are imported from their submodule on first use, so
importing a package stays free of torch until a model is needed."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, table: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``name`` from ``package.<table[name]>`` (or from
    ``table[name]`` itself when it is an absolute ``alignkit.`` module path)."""

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = table[name]
        if not module.startswith("alignkit."):
            module = f"{package}.{module}"
        return getattr(importlib.import_module(module), name)

    return __getattr__
