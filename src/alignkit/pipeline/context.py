"""What the stages share: the config, the run directory and earlier stages' outputs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.models.base import ModelBackend
from alignkit.pipeline.config import PipelineConfig


@dataclass
class StageContext:
    """The config, the run directory and the outputs of the stages that have finished."""

    config: PipelineConfig
    out: Path
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def dir(self, stage: str) -> Path:
        path = self.out / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def backend(self, model: str) -> ModelBackend:
        from alignkit.models import load_backend

        return load_backend(model, device=self.config.device)

    def output(self, stage: str, key: str, default: Any = None) -> Any:
        return self.outputs.get(stage, {}).get(key, default)


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
