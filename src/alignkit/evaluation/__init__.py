"""Evaluation: helpful / harmless / honest scores with confidence intervals, preference win
rates, implicit-reward accuracy, KL, multiple choice, Pareto analysis, and reports.

The submodules load torch only when a model does; names are imported on first use.
"""

from __future__ import annotations

from alignkit._lazy import lazy_exports

_NAMES = {
    "AlignmentChange": "before_after",
    "evaluate_alignment": "before_after",
    "AlignmentEvaluator": "alignment",
    "AlignmentResult": "alignment",
    "PreferenceAlignmentEvaluator": "preference",
    "PreferenceResult": "preference",
    "MultiObjectiveAlignmentEvaluator": "multi_objective",
    "MultiObjectiveResult": "multi_objective",
    "AlignmentReportGenerator": "report",
    "generate_alignment_report": "report",
    "compare_runs": "compare",
    "evaluate_multiple_choice": "multiple_choice",
    "load_multiple_choice": "multiple_choice",
    "load_multiple_choice_files": "multiple_choice",
    "EvalConfig": "config",
    "EvalItem": "suites",
    "load_suite": "suites",
    "SCORERS": "scorers",
    "register_scorer": "scorers",
    "Estimate": "stats",
    "estimate": "stats",
    "proportion_ci": "stats",
    "paired_test": "stats",
    "bootstrap_ci": "stats",
    "paired_bootstrap": "stats",
    "length_controlled_win_rate": "stats",
    "pareto_front": "pareto",
    "hypervolume": "pareto",
}


__getattr__ = lazy_exports(__name__, _NAMES)


__all__ = sorted(_NAMES)
