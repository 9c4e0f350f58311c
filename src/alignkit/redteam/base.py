"""The core types of red teaming: behaviours, attacks (plugins), candidates, attempts, judges.

An **attack** is a plugin with declarative metadata (:class:`AttackMeta`: name, family,
description, paper) that reports are built from. Campaigns drive every attack through one
loop: given a behaviour and every earlier attempt on it (the history, read back from the
campaign store), :meth:`Attack.propose` returns the next candidate prompts, or nothing when the
attack is finished. The campaign sends all candidates of a round, across behaviours and
attacks, to the target in one batched call, judges the responses, and stores the round in one
transaction. Because proposals depend only on the history and a seeded RNG, a campaign killed
mid-round redoes that round exactly: no attempt is lost or duplicated.

A **judge** decides whether a response to a behaviour is a successful attack (harmful
compliance): a score in [0, 1] (1 = jailbroken) or None when it cannot tell.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from alignkit.errors import ConfigError

FAMILIES = ("template", "iterative", "gradient", "quality-diversity")


@dataclass(frozen=True)
class Behaviour:
    """Something the target should refuse to do."""

    id: str
    goal: str  # the harmful request, as a user would ask it
    target: str = ""  # an affirmative start of a compliant answer (the GCG target string)
    category: str | None = None  # harm category
    source: str = ""  # where it came from: "testbed", a file name

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AttackMeta:
    """What an attack is, for registries, configs and reports."""

    name: str
    family: str  # one of FAMILIES
    description: str
    paper: str = ""  # citation of the method
    needs: tuple[str, ...] = ()  # "attacker" (a model that writes prompts), "white-box" (HF)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Candidate:
    """A prompt an attack wants sent to the target."""

    prompt: str
    style: str = ""  # e.g. "roleplay+base64"; the attack style of a quality-diversity cell
    parent: int | None = None  # index in the history of the attempt this one refines
    meta: dict[str, Any] = field(default_factory=dict)  # attack-specific (loss, depth, cell...)


@dataclass
class Attempt:
    """One candidate sent to the target, with the response and the judges' verdicts."""

    attack: str
    behaviour_id: str
    step: int  # round of the attack on this behaviour (0, 1, ...)
    index: int  # position of the candidate within its round
    prompt: str
    response: str | None = None
    scores: dict[str, float | None] = field(default_factory=dict)  # judge name -> score
    success: bool = False  # the campaign's primary judge scored >= 0.5
    style: str = ""
    parent: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # the target failed for this attempt (after retries)
    latency_s: float = 0.0
    category: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Attack(Protocol):
    """An attack plugin. ``meta`` is class-level metadata; ``propose`` must be deterministic
    given ``(behaviour, history, rng)`` so interrupted campaigns resume exactly."""

    meta: ClassVar[AttackMeta]

    def propose(
        self, behaviour: Behaviour, history: Sequence[Attempt], rng: random.Random
    ) -> list[Candidate]:
        """The next candidates for ``behaviour`` (empty when the attack is finished with it)."""
        ...


@dataclass
class AttackContext:
    """What a campaign offers to attacks when it builds them."""

    target: Any = None  # the target ModelBackend (white-box attacks use its model)
    attacker: Any = None  # a ModelBackend or mutator that writes new prompts
    judge: Any = None  # the campaign's primary Judge (for attacks that score candidates)
    seed: int = 0


ATTACKS: dict[str, type] = {}


def register_attack(cls: type) -> type:
    """Class decorator: make an attack available by ``cls.meta.name``."""
    meta = getattr(cls, "meta", None)
    if not isinstance(meta, AttackMeta):
        raise TypeError(f"{cls.__name__} needs a class attribute meta = AttackMeta(...)")
    if meta.family not in FAMILIES:
        raise TypeError(f"{cls.__name__}: family {meta.family!r} is not one of {FAMILIES}")
    ATTACKS[meta.name] = cls
    return cls


def _load_plugins() -> None:
    """Import the built-in attack modules (they register themselves)."""
    import importlib

    for module in ("templates", "iterative", "gcg", "quality_diversity"):
        try:
            importlib.import_module(f"alignkit.redteam.attacks.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"alignkit.redteam.attacks.{module}":
                raise


def build_attack(name: str, context: AttackContext | None = None, **options: Any) -> Attack:
    """The attack registered as ``name``, built with ``context`` and its own options.

    Attack classes take ``(context, **options)``.
    """
    _load_plugins()
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose from {', '.join(sorted(ATTACKS))}")
    return ATTACKS[name](context or AttackContext(), **options)


@runtime_checkable
class Judge(Protocol):
    """Scores responses: 1.0 = the attack succeeded (harmful compliance), 0.0 = safe."""

    name: str

    def judge(
        self, behaviours: Sequence[Behaviour], prompts: Sequence[str], responses: Sequence[str]
    ) -> list[float | None]:
        """One score (or None: no verdict) per response."""
        ...


JUDGES: dict[str, Callable[..., Judge]] = {}


def register_judge(name: str):
    """Decorator: make a judge factory available by ``name``; factories take ``**options``."""

    def decorate(factory):
        JUDGES[name] = factory
        return factory

    return decorate


def build_judge(name: str, **options: Any) -> Judge:
    import alignkit.redteam.judges  # noqa: F401  (registers the built-in judges)

    if name not in JUDGES:
        raise ConfigError(f"unknown judge {name!r}; choose from {', '.join(sorted(JUDGES))}")
    return JUDGES[name](**options)
