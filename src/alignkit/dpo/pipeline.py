"""``DPOPipeline``: optional SFT on the chosen responses, then DPO, evaluation and saving.

SFT writes a full model to ``output_dir/sft``; DPO then starts from it, so the DPO reference
is the SFT model, as in the DPO paper (Rafailov et al. 2023, section 4: "pi_ref = pi_SFT").

The output directory holds one run: before any model is loaded it is checked
(:func:`~alignkit.dpo.outputs.check_output_dir`: another run there is refused unless ``resume``
or ``overwrite``; a resumed run must have the same total and settings), and ``run.json`` records
the run's settings. The SFT model, the final model and ``summary.json`` (written last: a run
with one has finished) appear whole or not at all.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.atomic import write_text
from alignkit.dpo.config import DPOConfig
from alignkit.dpo.sft import supervised_finetune
from alignkit.errors import ConfigError

__all__ = ["DPOPipeline", "PipelineResult", "supervised_finetune"]


@dataclass
class PipelineResult:
    output_dir: Path
    model_path: Path
    metrics: dict[str, float] = field(default_factory=dict)
    data_report: dict = field(default_factory=dict)
    already_finished: bool = False  # resume of a finished run: nothing was trained
    selection: dict | None = None  # method selection's race (selection.json), if one ran


class DPOPipeline:
    """SFT (if ``sft_epochs`` > 0) -> DPO -> evaluation -> save, all in ``output_dir``."""

    def __init__(self, config: DPOConfig | None = None, **overrides) -> None:
        base = config or DPOConfig()
        self.config = DPOConfig.model_validate({**base.model_dump(), **overrides})

    def run(self, *, require_run: bool = False) -> PipelineResult:
        """Run SFT (if asked), DPO and the evaluation; save the model and ``summary.json``.

        ``require_run`` (``--resume`` on the command line) makes ``resume`` into a directory
        without a run an error instead of starting one there."""
        from alignkit.atomic import replace_dir
        from alignkit.dpo.outputs import (
            RECORD,
            SUMMARY,
            check_output_dir,
            clear_run,
            write_record,
        )
        from alignkit.dpo.trainer import DPOTrainer
        from alignkit.parallel import on_main_process

        config = self.config
        out = Path(config.output_dir)
        state = check_output_dir(config, require_run=require_run)  # before any model is loaded
        if state == "finished":
            return self._finished(out)

        def start() -> None:
            """Clear the replaced run (if any) once the new one is ready to write; record it."""
            if state == "overwrite":
                clear_run(out)
            if state != "skip" and (state != "resume" or not (out / RECORD).exists()):
                write_record(out, config)

        started = config.sft_epochs > 0
        if started:
            start()  # the SFT model belongs to the run
            sft_dir = out / "sft"
            if not (sft_dir / "config.json").exists():
                partial = out / f".sft.{os.getpid()}.tmp"  # the main process's is written
                supervised_finetune(config, partial)
                on_main_process(lambda: replace_dir(partial, sft_dir))
            config = config.model_copy(update={"model": f"hf:{sft_dir}"})
        if not started:
            start()
        if config.select_loss:
            return self._select(config, out)
        trainer = DPOTrainer(config=config)  # loads the model and the data
        trainer.keep_tracking = started  # the SFT stage's tracker logs belong to this run
        metrics = trainer.train()
        path = trainer.save_model()
        report = trainer.train_dataset.report.to_dict()
        if trainer.accelerator.is_main_process:
            summary = {"metrics": metrics, "data": report, "model": str(path)}
            write_text(out / SUMMARY, json.dumps(summary, indent=2, default=str))
        return PipelineResult(out, path, metrics, report)

    def _select(self, config: DPOConfig, out: Path) -> PipelineResult:
        """Method selection: race the candidates; the winner's full run is this run's model."""
        import shutil

        from alignkit.dpo.outputs import SUMMARY
        from alignkit.dpo.selection import candidates, select_method

        options = candidates(config.select_loss, config.select_beta or [config.beta])
        race = select_method(config, options, config.select_eta)
        trainer = race.trainer
        path = trainer.save_model(out / "final")
        report = getattr(trainer.train_dataset, "report", None)
        report = report.to_dict() if report is not None else {}
        if trainer.accelerator.is_main_process:
            shutil.copyfile(trainer.metrics_path, out / "metrics.jsonl")
            summary = {"metrics": race.metrics, "data": report, "model": str(path),
                       "selection": race.to_dict()}  # fmt: skip
            write_text(out / SUMMARY, json.dumps(summary, indent=2, default=str))
        return PipelineResult(out, path, race.metrics, report, selection=race.to_dict())

    @staticmethod
    def _finished(out: Path) -> PipelineResult:
        """The result a finished run saved in ``summary.json``."""
        try:
            summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{out / 'summary.json'}: unreadable ({exc}); use --overwrite"
            ) from None
        model = Path(summary.get("model") or out / "final")
        return PipelineResult(
            out, model, summary.get("metrics") or {}, summary.get("data") or {}, True
        )
