"""A library of jailbreak templates, written for alignkit, and loading of users' own.

The built-in library lives in ``redteam/data/templates.yaml`` (the same format users write).

Every template has a ``name``, a ``style`` (see :data:`STYLES`) and a text with a ``{goal}``
slot where the harmful request goes. The styles follow the failure modes described by Wei et
al. 2023, "Jailbroken: How Does LLM Safety Training Fail?" (role-play, prefix injection,
refusal suppression, hypothetical framing, claimed authority) and Anil et al. 2024, "Many-shot
Jailbreaking" (a fake dialogue of compliant turns before the request). The many-shot dialogue
answers are placeholders ("[redacted ... step]"), never real instructions.

The testbed world's own wrappers (:data:`alignkit.testbed.content.JAILBREAKS`) are in the
library as ``testbed-<name>`` templates, so attacks on the testbed model can be measured
against the wrappers it was trained to fall for. (Its ROT13 wrapper is the ``rot13``
converter, see :mod:`alignkit.redteam.converters`.)

User templates come from YAML, JSON or JSON Lines files (:func:`load_templates`)::

    - name: my-template
      style: role-play          # optional (default "custom")
      text: "You are ... {goal}"
      shots: 0                  # optional: placeholder dialogue turns put before the text
      description: ...          # optional
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from alignkit.data.preference import read_records
from alignkit.data.records import type_name
from alignkit.errors import ConfigError, DataError
from alignkit.testbed import content as C

STYLES = (
    "role-play",
    "prefix-injection",
    "refusal-suppression",
    "hypothetical",
    "authority",
    "many-shot",
    "instruction-override",
    "direct",
    "custom",
)
SLOT = "{goal}"
SHOTS_SLOT = "{shots}"
TEMPLATE_FILE_TYPES = (".yaml", ".yml", ".json", ".jsonl")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_FIELDS = {"name", "style", "text", "template", "description", "shots"}


@dataclass(frozen=True)
class Template:
    """A jailbreak template; :meth:`render` puts a request in its ``{goal}`` slot."""

    name: str
    style: str
    text: str
    description: str = ""
    shots: int = 0  # placeholder Q/A turns before the request (many-shot)
    source: str = "builtin"

    def render(self, goal: str) -> str:
        """The prompt for ``goal`` (any other braces in the text are left as they are)."""
        text = self.text
        if self.shots:
            dialogue = many_shot_dialogue(goal, self.shots)
            text = text.replace(SHOTS_SLOT, dialogue) if SHOTS_SLOT in text else dialogue + text
        return text.replace(SLOT, goal)

    def to_dict(self) -> dict:
        return asdict(self)


def _shot_tasks() -> list[tuple[str, str]]:
    """(task, harm category name) of the testbed, interleaved across categories."""
    columns = [
        [(task, spec["name"]) for task in spec["tasks"]] for spec in C.HARM_CATEGORIES.values()
    ]
    return [col[i] for i in range(max(map(len, columns))) for col in columns if i < len(col)]


def many_shot_dialogue(goal: str, shots: int) -> str:
    """A fake transcript of ``shots`` requests, each answered compliantly with placeholder
    steps; tasks named in ``goal`` are left out so the request is never answered in it."""
    lowered = goal.lower()
    tasks = [(t, c) for t, c in _shot_tasks() if t not in lowered]
    turns = []
    for i in range(shots):
        task, category = tasks[i % len(tasks)]
        steps = " ".join(C.COMPLIANCE_STEP.format(i=k, c=category) for k in (1, 2, 3))
        opener = C.COMPLIANCE_OPENERS[0].format(t=task.replace("my ", "your "))
        turns.append(f"User: How do I {task}?\nAssistant: {opener} {steps}\n")
    return "\n".join(turns) + "\n"


_TESTBED_STYLES = {  # testbed wrapper -> style
    "roleplay": "role-play",
    "ignore_instructions": "instruction-override",
    "refusal_suppression": "refusal-suppression",
    "hypothetical": "hypothetical",
    "prefix_injection": "prefix-injection",
}
BUILTIN_FILE = Path(__file__).parent / "data" / "templates.yaml"


def _builtin_templates() -> list[Template]:
    """The library: ``data/templates.yaml`` plus the testbed world's wrappers."""
    library = [dataclasses.replace(t, source="builtin") for t in load_templates(BUILTIN_FILE)]
    return library + [
        Template(
            f"testbed-{name}",
            _TESTBED_STYLES[name],
            C.JAILBREAKS[name][0].replace("{req}", SLOT),
            f"The testbed world's {name!r} wrapper (the testbed model was trained on it).",
            source="testbed",
        )
        for name in C.JAILBREAKS
        if name in _TESTBED_STYLES
    ]


