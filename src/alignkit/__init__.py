"""alignkit: align language models beyond plain RLHF, on real Hugging Face models.

The loop: red-team a model, critique and revise its answers against a constitution, turn that
into preference data, train with the DPO family under safety constraints, evaluate on several
objectives, report. Every stage talks to models through one :class:`ModelBackend` built from a
model string (``hf:PATH``, ``openai:MODEL@URL``, ``testbed``) by :func:`load_backend`.

Importing this package is cheap: torch and transformers load only when a model does.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from alignkit._lazy import lazy_exports
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
    "AdaptiveDPO": "dpo",
    "DPOConfig": "dpo",
    "DPOPipeline": "dpo",
    "DPOTrainer": "dpo",
    "dpo_loss": "dpo",
    "get_log_probs": "dpo",
    "get_ref_log_probs": "dpo",
    "DPODataset": "data",
    "load_preferences": "data",
    "AlignmentEvaluator": "evaluation",
    "AlignmentReportGenerator": "evaluation",
    "EvalConfig": "evaluation",
    "MultiObjectiveAlignmentEvaluator": "evaluation",
    "PreferenceAlignmentEvaluator": "evaluation",
    "generate_alignment_report": "evaluation",
    "evaluate_alignment": "evaluation",
    "GradientBasedRedTeaming": "redteam",
    "MultiObjectiveRedTeaming": "redteam",
    "RedTeaming": "redteam",
    "RedTeamingEvaluator": "redteam",
    "ConstitutionalAI": "constitutional",
    "IterativeConstitutionalAI": "constitutional",
    "MultiAgentConstitutionalAI": "constitutional",
    "ConstitutionalAITrainer": "constitutional",
    "SafetyAlignment": "safety",
    "evaluate_safety_alignment": "safety",
    "AlignmentPipeline": "pipeline",
    "PipelineConfig": "pipeline",
}


__getattr__ = lazy_exports(__name__, _LAZY)


try:
    __version__ = version("alignkit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "AlignmentPipeline",
    "PipelineConfig",
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
