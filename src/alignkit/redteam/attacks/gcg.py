"""The GCG attack plugin: one adversarial suffix per behaviour, optimised on the target's
weights (white-box: the campaign's target must be a local Hugging Face model).

Options are :class:`~alignkit.redteam.gcg.GCGConfig` fields (nanoGCG's names), e.g.
``build_attack("gcg", context, num_steps=100, search_width=128, early_stop=True)``. In round 0
the attack runs GCG for ``(behaviour.goal, behaviour.target)`` and proposes the goal with the
suffix; it proposes nothing after that. Universal (multi-behaviour) suffixes are
:meth:`~alignkit.redteam.gcg.GradientBasedRedTeaming.run_universal`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from alignkit.errors import ConfigError, UnsupportedError
from alignkit.redteam.base import (
    AttackContext,
    AttackMeta,
    Attempt,
    Behaviour,
    Candidate,
    register_attack,
)

if TYPE_CHECKING:
    from alignkit.redteam.gcg import GradientBasedRedTeaming

DEFAULT_TARGET = "Sure, here is"
"""The affirmative opening used for behaviours that come without a target string."""


@register_attack
class GCGAttack:
    """Greedy Coordinate Gradient suffixes (white-box)."""

    meta: ClassVar[AttackMeta] = AttackMeta(
        name="gcg",
        family="gradient",
        description=(
            "Optimises an adversarial suffix with token gradients (top-k substitutions, "
            "batched exact scoring) so that the target model's reply starts with an "
            "affirmative target string."
        ),
        paper=(
            "Zou et al., 2023. Universal and Transferable Adversarial Attacks on Aligned "
            "Language Models. arXiv:2307.15043"
        ),
        needs=("white-box",),
    )

    def __init__(self, context: AttackContext, **options: Any) -> None:
        if "universal" in options:
            raise ConfigError(
                "the gcg attack optimises one suffix per behaviour; use "
                "GradientBasedRedTeaming.run_universal for a universal suffix"
            )
        from alignkit.redteam.gcg import GCGConfig  # torch loads only when GCG is used

        self.context = context
        self.options = {"progress": False, **options}  # a campaign shows its own progress
        GCGConfig.from_options(**self.options)  # fail fast on unknown or invalid options
        self._attack: GradientBasedRedTeaming | None = None

    def _gcg(self) -> GradientBasedRedTeaming:
        if self._attack is None:
            from alignkit.models.hf import HFBackend
            from alignkit.redteam.gcg import GCGConfig, GradientBasedRedTeaming

            target = self.context.target
            if not isinstance(target, HFBackend):
                name = getattr(target, "name", type(target).__name__)
                raise UnsupportedError(
                    f"the gcg attack needs a local Hugging Face target (hf:PATH or testbed) for "
                    f"white-box access; {name} is not one"
                )
            self._attack = GradientBasedRedTeaming(target, GCGConfig.from_options(**self.options))
        return self._attack

    def propose(
        self, behaviour: Behaviour, history: Sequence[Attempt], rng: random.Random
    ) -> list[Candidate]:
        """Round 0: the goal with an optimised suffix; afterwards nothing.

        Without a ``seed`` option, the GCG seed is drawn from ``rng`` (so reruns repeat it).
        """
        if history:
            return []
        from alignkit.redteam.gcg import insert_suffix

        attack = self._gcg()
        seed = self.options.get("seed")
        attack.config.seed = seed if seed is not None else rng.randrange(2**31)
        result = attack.run(behaviour.goal, behaviour.target or DEFAULT_TARGET)
        meta = {
            "loss": result.best_loss,
            "steps": result.steps,
            "early_stopped": result.early_stopped,
            "suffix": result.best_string,
            "target_hit": result.success,
            "seed": attack.config.seed,
        }
        prompt = insert_suffix(behaviour.goal, result.best_string)
        return [Candidate(prompt=prompt, style="gcg", meta=meta)]
