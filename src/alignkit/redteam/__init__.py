"""Red teaming: attack plugins (templates + converters, PAIR / TAP, GCG, quality-diversity),
judges, resumable campaigns, evaluation and export. Names load on first use (torch only when a
model does)."""

from __future__ import annotations

from alignkit._lazy import lazy_exports

_NAMES = {
    "Attack": "base",
    "AttackMeta": "base",
    "Attempt": "base",
    "Behaviour": "base",
    "Candidate": "base",
    "Judge": "base",
    "ATTACKS": "base",
    "JUDGES": "base",
    "build_attack": "base",
    "build_judge": "base",
    "register_attack": "base",
    "register_judge": "base",
    "CampaignStore": "store",
    "RedTeaming": "campaign",
    "RedTeamingEvaluator": "evaluator",
    "RedTeamConfig": "config",
    "run_campaign": "run",
    "GradientBasedRedTeaming": "gcg",
    "GCGConfig": "gcg",
    "GCGResult": "gcg",
    "MultiObjectiveRedTeaming": "quality_diversity",
    "load_behaviours": "behaviours",
    "testbed_behaviours": "behaviours",
    "load_templates": "templates",
    "CONVERTERS": "converters",
    "self_bleu": "diversity",
}


__getattr__ = lazy_exports(__name__, _NAMES)


__all__ = sorted(_NAMES)