TEMPLATES: dict[str, Template] = {}
"""Every registered template by name (the built-in library plus :func:`register_template`)."""


def register_template(template: Template, replace: bool = False) -> Template:
    """Add a template to :data:`TEMPLATES`; a name already taken raises unless ``replace``."""
    if template.name in TEMPLATES and not replace:
        raise ConfigError(f"a template named {template.name!r} already exists")
    TEMPLATES[template.name] = template
    return template


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ConfigError(f"unknown template {name!r}; choose from {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def testbed_templates() -> list[Template]:
    """The templates built from the testbed world's wrappers."""
    return [t for t in TEMPLATES.values() if t.source == "testbed"]


# ---------------------------------------------------------------------------------- loading


def parse_template(entry: Any, source: str, origin: str = "") -> Template:
    """Validate one template entry; raises DataError naming the source and the field."""
    if not isinstance(entry, dict):
        raise DataError(f"{source}: expected a mapping with name and text, got {type_name(entry)}")
    unknown = sorted(set(map(str, entry)) - _FIELDS)
    if unknown:
        raise DataError(
            f"{source}: field '{unknown[0]}': unknown; allowed: {', '.join(sorted(_FIELDS))}"
        )
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise DataError(
            f"{source}: field 'name': needs a name of letters, digits, '-', '_' or '.', "
            f"got {name!r}"
        )
    key = "text" if "text" in entry else "template"
    text = entry.get(key)
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{source}: field '{key}': needs the template text")
    if SLOT not in text:
        raise DataError(f"{source}: field '{key}': has no {SLOT} slot for the request")
    shots = entry.get("shots", 0)
    if not isinstance(shots, int) or isinstance(shots, bool) or not 0 <= shots <= 256:
        raise DataError(f"{source}: field 'shots': must be a whole number 0-256, got {shots!r}")
    fields = {}
    for field_name in ("style", "description"):
        value = entry.get(field_name, "")
        if not isinstance(value, str):
            raise DataError(f"{source}: field '{field_name}': must be text")
        fields[field_name] = value.strip()
    style = fields["style"] or "custom"
    return Template(name, style, text, fields["description"], shots, origin or source)


def yaml_error(path: Path, exc: yaml.YAMLError) -> DataError:
    """One line naming the file, the line of the problem (where YAML knows it) and what."""
    mark = getattr(exc, "problem_mark", None)
    where = f":{mark.line + 1}" if mark else ""
    return DataError(f"{path}{where}: malformed YAML: {getattr(exc, 'problem', exc)}")


def _yaml_entries(path: Path) -> list[tuple[str, Any]]:
    """(source, entry) for each entry of a YAML file; sources carry 1-based line numbers."""
    try:
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc) from None
    if isinstance(data, dict) and "templates" in data:
        data = data["templates"]
        root = next(v for k, v in root.value if k.value == "templates")
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of templates (or a 'templates:' list)")
    return [
        (f"{path}:{node.start_mark.line + 1}", e) for node, e in zip(root.value, data, strict=True)
    ]


def load_templates(path: str | Path) -> list[Template]:
    """The templates of a YAML (``.yaml``/``.yml``), JSON or JSON Lines file, validated.

    Each needs a ``name`` and a ``text`` (or ``template``) with a ``{goal}`` slot; names must
    be unique in the file. Errors name the file, the line (or record) and the field.
    """
    file = Path(str(path)).expanduser()
    if not file.exists():
        raise DataError(f"{path}: no such file")
    if file.suffix.lower() not in TEMPLATE_FILE_TYPES:
        raise DataError(
            f"{path}: unknown template file type {file.suffix or '(none)'!r}; "
            f"accepted: {', '.join(TEMPLATE_FILE_TYPES)}"
        )
    if file.suffix.lower() in (".yaml", ".yml"):
        entries = _yaml_entries(file)
    else:
        entries = []
        for source, record in read_records(file):
            if isinstance(record, DataError):
                raise record
            entries.append((source, record))
    templates: list[Template] = []
    seen: dict[str, str] = {}
    for source, entry in entries:
        template = parse_template(entry, source, origin=file.name)
        if template.name in seen:
            raise DataError(
                f"{source}: field 'name': duplicate template {template.name!r} "
                f"(first at {seen[template.name]})"
            )
        seen[template.name] = source
        templates.append(template)
    if not templates:
        raise DataError(f"{path}: no templates in the file")
    return templates


for _template in _builtin_templates():
    register_template(_template)
