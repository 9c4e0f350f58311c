"""Safety alignment and value learning: value-model data in the shapes users have (pairwise,
PKU-SafeRLHF, BeaverTails), reward models and Safe-RLHF cost models on any HF backbone,
safety-constrained DPO (Lagrangian / C-DPO relabelling, SafeDPO-style reordering),
multi-objective DPO (MODPO), guardrails around any backend and robustness checks.

Names are imported on first use, so importing the package loads no model code.
"""

from __future__ import annotations

from alignkit._lazy import lazy_exports

_NAMES = {
    "load_value_pairs": "data",
    "load_labelled_responses": "data",
    "pairs_from_labelled": "data",
    "testbed_value_pairs": "data",
    "testbed_labelled_responses": "data",
    "bradley_terry_loss": "value_losses",
    "cost_model_loss": "value_losses",
    "ValueModel": "value_model",
    "ValueModelConfig": "value_model",
    "train_value_model": "value_training",
    "evaluate_pairwise": "value_model",
    "modpo_records": "modpo",
    "modpo_sweep": "modpo",
    "SafetyAlignment": "constrained",
    "evaluate_safety_alignment": "evaluate",
    "SafetyConfig": "constrained",
    "safe_reorder": "constrained",
    "lagrangian_records": "constrained",
    "CostModelCheck": "guardrail",
    "JudgeCheck": "guardrail",
    "GuardedBackend": "guardrail",
    "evaluate_guardrail": "guardrail",
    "robustness_check": "guardrail",
}


__getattr__ = lazy_exports(__name__, _NAMES)


__all__ = sorted(_NAMES)
