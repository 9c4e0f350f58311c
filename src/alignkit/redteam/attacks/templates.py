"""The template attack: every (jailbreak template x prompt converter) pair, sent in one round.

    attack = build_attack("templates", templates=["roleplay-actor", "testbed-roleplay"],
                          converters=["identity", "base64"], max_candidates=8)

The converter rewrites the request (the goal) and the template wraps the result, so the
template's framing stays readable while the request itself is encoded; with
``convert="prompt"`` the converter rewrites the whole rendered prompt instead. Candidates are
styled ``"<template>+<converter>"``; ``include_direct`` adds the bare request (style
``"direct"``) as the baseline every template is compared with.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, ClassVar

from alignkit.errors import ConfigError
from alignkit.redteam.base import (
    AttackContext,
    AttackMeta,
    Attempt,
    Behaviour,
    Candidate,
    register_attack,
)
from alignkit.redteam.converters import get_converter
from alignkit.redteam.template_formats import load_template_paths
from alignkit.redteam.templates import TEMPLATES, Template, get_template

DIRECT_STYLE = "direct"


def _names(value: Any, option: str) -> list[str] | str:
    if isinstance(value, str):
        return value if value in ("all", "files") else [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"templates attack: {option} must be 'all' or a list of names, got {value!r}")


@register_attack
class TemplateAttack:
    """Jailbreak templates combined with prompt converters (one round per behaviour).

    Options: ``templates`` (names, or "all": every template except the bare ``plain``),
    ``converters`` (names, or "all"; default ``["identity"]``), ``max_candidates`` (most
    template x converter pairs per behaviour, a seeded sample in library order when there are
    more; the direct baseline comes on top), ``include_direct`` (also send the bare request,
    style "direct"), ``template_files`` (files or directories of extra templates: PyRIT,
    garak or alignkit layouts, see :mod:`alignkit.redteam.template_formats`; ``templates=
    "files"`` uses only those), ``on_bad_record`` ("error" or "skip" a bad template entry),
    ``extra_templates`` (Template objects, already loaded) and ``convert`` ("goal" or
    "prompt").
    """

    meta: ClassVar[AttackMeta] = AttackMeta(
        name="templates",
        family="template",
        description=(
            "Hand-written jailbreak templates (role-play, prefix injection, refusal "
            "suppression, hypothetical, authority, many-shot) combined with prompt converters "
            "(Base64, ROT13, leetspeak, ...)."
        ),
        paper='Wei et al. 2023, "Jailbroken: How Does LLM Safety Training Fail?"',
    )

    def __init__(
        self,
        context: AttackContext | None = None,
        templates: list[str] | str = "all",
        converters: list[str] | str = ("identity",),
        max_candidates: int | None = None,
        include_direct: bool = True,
        template_files: list[str] | str | None = None,
        convert: str = "goal",
        on_bad_record: str = "error",
        extra_templates: list[Template] | None = None,
    ) -> None:
        self.context = context or AttackContext()
        library: dict[str, Template] = dict(TEMPLATES)
        files = [template_files] if isinstance(template_files, str) else template_files or []
        extra = list(extra_templates or [])
        if files:
            taken = set(library) | {t.name for t in extra}
            extra += load_template_paths(files, on_bad_record, taken).templates
        for template in extra:
            if template.name in library:
                raise ConfigError(
                    f"template {template.name!r} from {template.source} clashes with an "
                    "existing template name"
                )
            library[template.name] = template
        chosen = _names(templates, "templates")
        if chosen == "all":  # every jailbreak template ("plain" is the bare request)
            self.templates = [t for t in library.values() if t.style != DIRECT_STYLE]
        elif chosen == "files":  # only the templates loaded from files
            self.templates = extra
        else:
            self.templates = [library[n] if n in library else get_template(n) for n in chosen]
        chosen_converters = _names(converters, "converters")
        if chosen_converters == "all":
            from alignkit.redteam.converters import CONVERTERS

            chosen_converters = list(CONVERTERS)
        self.converters = [get_converter(n) for n in chosen_converters]
        if max_candidates is not None and max_candidates < 1:
            raise ConfigError(
                f"templates attack: max_candidates must be >= 1, got {max_candidates}"
            )
        if convert not in ("goal", "prompt"):
            raise ConfigError(
                f"templates attack: convert must be 'goal' or 'prompt', got {convert!r}"
            )
        self.max_candidates = max_candidates
        self.include_direct = include_direct
        self.convert = convert

    def pairs(self, rng: random.Random) -> list[tuple[Template, Any]]:
        """The (template, converter) pairs to try: all, or a seeded sample of
        ``max_candidates`` in library order."""
        pairs = [(t, c) for t in self.templates for c in self.converters]
        if self.max_candidates is not None and len(pairs) > self.max_candidates:
            keep = sorted(rng.sample(range(len(pairs)), self.max_candidates))
            pairs = [pairs[i] for i in keep]
        return pairs

    def render(self, template: Template, converter, goal: str, rng: random.Random) -> str:
        """One prompt: the converted goal in the template, or the converted whole prompt."""
        if self.convert == "prompt":
            return converter(template.render(goal), rng)
        return template.render(converter(goal, rng))

    def propose(
        self, behaviour: Behaviour, history: Sequence[Attempt], rng: random.Random
    ) -> list[Candidate]:
        """Every candidate in round 0; nothing once the behaviour has a history."""
        if history:
            return []
        candidates = []
        if self.include_direct:
            meta = {"template": None, "converter": "identity", "template_style": DIRECT_STYLE}
            candidates.append(Candidate(behaviour.goal, DIRECT_STYLE, meta=meta))
        for template, converter in self.pairs(rng):
            meta = {
                "template": template.name,
                "converter": converter.name,
                "template_style": template.style,
                "template_source": template.source,
            }
            prompt = self.render(template, converter, behaviour.goal, rng)
            candidates.append(Candidate(prompt, f"{template.name}+{converter.name}", meta=meta))
        return candidates
