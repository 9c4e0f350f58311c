"""``run_evaluation``: what ``alignkit eval`` does, callable from Python.

One config drives every evaluation that its settings ask for, on shared, cached backends:
the alignment scores (always), the preference evaluation (win rate when a baseline and judge
are given; implicit-reward accuracy and KL when a reference is), the Pareto analysis (when
``compare_models`` are given), multiple choice (``mc_file``), then the report. ``only``
narrows this to the named parts (``only=["mc"]``: multiple choice alone, no generation).
Inputs are checked before any model loads, so a bad file fails in a second, not after an hour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.atomic import check_writable_dir
from alignkit.evaluation.alignment import AlignmentEvaluator, AlignmentResult, cached
from alignkit.evaluation.cache import CallCache
from alignkit.evaluation.config import EvalConfig
from alignkit.evaluation.suites import load_suite
from alignkit.models.base import ModelBackend


@dataclass
class EvalRun:
    """Everything one ``alignkit eval`` measured, and where it was written."""

    output_dir: Path
    alignment: AlignmentResult | None  # None when `only` leaves the alignment part out
    preference: Any = None  # PreferenceResult
    multi_objective: Any = None  # MultiObjectiveResult
    multiple_choice: Any = None  # MCResult
    report: dict[str, Path] = field(default_factory=dict)


class BackendPool:
    """One cached backend per model string, shared by every evaluation of a run."""

    def __init__(self, config: EvalConfig) -> None:
        self.options = config.backend
        self.cache = CallCache(config.cache_path) if config.cache else None
        self._backends: dict[str, ModelBackend] = {}

    def get(self, model: str) -> ModelBackend:
        if model not in self._backends:
            from alignkit.models import load_backend

            self._backends[model] = cached(load_backend(model, self.options), self.cache)
        return self._backends[model]

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        if self.cache is not None:
            self.cache.close()


def _preference_pairs(config: EvalConfig) -> list | None:
    if config.preference_data is None:
        return None
    if config.preference_data == "testbed":
        from alignkit.testbed.preferences import preference_pairs
        from alignkit.testbed.splits import model_world

        records = preference_pairs(model_world(), config.preference_n, "heldout", config.seed)
        return [(r["prompt"], r["chosen"], r["rejected"]) for r in records]
    from alignkit.evaluation.preference import load_pairs

    return load_pairs(config.preference_data)


def _check_inputs(config: EvalConfig):
    """Load every input file now (clear errors before any model is loaded)."""
    items = None
    if config.runs("alignment") or config.runs("preference"):
        items = load_suite(config.suite, n=config.n, seed=config.seed)
        items = items if config.runs("alignment") else None
    pairs = _preference_pairs(config) if config.runs("preference") else None
    mc = None
    if config.runs("mc"):
        from alignkit.evaluation.multiple_choice import load_multiple_choice_files

        mc = load_multiple_choice_files(config.mc_file)
    check_writable_dir(Path(config.output_dir), "output_dir")
    return items, pairs, mc


def run_evaluation(config: EvalConfig) -> EvalRun:
    """Run every evaluation ``config`` asks for and write ``config.output_dir``."""
    items, pairs, mc = _check_inputs(config)
    out = Path(config.output_dir)
    pool = BackendPool(config)
    try:
        model = pool.get(config.model)
        run = EvalRun(out, None)
        evaluator = None
        if items is not None:
            evaluator = _alignment_evaluator(config, pool, items)
            run.alignment = evaluator.run(out)
        if config.runs("preference"):
            run.preference = _preference(config, pool, pairs)
        if evaluator is not None and config.runs("pareto"):
            run.multi_objective = _multi_objective(config, pool, evaluator, run.alignment)
        if mc is not None:
            from alignkit.evaluation.multiple_choice import evaluate_multiple_choice

            questions, report = mc
            run.multiple_choice = evaluate_multiple_choice(model, questions, report=report)
            run.multiple_choice.save(out)
    finally:
        pool.close()
    if config.report:
        from alignkit.evaluation.report import generate_alignment_report

        run.report = generate_alignment_report(out)
    return run


def _alignment_evaluator(config: EvalConfig, pool: BackendPool, items) -> AlignmentEvaluator:
    """The alignment evaluator of ``config.model`` on ``items`` with the configured scorers."""
    options: dict[str, Any] = {"rubric": config.judge_rubric}
    if config.judge_model:
        options["judge"] = pool.get(config.judge_model)
    if config.reward_model:
        options.update(reward_model=config.reward_model, dimension=config.reward_dimension)
    return AlignmentEvaluator(
        pool.get(config.model),
        generation=config.generation,
        suite_name=config.suite,
        suite=items,
        scorers=config.scorers,
        seed=config.seed,
        cache=pool.cache or False,
        **options,
    )


def _preference(config: EvalConfig, pool: BackendPool, pairs):
    wants_win = config.baseline is not None
    if not wants_win and config.reference is None:
        return None
    from alignkit.evaluation.preference import PreferenceAlignmentEvaluator

    evaluator = PreferenceAlignmentEvaluator(
        pool.get(config.model),
        baseline=pool.get(config.baseline) if wants_win else None,
        judge=pool.get(config.judge_model) if wants_win else None,
        reference=pool.get(config.reference) if config.reference else None,
        generation=config.generation,
        cache=pool.cache or False,
        seed=config.seed,
    )
    prompts = load_suite(config.suite, n=config.win_rate_n, seed=config.seed)
    return evaluator.run(
        prompts,
        pairs=pairs,
        kl_prompts=config.kl_prompts,
        beta=config.beta,
        output_dir=config.output_dir,
    )


def _multi_objective(config: EvalConfig, pool: BackendPool, evaluator, result):
    from alignkit.evaluation.multi_objective import MultiObjectiveAlignmentEvaluator

    multi = MultiObjectiveAlignmentEvaluator(
        {m: pool.get(m) for m in config.compare_models},
        objectives=config.objectives,
        suite=evaluator.items,
        scorers=evaluator.scorers,
        seed=config.seed,
        generation=config.generation,
        cache=pool.cache or False,
    )
    multi.results[config.model] = result
    return multi.run(config.output_dir)
