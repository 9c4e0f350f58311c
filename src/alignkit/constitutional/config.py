"""``CAIConfig``: every setting of ``alignkit cai generate | label | train``, from the CLI, YAML
or Python; :meth:`CAIConfig.sl_config` and :meth:`CAIConfig.rl_config` turn it into the
:class:`~alignkit.dpo.DPOConfig` of each training stage."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from alignkit.config import CommandConfig, ModelString
from alignkit.dpo.config import DPOConfig
from alignkit.tracking import REPORT_TO_HELP, ReportTo


class CAIConfig(CommandConfig):
    """Constitutional AI, end to end: critique-and-revise, SL-CAI, AI feedback, RL-CAI."""

    model: ModelString = Field("testbed", description="Model string of the model to align.")
    prompts: str = Field(
        "testbed-train",
        description="'testbed-train' or a JSONL/JSON file of {prompt} records to train on.",
    )
    n: int = Field(100, ge=1, description="testbed-train: prompts of each kind.")
    constitution: Path | None = Field(
        None, description="Constitution YAML/JSON (default: alignkit's own)."
    )
    principles: list[str] | None = Field(
        None, description="Use only these principle ids of the constitution (repeat the flag)."
    )
    output_dir: Path = Field(Path("runs/cai"), description="Run directory (resumable).")
    seed: int = 0
    # critique and revision
    rounds: int = Field(1, ge=1, description="Critique-and-revise rounds per prompt.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of responses.")
    max_new_tokens: int = Field(64, ge=1, description="Longest response, critique or revision.")
    chunk_size: int = Field(64, ge=1, description="Prompts per saved chunk (resume granularity).")
    # SL-CAI
    sl_epochs: float = Field(1.0, gt=0, description="SL-CAI: epochs over the final revisions.")
    sl_learning_rate: float = Field(1e-5, gt=0, description="SL-CAI learning rate.")
    # AI feedback
    feedback_model: ModelString | None = Field(
        None, description="Feedback model for RL-CAI labels (default: the starting model)."
    )
    feedback_mode: Literal["logprobs", "cot", "parse"] = Field(
        "logprobs", description="How the feedback model's A/B choice is read."
    )
    n_principles: int = Field(1, ge=1, description="Principles ensembled per labelled pair.")
    pair_attempts: int = Field(
        4, ge=1, description="RL-CAI pairs: draws of the second sample to get one that differs."
    )
    # RL-CAI (DPO on the AI-labelled pairs)
    rl_learning_rate: float = Field(5e-6, gt=0, description="RL-CAI (DPO) learning rate.")
    rl_epochs: float = Field(1.0, gt=0, description="RL-CAI epochs over the labelled pairs.")
    beta: float = Field(0.1, gt=0, description="RL-CAI DPO beta.")
    batch_size: int = Field(8, ge=1, description="Examples per training step (both stages).")
    lora: bool = Field(False, description="Train LoRA adapters (SL-CAI's is merged on save).")
    lora_r: int = Field(16, ge=1)
    device: str = "auto"
    report_to: ReportTo = Field(default_factory=list, description=REPORT_TO_HELP)
    # evaluation after training
    eval_suite: str | None = Field(
        None,
        description="Suite for before/after evaluation: 'testbed' or a prompt file "
        "(default: 'testbed' when training on testbed-train, else none).",
    )
    eval_n: int = Field(100, ge=1, description="testbed eval suite: prompts of each kind.")
    policy: ModelString | None = Field(
        None, description="cai label: model whose samples are labelled (default: SL-CAI model)."
    )

    @property
    def evaluation_suite(self) -> str | None:
        if self.eval_suite is not None:
            return self.eval_suite
        return "testbed" if self.prompts == "testbed-train" else None

    def _training(self, **fields) -> DPOConfig:
        return DPOConfig(
            batch_size=self.batch_size,
            seed=self.seed,
            lora=self.lora,
            lora_r=self.lora_r,
            lora_alpha=2 * self.lora_r,
            device=self.device,
            kl_samples=0,
            report_to=self.report_to,
            **fields,
        )

    def sl_config(self, data: Path, out: Path) -> DPOConfig:
        """SL-CAI: supervised fine-tuning of ``model`` on the final revisions in ``data``
        (``out``: where its tracker logs go)."""
        return self._training(
            model=self.model,
            data=data,
            output_dir=out,
            learning_rate=self.sl_learning_rate,
            sft_epochs=self.sl_epochs,
        )

    def rl_config(self, model: str, data: Path, out: Path) -> DPOConfig:
        """RL-CAI: DPO of ``model`` (the SL-CAI model) on the AI-labelled pairs in ``data``."""
        return self._training(
            model=model,
            data=data,
            output_dir=out,
            learning_rate=self.rl_learning_rate,
            epochs=self.rl_epochs,
            beta=self.beta,
        )
