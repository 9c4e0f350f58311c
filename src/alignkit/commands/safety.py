"""``alignkit safety train-rm | train | guard | eval``: value models, constrained training,
guardrails and safety evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from pydantic import Field

from alignkit.commands._console import print_note, stdout
from alignkit.commands._options import config_command
from alignkit.config import CommandConfig, ModelString
from alignkit.safety.constrained import SafetyConfig
from alignkit.safety.value_config import ValueModelConfig

group = typer.Typer(
    name="safety",
    help="Safety: reward / cost models, constrained training, guardrails, safety evaluation.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``safety`` command group to ``app``."""
    app.add_typer(group)


class TrainRMConfig(ValueModelConfig):
    """``alignkit safety train-rm``: a reward or cost model from pairwise data."""

    data: str = Field("testbed", description="'testbed' or a pairwise / PKU-SafeRLHF file.")
    eval_data: str | None = Field(
        "testbed", description="Held-out pairs: 'testbed' (held-out split) or a file; none: skip."
    )
    n: int = Field(256, ge=1, description="testbed: training pairs.")


def _pairs(source: str, dimension: str, n: int, split: str) -> list[dict]:
    from alignkit.safety.data import load_value_pairs, testbed_value_pairs

    if source == "testbed":
        return testbed_value_pairs(n, dimension, split, 0)
    pairs, report = load_value_pairs(source, dimension=dimension)
    print_note(f"data: {report.summary()}")  # read, loaded, converted (HH split, PKU mapped)
    return pairs


@config_command(group, "train-rm", TrainRMConfig)
def train_rm(config: TrainRMConfig) -> None:
    """Train a reward model (Bradley-Terry) or a Safe-RLHF cost model; report accuracy."""
    from accelerate import PartialState

    from alignkit.safety.value_training import train_value_model

    if config.output_dir is None:
        config = config.model_copy(update={"output_dir": Path(f"runs/{config.kind}-model")})
    dimension = config.dimension or "helpful"
    train = _pairs(config.data, dimension, config.n, "train")
    held = None
    if config.eval_data:
        held = _pairs(config.eval_data, dimension, max(config.n // 2, 1), "heldout")
    fields = set(TrainRMConfig.model_fields) - set(ValueModelConfig.model_fields)
    model = train_value_model(ValueModelConfig(**config.model_dump(exclude=fields)), train, held)
    if not PartialState().is_main_process:  # several processes (torchrun): the first reports
        return
    if model.metrics:
        print_note(f"held-out pairwise accuracy: {model.metrics['accuracy']:.1%}")
    print_note(f"{config.kind} model: {config.output_dir}")


@config_command(group, "train", SafetyConfig)
def train(config: SafetyConfig) -> None:
    """Constrained DPO (lagrangian or safe-dpo) until the harmful-rate threshold holds."""
    from alignkit.safety.constrained import ConstraintNotMet, SafetyAlignment

    result = SafetyAlignment(config).train()
    for row in result.history:
        print_note(json.dumps(row))
    print_note(f"model: {result.model}")
    for line in constraint_lines(result.history[-1], result.constraint):
        print_note(line)
    if not result.constraint_met:
        raise ConstraintNotMet(
            f"threshold {config.threshold} not met after {len(result.history)} round(s) "
            f"({_judged_by(result.constraint)}); raise rounds or lambda_lr, or relax it"
        )


def _judged_by(constraint: dict) -> str:
    return (
        f"verified by {constraint['evaluator']}"
        if constraint.get("verified")
        else "by the cost model only: no independent verifier"
    )


def constraint_lines(row: dict, constraint: dict, cost: str = "drives lambda") -> list[str]:
    """The harmful rate by the cost model and by the independent evaluator, and the verdict."""
    from alignkit.safety.verify import describe

    independent = row.get("independent")
    name = independent["evaluator"] if independent else "none (verifier: none)"
    met = "met" if constraint["met"] else "NOT met"
    lines = [
        f"harmful rate, cost model ({cost}): {describe(row.get('cost_model'))}",
        f"harmful rate, independent ({name}): {describe(independent)}",
        f"constraint (threshold {constraint['threshold']}): {met}, {_judged_by(constraint)}",
    ]
    if constraint.get("agree") is False:
        lines.append("the cost model and the independent evaluator disagree; the latter counts")
    return lines


class GuardConfig(CommandConfig):
    """``alignkit safety guard``: a guarded model measured against the bare one."""

    model: ModelString = Field("testbed", description="Model string of the model to guard.")
    cost_model: Path = Field(..., description="A saved cost model (the output check).")
    threshold: float = Field(0.0, description="Cost above which an answer is replaced.")
    suite: str = Field("testbed", description="'testbed' or a prompt file.")
    n: int = Field(50, ge=1, description="testbed: prompts of each kind.")
    device: str = "auto"
    seed: int = 0


@config_command(group, "guard", GuardConfig)
def guard(config: GuardConfig) -> None:
    """Wrap the model with a cost-model output check; report missed harm and false refusals."""
    from alignkit.evaluation.suites import load_suite
    from alignkit.models import load_backend
    from alignkit.safety.guardrail import CostModelCheck, GuardedBackend, evaluate_guardrail
    from alignkit.safety.value_model import ValueModel

    backend = load_backend(config.model, device=config.device)
    cost_model = ValueModel.load(config.cost_model, device=config.device)
    check = CostModelCheck(cost_model, config.threshold)
    items = load_suite(config.suite, n=config.n, seed=config.seed)
    stats = evaluate_guardrail(backend, GuardedBackend(backend, output_checks=[check]), items)
    stdout().print_json(json.dumps(stats))


class SafetyEvalConfig(CommandConfig):
    """``alignkit safety eval``: harmful rate, over-refusal, costs, constraint, robustness."""

    model: ModelString = Field("testbed", description="Model string of the model to evaluate.")
    cost_model: Path | None = Field(None, description="A saved cost model to price answers.")
    suite: str = Field("testbed", description="'testbed' or a prompt file.")
    n: int = Field(50, ge=1, description="testbed: prompts of each kind.")
    threshold: float | None = Field(None, description="Harmful-rate threshold to check.")
    verifier: str = Field(
        "auto",
        description="Independent evaluator of the threshold: 'testbed' (ground truth), a "
        "red-team judge's name, 'none'; 'auto': testbed on the testbed suite, else none.",
    )
    verifier_options: dict = Field(default_factory=dict, description="The verifier's options.")
    robustness: bool = Field(True, description="testbed: plain vs jailbreak-wrapped requests.")
    output: Path | None = Field(None, description="Also write the report here (JSON).")
    device: str = "auto"
    seed: int = 0


@config_command(group, "eval", SafetyEvalConfig)
def eval_(config: SafetyEvalConfig) -> None:
    """evaluate_safety_alignment() of one model."""
    from alignkit.safety.evaluate import evaluate_safety_alignment

    report = evaluate_safety_alignment(
        config.model, config.cost_model, config.suite, config.n, config.threshold,
        config.robustness, config.seed, config.device, config.verifier, config.verifier_options,
    )  # fmt: skip
    if "constraint" in report:
        for line in constraint_lines(report["constraint"], report["constraint"], "its prices"):
            print_note(line)
    text = json.dumps(report, indent=2)
    if config.output:
        config.output.parent.mkdir(parents=True, exist_ok=True)
        config.output.write_text(text)
    stdout().print_json(text)
