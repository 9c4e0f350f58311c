"""``PipelineConfig``: the whole loop's settings, one section per stage.

Top-level options (``model``, ``output_dir``, ``seed``, ...) are flat, as in every command, and
have command-line flags. Each stage's options sit in its own *section* (``redteam:``,
``revise:``, ...; see :class:`alignkit.config.CommandConfig`), written in YAML or Python; a
section is switched off with ``enabled: false`` (or ``--skip STAGE``) and some take a file the
user brings instead of running (``redteam.prompts``, ``feedback.preferences``,
``train.cost_model``). The defaults are the testbed demo's settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from alignkit.config import CommandConfig, ModelString
from alignkit.models.base import GenerationConfig
from alignkit.redteam.config import RedTeamConfig
from alignkit.safety.constrained import SafetyConfig
from alignkit.tracking import REPORT_TO_HELP, ReportTo

STAGES = ("baseline", "redteam", "revise", "feedback", "train", "evaluate", "report")
"""The stages in order; a rerun resumes at the first one that has not finished."""


class Section(CommandConfig):
    """A stage's options: reached by the stage name, not flattened into the pipeline's."""

    flatten_options = False
    enabled: bool = Field(True, description="Run this stage.")

    def options_for(self, command: type[CommandConfig]) -> dict[str, Any]:
        """This section's options that ``command``'s config also has, by name."""
        return self.model_dump(include=set(type(self).model_fields) & set(command.model_fields))


class EvaluationSection(Section):
    """How the baseline and final evaluations measure (the same items and settings for both)."""

    suite: str = Field("testbed", description="'testbed' or a JSONL file of {prompt, kind}.")
    n: int = Field(200, ge=1, description="testbed: held-out prompts of each kind.")
    scorers: list[str] | None = Field(
        None,
        description="Scorers; the first gives the headline table (default: testbed and refusal "
        "on the testbed model, refusal otherwise).",
    )
    scorer_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Scorer options, e.g. {judge: MODEL, rubric: critique} for llm-judge.",
    )
    kl_prompts: int = Field(32, ge=0, description="Prompts sampled for KL(policy || base).")
    replay_behaviours: str | None = Field(
        "testbed",
        description="Held-out behaviours the red-team templates are replayed on, against the "
        "base and the trained model ('testbed', a CSV/JSONL file, or null: no replay).",
    )
    replay_max_attempts: int = Field(24, ge=1, description="Template prompts per behaviour.")
    generation: GenerationConfig = Field(
        default_factory=lambda: GenerationConfig(max_new_tokens=64, temperature=1.0)
    )


class RedTeamSection(RedTeamConfig, Section):
    """``alignkit redteam run`` options, attacking the pipeline's model; or ``prompts``: a file
    of the user's own red-team prompts, answered by the model and judged instead."""

    flatten_options = False
    target: ModelString | None = Field(None, description="(set by the pipeline: its model)")
    output_dir: Path | None = Field(None, description="(set by the pipeline)")
    prompts: Path | None = Field(
        None, description="JSONL of {prompt[, category]}: your red-team prompts."
    )
    behaviours: str = "testbed:train"
    attacks: list[str] = Field(
        default_factory=lambda: ["templates", "gcg", "quality-diversity"],
        description="Attacks: templates, pair, tap, gcg, quality-diversity.",
    )
    attack_options: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {
            "templates": {"templates": "all", "converters": ["identity"]},
            "gcg": {"num_steps": 40, "search_width": 64, "topk": 32, "early_stop": True},
        }
    )
    attack_behaviours: dict[str, int] = Field(default_factory=lambda: {"gcg": 4})
    n_behaviours: int | None = 48
    attacker: str | None = "rules"
    early_stop: bool = False
    max_attempts: int = 24
    qd_iterations: int = 6
    qd_batch_size: int = 24
    generation: GenerationConfig = Field(
        default_factory=lambda: GenerationConfig(max_new_tokens=48, temperature=0.0)
    )

    @model_validator(mode="after")
    def _not_set_here(self) -> RedTeamSection:
        if self.target is not None or self.output_dir is not None:
            raise ValueError("redteam.target and redteam.output_dir are set by the pipeline")
        return self


