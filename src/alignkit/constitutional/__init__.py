"""Constitutional AI: principles, critique-and-revise loops (single, iterative, multi-agent),
and AI feedback (RLAIF preference labels).

Names are imported on first use, so importing the package loads no model code.
"""

from __future__ import annotations

from alignkit._lazy import lazy_exports

_NAMES = {
    "Principle": "constitution",
    "Constitution": "constitution",
    "load_constitution": "constitution",
    "default_constitution": "constitution",
    "CAIRecord": "critique",
    "ConstitutionalAI": "critique",
    "IterativeConstitutionalAI": "critique",
    "MultiAgentConstitutionalAI": "critique",
    "is_no_change": "critique",
    "write_records": "critique",
    "CAIConfig": "config",
    "CAIRunResult": "training",
    "ConstitutionalAITrainer": "training",
    "evaluate_alignment": "alignkit.evaluation.before_after",
    "AIFeedback": "feedback",
    "FeedbackLabel": "feedback",
    "position_bias": "feedback",
    "to_preference_records": "feedback",
    "write_preferences": "feedback",
}


__getattr__ = lazy_exports(__name__, _NAMES)


__all__ = sorted(_NAMES)
