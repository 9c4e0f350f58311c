"""``EvalConfig``: every setting of ``alignkit eval``, the same from the CLI, YAML and Python."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from alignkit.config import CommandConfig, ModelString
from alignkit.models.base import BackendOptions, GenerationConfig

# the parts of an evaluation `only` can select
PARTS = ("alignment", "preference", "pareto", "mc")


class EvalConfig(CommandConfig):
    """``alignkit eval``: helpful / harmless / honest scores, win rates, Pareto, reports."""

    model: ModelString = Field("testbed", description="Model string of the model to evaluate.")
    suite: str = Field("testbed", description="'testbed' or a JSONL/JSON file of prompts.")
    n: int = Field(100, ge=1, description="Testbed suite: prompts of each kind.")
    output_dir: Path = Field(Path("runs/eval"), description="Run directory for results.")
    # scoring
    scorers: list[str] = Field(
        default_factory=lambda: ["testbed", "refusal"],
        description="Scorers: testbed, refusal, llm-judge, reward-model (repeat the flag).",
    )
    judge_model: ModelString | None = Field(
        None, description="Judge model for llm-judge scoring and win rates."
    )
    judge_rubric: Literal["yes-no", "critique"] = Field(
        "yes-no", description="llm-judge rubric: yes-no questions or a CAI-style critique."
    )
    reward_model: str | None = Field(
        None, description="Reward model (HF sequence-classification dir) for reward-model."
    )
    reward_dimension: str = Field("reward", description="Dimension name for the reward model.")
    # preference evaluation
    baseline: ModelString | None = Field(
        None, description="Baseline model for the pairwise win rate (needs judge_model)."
    )
    win_rate_n: int = Field(25, ge=1, description="Testbed suite: win-rate prompts of each kind.")
    reference: ModelString | None = Field(
        None, description="Reference model for implicit-reward accuracy and KL."
    )
    preference_data: str | None = Field(
        None, description="Held-out preference pairs (file), or 'testbed' for testbed pairs."
    )
    preference_n: int = Field(256, ge=1, description="Testbed preference pairs to draw.")
    beta: float = Field(0.1, gt=0, description="beta of the implicit reward.")
    kl_prompts: int = Field(32, ge=0, description="Prompts sampled to estimate KL (0: skip).")
    # more models, multiple choice
    compare_models: list[str] = Field(
        default_factory=list, description="More models for the Pareto analysis (repeat)."
    )
    objectives: list[str] = Field(
        default_factory=lambda: ["testbed/helpful", "testbed/harmless", "testbed/honest"],
        description="Metrics for the Pareto analysis (scorer/dimension).",
    )
    mc_file: list[Path] = Field(
        default_factory=list,
        description="Multiple-choice files (repeat): BIG-bench task dir / task.json, H4 HHH, "
        "TruthfulQA.csv / mc_task.json / HF rows, or prompt/choices/answer.",
    )
    only: list[str] = Field(
        default_factory=list,
        description="Run only these parts (repeat): alignment, preference, pareto, mc "
        "(default: every part the other settings ask for).",
    )
    # operational
    cache: bool = Field(True, description="Cache model calls (reruns resume, repeat nothing).")
    cache_path: Path | None = Field(None, description="Cache file (default: in the cache dir).")
    report: bool = Field(True, description="Write report.html / .md / .json into output_dir.")
    generation: GenerationConfig = Field(
        default_factory=lambda: GenerationConfig(max_new_tokens=64)
    )
    backend: BackendOptions = Field(default_factory=BackendOptions)

    @property
    def seed(self) -> int:
        """The one seed of a run: the suite draw, sampling and bootstrap resampling."""
        return self.generation.seed or 0

    @field_validator("mc_file", mode="before")
    @classmethod
    def _one_or_more_files(cls, value: object) -> object:
        """One path (a string or Path) is a list of one; None is no file."""
        if value is None:
            return []
        return [value] if isinstance(value, (str, Path)) else value

    @field_validator("only")
    @classmethod
    def _known_parts(cls, value: list[str]) -> list[str]:
        unknown = [part for part in value if part not in PARTS]
        if unknown:
            raise ValueError(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
        return list(dict.fromkeys(value))

    def runs(self, part: str) -> bool:
        """Whether ``part`` (one of PARTS) runs: it is in ``only``, or ``only`` is empty and
        the settings ask for it (alignment always, mc with mc_file, preference with a baseline
        or reference, pareto with compare_models)."""
        asked = {
            "alignment": True,
            "preference": self.baseline is not None or self.reference is not None,
            "pareto": bool(self.compare_models),
            "mc": bool(self.mc_file),
        }[part]
        return asked and (not self.only or part in self.only)

    @model_validator(mode="after")
    def _needs(self) -> EvalConfig:
        if "mc" in self.only and not self.mc_file:
            raise ValueError("only: 'mc' needs mc_file")
        if "preference" in self.only and self.baseline is None and self.reference is None:
            raise ValueError("only: 'preference' needs baseline or reference")
        if "pareto" in self.only and (not self.compare_models or "alignment" not in self.only):
            raise ValueError("only: 'pareto' needs compare_models and the 'alignment' part")
        if "llm-judge" in self.scorers and self.judge_model is None:
            raise ValueError("the llm-judge scorer needs judge_model")
        if "reward-model" in self.scorers and self.reward_model is None:
            raise ValueError("the reward-model scorer needs reward_model")
        if self.baseline is not None and self.judge_model is None:
            raise ValueError("a win rate against baseline needs judge_model")
        if self.preference_data is not None and self.reference is None:
            raise ValueError("implicit-reward accuracy on preference_data needs reference")
        return self