class ReviseSection(Section):
    """Constitutional critique and revision of the red-team failures."""

    critic: ModelString | None = Field(
        None, description="Model that critiques and revises (default: the pipeline's model)."
    )
    rounds: int = Field(1, ge=1, description="Critique-revision rounds per failure.")
    max_failures: int | None = Field(
        400, ge=1, description="Revise at most this many failures (a seeded sample)."
    )
    max_new_tokens: int = Field(64, ge=1, description="Tokens per critique and revision.")


class FeedbackSection(Section):
    """AI feedback: two samples per prompt from the model, labelled under the constitution;
    or ``preferences``: the user's own preference file instead."""

    preferences: Path | None = Field(
        None, description="Your preference data (pairwise JSONL; optional chosen_safe, "
        "rejected_safe, soft_label) instead of AI feedback.",
    )  # fmt: skip
    prompts: str = Field(
        "testbed-train", description="'testbed-train' or a JSONL file of {prompt} records."
    )
    n: int = Field(150, ge=1, description="testbed-train: prompts of each kind.")
    failure_prompts: int = Field(
        0, ge=0, description="Also label pairs on this many red-team failure prompts."
    )
    feedback_model: ModelString | None = Field(
        None, description="The labeller (default: the pipeline's model)."
    )
    n_principles: int = Field(3, ge=1, description="Principles ensembled per label.")
    pair_attempts: int = Field(4, ge=2, description="Draws of the second sample at most.")
    feedback_mode: Literal["logprobs", "cot"] = "logprobs"
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(64, ge=1)


class TrainSection(SafetyConfig, Section):
    """Safety-constrained DPO (``alignkit safety train`` options) on the revision pairs and the
    AI-labelled pairs, against a cost model trained on the judged revision pairs (or yours)."""

    flatten_options = False
    model: ModelString | None = Field(None, description="(set by the pipeline)")
    data: str | None = Field(None, description="(set by the pipeline)")
    output_dir: Path | None = Field(None, description="(set by the pipeline)")
    eval_prompts: str = Field(
        "failures",
        description="Prompts the constraint is measured on: 'failures' (red-team failures "
        "held out from training), 'testbed', or a prompt file.",
    )
    holdout: float = Field(0.2, ge=0, lt=1, description="Share of failures held out.")
    helpful_data: str | None = Field(
        "auto",
        description="Helpfulness-ordered pairs mixed in, safety left to the cost model (the "
        "Safe RLHF setting): a pairwise or PKU-SafeRLHF file, 'testbed', or null; 'auto' is "
        "'testbed' on the testbed model and null otherwise.",
    )
    helpful_n: int = Field(160, ge=1, description="testbed: benign helpfulness pairs.")
    cost_learning_rate: float = Field(1e-3, gt=0, description="Cost-model learning rate.")
    cost_epochs: int = Field(2, ge=1, description="Cost-model epochs.")
    threshold: float = 0.35
    lambda_init: float = 1.0
    rounds: int = 3
    learning_rate: float = 5e-4
    epochs: float = 1.0

    @model_validator(mode="after")
    def _not_set_here(self) -> TrainSection:
        if self.model is not None or self.data is not None or self.output_dir is not None:
            raise ValueError("train.model, train.data and train.output_dir are set by the pipeline")
        if self.report_to:
            raise ValueError("train.report_to: set report_to at the top (it covers every stage)")
        return self


