"""What the stages share: the config, the run directory and earlier stages' outputs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
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
    human: Any = None  # the people's verdicts (review.human_labels): a HumanLabels, or None

    def dir(self, stage: str) -> Path:
        path = self.out / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def backend(self, model: str) -> ModelBackend:
        from alignkit.models import load_backend

        return load_backend(model, device=self.config.local_device)

    @contextmanager
    def judge(self, **overrides: Any) -> Iterator[Any]:
        """The red-team section's judge (its judge model loaded here and closed after).
        ``overrides`` replace its options; one that this judge does not take is dropped when
        another judge takes it (:func:`~alignkit.redteam.base.build_judge`, ``shared``)."""
        from alignkit.redteam.base import build_judge

        section = self.config.redteam
        options = {**section.judge_options, **overrides}
        model = self.backend(section.judge_model) if section.judge_model else None
        if model is not None:
            options["model"] = model
        try:
            yield build_judge(section.judge, **options)
        finally:
            if model is not None:
                model.close()

    def output(self, stage: str, key: str, default: Any = None) -> Any:
        return self.outputs.get(stage, {}).get(key, default)


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def brief(outputs: dict[str, Any]) -> str:
    """The counts and flags of a stage's outputs, for one line."""
    parts = [
        f"{k.replace('_', ' ')} {v}" for k, v in outputs.items() if isinstance(v, (int, float))
    ]
    return ", ".join(parts) or "done"
