"""alignkit: align language models beyond plain RLHF, on real Hugging Face models.

The loop: red-team a model, critique and revise its answers against a constitution, turn that
into preference data, train with the DPO family under safety constraints, evaluate on several
objectives, report. Every stage talks to models through one :class:`ModelBackend` built from a
model string (``hf:PATH``, ``openai:MODEL@URL``, ``testbed``) by :func:`load_backend`.

Importing this package is cheap: torch and transformers load only when a model does.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from alignkit.config import CommandConfig, dump_config, load_config
from alignkit.errors import (
    AlignkitError,
    BackendError,
    ConfigError,
    DataError,
    ModelError,
    UnsupportedError,
)
from alignkit.models import (
    BackendOptions,
    Completion,
    GenerationConfig,
    ModelBackend,
    ModelSpec,
    TokenLogprobs,
    load_backend,
    score,
)

# The training stages load torch; they are imported on first use (PEP 562).
_LAZY = {
    "AdaptiveDPO": "alignkit.dpo",
    "DPOConfig": "alignkit.dpo",
    "DPOPipeline": "alignkit.dpo",
    "DPOTrainer": "alignkit.dpo",
    "dpo_loss": "alignkit.dpo",
    "get_log_probs": "alignkit.dpo",
    "get_ref_log_probs": "alignkit.dpo",
    "DPODataset": "alignkit.data",
    "load_preferences": "alignkit.data",
    "AlignmentEvaluator": "alignkit.evaluation",
    "AlignmentReportGenerator": "alignkit.evaluation",
    "EvalConfig": "alignkit.evaluation",
    "MultiObjectiveAlignmentEvaluator": "alignkit.evaluation",
    "PreferenceAlignmentEvaluator": "alignkit.evaluation",
    "generate_alignment_report": "alignkit.evaluation",
    "GradientBasedRedTeaming": "alignkit.redteam",
    "MultiObjectiveRedTeaming": "alignkit.redteam",
    "RedTeaming": "alignkit.redteam",
    "RedTeamingEvaluator": "alignkit.redteam",
    "ConstitutionalAI": "alignkit.constitutional",
    "IterativeConstitutionalAI": "alignkit.constitutional",
    "MultiAgentConstitutionalAI": "alignkit.constitutional",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'alignkit' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)


try:
    __version__ = version("alignkit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "ConstitutionalAI",
    "IterativeConstitutionalAI",
    "MultiAgentConstitutionalAI",
    "GradientBasedRedTeaming",
    "MultiObjectiveRedTeaming",
    "RedTeaming",
    "RedTeamingEvaluator",
    "AlignmentEvaluator",
    "AlignmentReportGenerator",
    "EvalConfig",
    "MultiObjectiveAlignmentEvaluator",
    "PreferenceAlignmentEvaluator",
    "generate_alignment_report",
    "AdaptiveDPO",
    "DPOConfig",
    "DPODataset",
    "DPOPipeline",
    "DPOTrainer",
    "dpo_loss",
    "get_log_probs",
    "get_ref_log_probs",
    "load_preferences",
    "AlignkitError",
    "BackendError",
    "BackendOptions",
    "CommandConfig",
    "Completion",
    "ConfigError",
    "DataError",
    "GenerationConfig",
    "ModelBackend",
    "ModelError",
    "ModelSpec",
    "TokenLogprobs",
    "UnsupportedError",
    "__version__",
    "dump_config",
    "load_backend",
    "load_config",
    "score",
]