class ReviewSection(Section):
    """Human oversight: people's verdicts (``alignkit review``) fed to the later stages, and
    pauses for people to give them."""

    human_labels: str | None = Field(
        None,
        description="Human labels the revise, feedback, train and report stages use: 'run' "
        "(this run's review/labels.sqlite, written by `alignkit review serve OUTPUT_DIR`), "
        "another run directory or its review/labels.sqlite, or a JSONL file from `alignkit "
        "review export`; null: none, or 'run' when pause_after is set.",
    )
    pause_after: list[str] = Field(
        default_factory=list,
        description="Stop after these stages (when they run) for people to review; rerunning "
        "the pipeline continues with their labels.",
    )

    @field_validator("pause_after", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("pause_after")
    @classmethod
    def _pausable(cls, value: list[str]) -> list[str]:
        wrong = [s for s in value if s not in STAGES[:-1]]
        if wrong:
            raise ValueError(f"cannot pause after {wrong}; stages are {', '.join(STAGES[:-1])}")
        return value

    @property
    def source(self) -> str | None:
        """Where the labels come from (see ``human_labels``), or None: no human labels."""
        if not self.enabled:
            return None
        return self.human_labels or ("run" if self.pause_after else None)


class PipelineConfig(CommandConfig):
    """``alignkit pipeline``: red team -> critique and revision -> AI feedback -> constrained
    DPO -> evaluation -> report, resumable, one run directory."""

    model: ModelString = Field("testbed", description="Model string of the model to align.")
    serve_model: ModelString | None = Field(
        None,
        description="The same base model behind a server (openai:MODEL@URL, e.g. vLLM) for "
        "the generation stages (default: model).",
    )
    output_dir: Path = Field(Path("runs/pipeline"), description="The run directory.")
    seed: int = Field(0, description="Seed of every stage.")
    device: str = Field(
        "auto",
        description="Device of local models: auto (the GPU when there is one, unless the model "
        "has under 20M parameters: the CPU is faster there), cpu, cuda, mps.",
    )
    skip: list[str] = Field(default_factory=list, description="Stages to leave out.")
    report_to: ReportTo = Field(
        default_factory=list,
        description=REPORT_TO_HELP + " Each stage's figures go to run 'pipeline'; the cost model "
        "and every DPO round of the train stage are runs of their own.",
    )
    redo_from: str | None = Field(
        None, description="Run this stage and every later one again (earlier ones are kept)."
    )
    constitution: Path | None = Field(
        None, description="Constitution YAML/JSON (default: alignkit's own)."
    )
    principles: list[str] | None = Field(
        default_factory=lambda: ["harm-general", "harm-honesty-helpfulness", "safe-honest-helpful"],
        description="Principle ids to use (null: the whole constitution).",
    )
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    redteam: RedTeamSection = Field(default_factory=RedTeamSection)
    revise: ReviseSection = Field(default_factory=ReviseSection)
    feedback: FeedbackSection = Field(default_factory=FeedbackSection)
    train: TrainSection = Field(default_factory=TrainSection)
    review: ReviewSection = Field(default_factory=ReviewSection)

    @field_validator("skip")
    @classmethod
    def _known_skips(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")
        return value

    @field_validator("redo_from")
    @classmethod
    def _known_stage(cls, value: str | None) -> str | None:
        if value is not None and value not in STAGES:
            raise ValueError(f"unknown stage {value!r}; stages are {', '.join(STAGES)}")
        return value

    @model_validator(mode="after")
    def _defaults_for_the_model(self) -> PipelineConfig:
        """Ground-truth judges and scorers only know the testbed model's answers."""
        on_testbed = self.generator == "testbed"
        if self.evaluation.scorers is None:
            self.evaluation.scorers = ["testbed", "refusal"] if on_testbed else ["refusal"]
        if self.redteam.judge is None:
            self.redteam.judge = "testbed" if on_testbed else "refusal"
        return self

    def enabled(self, stage: str) -> bool:
        """Whether ``stage`` runs: not skipped, and its section (if any) is enabled."""
        section = getattr(self, stage, None)
        on = section.enabled if isinstance(section, Section) else True
        if stage in ("baseline", "evaluate"):
            on = self.evaluation.enabled
        return on and stage not in self.skip

    @property
    def local_device(self) -> str:
        """``device`` with ``auto`` resolved for ``model`` (:mod:`alignkit.models.auto_device`)."""
        if self.device != "auto":
            return self.device
        from alignkit.models.auto_device import auto_device

        return auto_device(self.model)

    @property
    def generator(self) -> str:
        """The model string the generation stages use for the base model."""
        return self.serve_model or self.model


class DemoConfig(PipelineConfig):
    """``alignkit demo``: the whole loop on the testbed model (the pipeline's defaults)."""

    output_dir: Path = Field(Path("runs/demo"), description="The run directory.")
    device: str = Field(
        "cpu",
        description="Device of the testbed model: cpu (default: a 1.1M-parameter model keeps a "
        "GPU waiting on kernel launches, so the CPU is faster), cuda, mps.",
    )
