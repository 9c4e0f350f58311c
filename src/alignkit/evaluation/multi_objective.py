"""``MultiObjectiveAlignmentEvaluator``: several models or checkpoints x several objectives.

Each model is evaluated on the same suite (through the call cache); each objective is one
metric of :class:`~alignkit.evaluation.alignment.AlignmentResult` (``scorer/dimension``, e.g.
``testbed/helpful``). Lower-is-better rates (over-refusal) are flipped to ``1 - rate`` so every
objective is maximised, then the result lists the Pareto front (models no other model
dominates), who dominates whom, and the hypervolume of the front against a reference point
(0 for every rate: the volume a model set covers in [0, 1]^k).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.errors import ConfigError, DataError
from alignkit.evaluation.alignment import AlignmentEvaluator, AlignmentResult
from alignkit.evaluation.pareto import dominance, hypervolume, pareto_front
from alignkit.evaluation.rundir import write_json
from alignkit.evaluation.scorers import DIMENSIONS

DEFAULT_OBJECTIVES = ("testbed/helpful", "testbed/harmless", "testbed/honest")


def higher_is_better(objective: str) -> bool:
    dim = DIMENSIONS.get(objective.rpartition("/")[2])
    return dim.higher_is_better if dim else True


@dataclass
class MultiObjectiveResult:
    objectives: list[str]
    models: dict[str, dict[str, float]]  # name -> objective -> value as measured
    front: list[str]
    dominates: dict[str, list[str]]
    hypervolume: float
    reference: list[float]

    def to_dict(self) -> dict:
        return {
            "kind": "multi_objective",
            "objectives": self.objectives,
            "higher_is_better": {o: higher_is_better(o) for o in self.objectives},
            "models": self.models,
            "front": self.front,
            "dominates": self.dominates,
            "hypervolume": self.hypervolume,
            "reference": self.reference,
        }

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / "multi_objective.json"
        write_json(path, self.to_dict())
        return path


def pareto_analysis(
    results: Mapping[str, Mapping[str, float]],
    objectives: Sequence[str],
    reference: Sequence[float] | None = None,
) -> MultiObjectiveResult:
    """Front, dominance and hypervolume of measured ``results`` (name -> objective -> value)."""
    if not results:
        raise ConfigError("the multi-objective evaluation needs at least one model")
    for name, values in results.items():
        missing = [o for o in objectives if o not in values]
        if missing:
            raise DataError(f"model {name!r} has no measurement for objective(s) {missing}")
    points = {
        name: [v[o] if higher_is_better(o) else 1.0 - v[o] for o in objectives]
        for name, v in results.items()
    }
    ref = list(reference) if reference is not None else [0.0] * len(objectives)
    if len(ref) != len(objectives):
        raise ConfigError(f"reference has {len(ref)} values for {len(objectives)} objectives")
    return MultiObjectiveResult(
        objectives=list(objectives),
        models={name: {o: v[o] for o in objectives} for name, v in results.items()},
        front=pareto_front(points),
        dominates=dominance(points),
        hypervolume=hypervolume(list(points.values()), ref),
        reference=ref,
    )


class MultiObjectiveAlignmentEvaluator:
    """Evaluate ``models`` (name -> model string or backend) on shared objectives.

    ``MultiObjectiveAlignmentEvaluator({"base": "testbed", "dpo": "hf:runs/dpo/model"}).run()``
    Keyword arguments go to each :class:`AlignmentEvaluator` (suite, n, seed, scorers, ...).
    """

    def __init__(
        self,
        models: Mapping[str, Any] | Sequence[str],
        objectives: Sequence[str] = DEFAULT_OBJECTIVES,
        reference: Sequence[float] | None = None,
        **evaluator_options: Any,
    ) -> None:
        self.models = dict(models) if isinstance(models, Mapping) else {m: m for m in models}
        self.objectives = list(objectives)
        self.reference = reference
        self.options = evaluator_options
        self.results: dict[str, AlignmentResult] = {}

    def run(self, output_dir: str | Path | None = None) -> MultiObjectiveResult:
        for name, model in self.models.items():
            if name not in self.results:
                self.results[name] = AlignmentEvaluator(model, **self.options).run()
        measured = {
            name: {o: r.metrics[o].value for o in self.objectives if o in r.metrics}
            for name, r in self.results.items()
        }
        result = pareto_analysis(measured, self.objectives, self.reference)
        if output_dir is not None:
            result.save(output_dir)
        return result
