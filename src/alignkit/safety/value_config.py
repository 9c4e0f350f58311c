"""``ValueModelConfig``: the settings of reward- and cost-model training (kept apart from the
torch code so that the CLI can build its options without loading torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from alignkit.config import CommandConfig, ModelString
from alignkit.tracking import REPORT_TO_HELP, ReportTo

Kind = Literal["reward", "cost"]
Dimension = Literal["helpful", "harmless", "honest"]


class ValueModelConfig(CommandConfig):
    """``alignkit safety train-rm``: train a reward or cost model on pairwise value records."""

    model: ModelString = Field("testbed", description="Backbone: hf:PATH or testbed.")
    kind: Kind = Field("reward", description="reward (Bradley-Terry) or cost (Safe RLHF).")
    dimension: Dimension | None = Field(
        None, description="Train on records of this dimension only (cost: harmless)."
    )
    output_dir: Path | None = Field(
        None, description="Where the trained model and metrics.json go (None: not saved)."
    )
    learning_rate: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    batch_size: int = Field(8, ge=1, description="Pairs per optimizer step.")
    epochs: int = Field(1, ge=1)
    max_length: int = Field(512, ge=8, description="Tokens per conversation (the end is kept).")
    max_grad_norm: float | None = Field(1.0, gt=0)
    margin: float = Field(0.0, description="Pairwise margin of records without their own.")
    center_coef: float = Field(0.0, ge=0, description="Reward-centring weight (reward models).")
    lora: bool = Field(False, description="Train a LoRA adapter plus the value head.")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: list[str] | None = Field(
        None, description="Module names to adapt (default: all linear layers)."
    )
    seed: int = 0
    device: str = "auto"
    trust_remote_code: bool = False
    report_to: ReportTo = Field(default_factory=list, description=REPORT_TO_HELP)

    @model_validator(mode="after")
    def _kind_settings(self) -> ValueModelConfig:
        if self.kind == "cost":
            if self.dimension not in (None, "harmless"):
                raise ValueError(
                    f"a cost model learns harmlessness; dimension must be 'harmless', "
                    f"not {self.dimension!r}"
                )
            self.dimension = "harmless"
            if self.center_coef:
                raise ValueError(
                    "center_coef applies to reward models; a cost model is anchored at 0 by "
                    "its safe/unsafe sign terms"
                )
        return self
