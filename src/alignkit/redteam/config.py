"""``RedTeamConfig``: every setting of ``alignkit redteam run``, from the CLI, YAML or Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from alignkit.config import CommandConfig, ModelString
from alignkit.models.base import BackendOptions, GenerationConfig


class RedTeamConfig(CommandConfig):
    """``alignkit redteam run``: a resumable campaign of attacks on behaviours against a target."""

    target: ModelString = Field("testbed", description="Model string of the model to attack.")
    behaviours: str = Field(
        "testbed", description="'testbed', 'testbed:train', or a CSV/JSONL file of behaviours."
    )
    n_behaviours: int | None = Field(None, ge=1, description="Use only this many behaviours.")
    attacks: list[str] = Field(
        default_factory=lambda: ["templates"],
        description="Attacks: templates, pair, tap, gcg, quality-diversity (repeat the flag).",
    )
    attack_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-attack options, e.g. {gcg: {num_steps: 200}}."
    )
    templates: list[str] = Field(
        default_factory=list,
        description="Files or directories of jailbreak templates for the templates attack: "
        "PyRIT YAML, garak JSON lists or alignkit YAML/JSON/JSONL (repeat the flag).",
    )
    on_bad_record: Literal["error", "skip"] = Field(
        "error", description="A bad template entry: stop with an error, or skip and count it."
    )
    attack_behaviours: dict[str, int] = Field(
        default_factory=dict,
        description="Attack only the first N behaviours with an attack, e.g. {gcg: 4}.",
    )
    judge: str | None = Field(
        None, description="Primary judge (default: testbed for testbed behaviours, else refusal)."
    )
    extra_judges: list[str] = Field(
        default_factory=list, description="More judges recorded beside the primary one."
    )
    judge_model: ModelString | None = Field(
        None, description="Model for the llm, llama-guard and wildguard judges."
    )
    judge_options: dict[str, Any] = Field(default_factory=dict, description="Judge options.")
    attacker: str | None = Field(
        None, description="Attacker for pair/tap/quality-diversity: 'rules' or a model string."
    )
    output_dir: Path = Field(Path("runs/redteam"), description="Campaign store and reports.")
    max_attempts: int = Field(50, ge=1, description="Attempts per attack and behaviour.")
    max_queries: int | None = Field(None, ge=1, description="Total target queries (all runs).")
    max_time: float | None = Field(None, gt=0, description="Seconds this run may take.")
    early_stop: bool = Field(True, description="Stop attacking a behaviour once it is broken.")
    qd_iterations: int = Field(20, ge=1, description="Quality-diversity iterations.")
    qd_batch_size: int = Field(16, ge=1, description="Quality-diversity candidates per iteration.")
    chunk_size: int = Field(
        64, ge=1, description="Candidates queried, judged and stored together (a kill loses one)."
    )
    flush_seconds: float = Field(
        10.0, gt=0, description="Store a chunk after this many seconds even if it is not full."
    )
    report: bool = Field(True, description="Write redteam.json and report.html after the run.")
    generation: GenerationConfig = Field(
        default_factory=lambda: GenerationConfig(max_new_tokens=64, temperature=0.0)
    )
    backend: BackendOptions = Field(default_factory=BackendOptions)

    @property
    def seed(self) -> int:
        return self.generation.seed or 0

    @property
    def store_path(self) -> Path:
        return Path(self.output_dir) / "campaign.sqlite"

    def primary_judge(self) -> str:
        from alignkit.redteam.behaviours import default_judge

        return self.judge or default_judge(self.behaviours)
