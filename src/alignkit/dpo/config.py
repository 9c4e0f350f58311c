"""``DPOConfig``: every setting of DPO training, the same from the CLI, YAML and Python.

The loss options (``beta``, ``label_smoothing``, ``kl_coef`` and each loss's own
hyper-parameters, named ``<loss_type>_<param>`` like ``simpo_gamma``) carry no bounds here: the
loss registry declares them (:mod:`alignkit.dpo.registry`) and its ``check_config`` is the one
validation, run when the config is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from alignkit.config import CommandConfig, ModelString
from alignkit.tracking import REPORT_TO_HELP, ReportTo


class DPOConfig(CommandConfig):
    """``alignkit dpo``: preference optimisation of a causal LM (DPO and its family)."""

    # what to train on
    model: ModelString = Field("testbed", description="Model string: hf:PATH[+ADAPTER] or testbed.")
    data: Path | None = Field(None, description="Preference data: JSONL/JSON/Parquet/CSV/HF dir.")
    eval_data: Path | None = Field(None, description="Held-out preference data for evaluate().")
    output_dir: Path = Field(Path("runs/dpo"), description="Checkpoints, metrics and the model.")
    on_bad_record: Literal["error", "skip"] = Field(
        "error", description="A malformed record stops the run (error) or is skipped and counted."
    )
    pku_preference: Literal["better", "safer"] = Field(
        "better",
        description="PKU-SafeRLHF records: train on better_response_id (better) or "
        "safer_response_id (safer).",
    )
    max_length: int = Field(512, ge=8, description="Longest prompt + completion, in tokens.")
    max_prompt_length: int | None = Field(
        None,
        ge=1,
        description="Prompts are cut to this first (default: max_length // 2, so it fits any "
        "max_length).",
    )
    truncation_mode: Literal["keep_end", "keep_start"] = Field(
        "keep_end", description="Which end of a long prompt to keep."
    )
    # the objective
    loss_type: str = Field(
        "sigmoid",
        description="sigmoid, ipo, robust, hinge, simpo, rpo; plackett_luce for ranked records.",
    )
    beta: float = Field(0.1, description="Strength of the implicit KL regularisation (> 0).")
    label_smoothing: float = Field(0.0, description="cDPO / rDPO label noise (see the loss).")
    use_soft_labels: bool = Field(
        True, description="Train on the data's soft_label (AI feedback) as per-pair smoothing."
    )
    simpo_gamma: float | None = Field(None, description="SimPO target reward margin (0.5).")
    rpo_alpha: float | None = Field(None, description="RPO weight of the chosen NLL term (1).")
    kl_coef: float = Field(0.0, description="Constrained DPO: explicit KL penalty weight.")
    adaptive_beta: bool = Field(False, description="beta-DPO: adapt beta per batch (AdaptiveDPO).")
    adaptive_alpha: float = Field(0.6, ge=0, description="beta-DPO scaling of the margin gap.")
    adaptive_filter: float | None = Field(
        None, gt=0, le=1, description="beta-DPO data filtering: fraction of each batch kept."
    )
    select_loss: list[str] = Field(
        default_factory=list,
        description="Method selection: race these losses (x --select-beta) by successive "
        "halving on held-out implicit-reward accuracy, then train the best for max_steps.",
    )
    select_beta: list[float] = Field(
        default_factory=list, description="Method selection: betas to race (default: beta)."
    )
    select_eta: int = Field(2, ge=2, description="Method selection: keep 1/eta each rung.")
    # optimisation
    optimizer: Literal["adamw", "rmsprop"] = "adamw"
    learning_rate: float = Field(5e-6, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch (per process).")
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps (default: epochs).")
    epochs: float = Field(1.0, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    gradient_checkpointing: bool = False
    attn_implementation: Literal[
        "auto", "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"
    ] = Field(
        "auto",
        description="Attention kernels (flex_attention: block-sparse masks for prefix sharing "
        "on GPUs; flash_attention_2/3 need their package).",
    )
    compile: bool = Field(
        False,
        description="torch.compile each decoder layer (the head stays fused); the first steps "
        "wait for the compiler.",
    )
    prefix_sharing: bool = Field(
        False,
        description="Compute each prompt once for chosen and rejected, examples packed into "
        "rows (Wang et al. 2024); needs sdpa, eager or flex_attention attention.",
    )
    seed: int = 0
    # the reference and the adapter
    lora: bool = Field(False, description="Train a LoRA adapter; the reference is the base model.")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: list[str] | None = Field(
        None, description="Module names to adapt (default: all linear layers)."
    )
    precompute_ref: bool = Field(
        True, description="Compute reference log-probs once (cached on disk); no reference forward."
    )
    # bookkeeping
    save_steps: int = Field(0, ge=0, description="Checkpoint every N steps (0: only at the end).")
    eval_steps: int = Field(0, ge=0, description="Evaluate every N steps (0: only at the end).")
    logging_steps: int = Field(1, ge=1)
    resume: bool = Field(
        False,
        description="Continue the run in output_dir from its last checkpoint, with the same "
        "settings and total (--resume refuses a directory without a run; resume: true in a "
        "--config file starts one there).",
    )
    overwrite: bool = Field(
        False,
        description="Replace the run in output_dir: remove its checkpoints, metrics and models "
        "first (other files there are kept).",
    )
    report_to: ReportTo = Field(default_factory=list, description=REPORT_TO_HELP)
    tensorboard: bool = Field(False, description="Same as report_to: [tensorboard].")
    kl_samples: int = Field(32, ge=0, description="Prompts sampled to estimate KL(policy || ref).")
    sft_epochs: float = Field(0.0, ge=0, description="DPOPipeline: SFT epochs on chosen first.")
    trust_remote_code: bool = False
    device: str = "auto"

    @model_validator(mode="after")
    def _lengths(self) -> DPOConfig:
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be below max_length "
                f"({self.max_length})"
            )
        return self

    @model_validator(mode="after")
    def _tensorboard(self) -> DPOConfig:
        if self.tensorboard and "tensorboard" not in self.report_to:
            self.report_to = [*self.report_to, "tensorboard"]
        return self

    @model_validator(mode="after")
    def _loss(self) -> DPOConfig:
        """The loss registry's check of every loss option (the one validation path)."""
        from alignkit.dpo.registry import check_config
        from alignkit.errors import ConfigError

        try:
            loss = self._registered_loss()
            for name, (owner, _) in loss_options().items():
                if owner != loss.name and getattr(self, name) is not None:
                    raise ConfigError(
                        f"{name} is a parameter of loss_type {owner!r}, not {loss.name!r}"
                    )
            params = self.loss_params()
            check_config(loss, self.beta, params.pop("label_smoothing"), params)
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return self

    def _registered_loss(self):
        import alignkit.dpo.losses  # noqa: F401  (fills the registry)
        from alignkit.dpo.registry import get_loss

        return get_loss(self.loss_type)

    @property
    def prompt_limit(self) -> int:
        """``max_prompt_length``, or ``max_length // 2`` when it is not set."""
        if self.max_prompt_length is not None:
            return self.max_prompt_length
        return self.max_length // 2

    def loss_params(self) -> dict:
        """Keyword arguments of the loss function for this config's loss type: label_smoothing,
        the loss's own hyper-parameters that are set (the registry's defaults otherwise) and,
        when set, kl_coef."""
        params: dict = {"label_smoothing": self.label_smoothing}
        for name, (owner, param) in loss_options().items():
            if owner == self.loss_type and getattr(self, name) is not None:
                params[param] = getattr(self, name)
        if self.kl_coef:
            params["kl_coef"] = self.kl_coef
        return params


def loss_options() -> dict[str, tuple[str, str]]:
    """Config fields of the loss hyper-parameters: ``"simpo_gamma" -> ("simpo", "gamma")``, one
    for each parameter the registry declares (``<loss_type>_<param>``)."""
    import alignkit.dpo.losses  # noqa: F401  (fills the registry)
    from alignkit.dpo.registry import LOSSES

    return {
        f"{name}_{param}": (name, param)
        for name, loss in LOSSES.items()
        for param in loss.params
        if f"{name}_{param}" in DPOConfig.model_fields
    }
