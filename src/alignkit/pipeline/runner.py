"""``AlignmentPipeline``: run the stages in order in one run directory, resuming where it stopped.

Each finished stage leaves ``<output_dir>/<stage>/stage.json`` with its outputs, its duration
and the *identity* of the settings that shaped it (a digest of its section, the shared options
and the identities of the stages it reads; extra replicas of an openai model string left out,
so adding one to ``serve_model`` keeps every finished stage). A rerun keeps finished stages
whose identity still matches and continues at the first unfinished one; a stage interrupted
midway resumes inside itself (the campaign store, the AI-feedback chunks, the DPO rounds). A
finished or started stage whose settings changed is refused (one line, exit 2) unless
``redo_from`` names it or an earlier stage: then that stage and every later one start afresh.

Human review (the ``review:`` section): the people's verdicts a stage reads are part of its
identity (:data:`HUMAN`), so a stage that ran with other labels is refused in the same way
(the report, which is cheap, is simply made again). ``review.pause_after`` stops the run after
a stage that ran now (:attr:`PipelineResult.paused`); the rerun keeps that stage and goes on.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.errors import ConfigError
from alignkit.evaluation.rundir import write_json
from alignkit.models.base import replica_free
from alignkit.pipeline.config import STAGES, PipelineConfig
from alignkit.pipeline.context import brief

SHARED = ("model", "serve_model", "seed")
READS = {
    "baseline": (),
    "redteam": (),
    "revise": ("redteam",),
    "feedback": ("redteam",),
    "train": ("redteam", "revise", "feedback"),
    "evaluate": ("baseline", "train"),
    "report": ("baseline", "redteam", "revise", "feedback", "train", "evaluate"),
}
SECTION = {"baseline": "evaluation", "evaluate": "evaluation"}
HUMAN = {"revise": ("finding",), "train": ("finding", "pair"),
         "report": ("finding", "pair", "sample")}  # fmt: skip
"""The kinds of human verdicts each stage reads (feedback: findings, with failure prompts)."""
CONSTITUTION = ("revise", "feedback")
REPLAY_FIELDS = {"judge", "judge_model", "judge_options", "attack_options", "generation"}


@dataclass
class PipelineResult:
    """Every stage's outputs (by stage name), what ran now, what was kept and what skipped."""

    output_dir: Path
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    paused: str | None = None  # the stage after which the run stopped for human review

    @property
    def change(self) -> dict[str, Any]:
        """The before/after headline table (empty without the evaluate stage)."""
        return self.outputs.get("evaluate", {}).get("change", {})

    @property
    def report(self) -> dict[str, str]:
        return self.outputs.get("report", {}).get("files", {})


def _digest(data: Any) -> str:
    text = json.dumps(_replica_free(data), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _replica_free(value: Any) -> Any:
    """``value`` with the extra replicas left out of every openai model string in it: adding a
    replica to ``serve_model`` (or a judge) redoes no finished stage."""
    if isinstance(value, dict):
        return {key: _replica_free(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_replica_free(item) for item in value]
    return replica_free(value)


class AlignmentPipeline:
    """``AlignmentPipeline(PipelineConfig(model="hf:...")).run()``; keyword arguments override
    config fields: ``AlignmentPipeline(model="testbed", output_dir="runs/p")``."""

    def __init__(self, config: PipelineConfig | None = None, **overrides: Any) -> None:
        base = config.model_dump() if config else {}
        self.config = PipelineConfig.model_validate({**base, **overrides})
        self.out = Path(self.config.output_dir)
        self._check_models()

    def _check_models(self) -> None:
        from alignkit.models.base import ModelSpec

        cfg = self.config
        trains = cfg.enabled("train") and cfg.model != "testbed"
        if trains and ModelSpec.parse(cfg.model).kind != "hf":
            raise ConfigError(
                f"model: {cfg.model!r} cannot be trained here; give the weights as "
                "hf:PATH_OR_HUB_ID and put a server in serve_model for generation"
            )
        if trains and cfg.train.helpful_data == "testbed":
            raise ConfigError(
                "train.helpful_data: 'testbed' pairs are for the testbed model; give a file or null"
            )
        campaign = cfg.enabled("redteam") and cfg.redteam.prompts is None
        if campaign and "gcg" in cfg.redteam.attacks and cfg.generator.startswith("openai:"):
            raise ConfigError(
                "redteam.attacks: gcg needs the target's weights, but the generation stages use "
                f"the server {cfg.generator!r}; drop gcg or leave serve_model out"
            )

    # -- identities ----------------------------------------------------------------------
    def human_kinds(self, stage: str) -> tuple[str, ...]:
        """The kinds of human verdicts ``stage`` reads."""
        if stage == "feedback" and self.config.feedback.failure_prompts:
            return ("finding",)
        return HUMAN.get(stage, ())

    def human_digest(self, stage: str, human: Any) -> str | None:
        """The digest of the human verdicts ``stage`` reads (None: it reads none)."""
        kinds = self.human_kinds(stage)
        if human is None or not kinds:
            return None
        return _digest([self.config.review.source, human.digest(kinds)])

    def identity(self, stage: str, done: dict[str, str], human: Any = None) -> str:
        """The digest of what shapes ``stage``'s outputs (see the module docstring), the human
        verdicts it reads included."""
        cfg = self.config
        data: dict[str, Any] = {k: getattr(cfg, k) for k in SHARED}
        section = getattr(cfg, SECTION.get(stage, stage), None)
        if section is not None:
            data["section"] = section.model_dump(mode="json", exclude={"enabled"})
        if stage in CONSTITUTION:
            data["constitution"] = [str(cfg.constitution), cfg.principles]
        if SECTION.get(stage) == "evaluation":  # the replay uses the red-team templates and judge
            data["replay"] = cfg.redteam.model_dump(mode="json", include=REPLAY_FIELDS)
        data["reads"] = {s: done.get(s) for s in READS[stage]}
        if (digest := self.human_digest(stage, human)) is not None:
            data["human"] = digest
        return _digest(data)

    def _marker(self, stage: str) -> Path:
        return self.out / stage / "stage.json"

    def _clear_redone(self) -> None:
        """Remove the directories of ``redo_from`` and every later stage."""
        if self.config.redo_from is None:
            return
        for stage in STAGES[STAGES.index(self.config.redo_from) :]:
            if (self.out / stage).exists():
                shutil.rmtree(self.out / stage)

    def _ensure_testbed(self, console) -> None:
        """Build the testbed model before the first stage if a stage will need it."""
        if "testbed" not in (self.config.model, self.config.generator):
            return
        from alignkit.testbed.build import ensure_testbed, is_built, testbed_dir

        if not is_built(testbed_dir()):
            from rich.rule import Rule

            console.print(Rule("[bold]building the testbed model[/] (first use, then cached)"))
            ensure_testbed()

    def _prepare(self, stage: str, identity: str, human: str | None) -> dict[str, Any] | None:
        """The outputs of a finished stage to keep, or None to run it. The report is made
        again when only the human labels changed (it reads nothing else that is costly)."""
        directory = self.out / stage
        started = directory / "identity.json"
        if not started.exists():
            return None
        saved = json.loads(started.read_text())
        if saved["identity"] != identity and saved.get("human") != human:
            if stage == "report":
                return None
            raise ConfigError(
                f"{directory}: stage {stage!r} ran with other human labels than "
                f"{self.config.review.source!r} now holds; rerun with --redo-from {stage} to "
                "use them, or use another output_dir"
            )
        if saved["identity"] != identity:
            raise ConfigError(
                f"{directory}: stage {stage!r} was run with other settings (its section, the "
                f"shared options or an earlier stage changed); rerun with --redo-from {stage} "
                "or use another output_dir"
            )
        marker = self._marker(stage)
        return json.loads(marker.read_text())["outputs"] if marker.exists() else None

    # -- the loop ------------------------------------------------------------------------
    def run(self, console=None) -> PipelineResult:
        """Run every enabled stage in order (finished ones are kept); returns the outputs."""
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per model load would drown the stage bars
        try:
            return self._run(console)
        finally:
            hf_logging.enable_progress_bar()

    def _run(self, console) -> PipelineResult:
        from rich.console import Console
        from rich.rule import Rule

        from alignkit.pipeline.stages import STAGE_FUNCTIONS, StageContext

        console = console or Console(quiet=True)
        cfg = self.config
        human = self._human_labels(console)  # a bad source is refused before any work
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "pipeline.json", cfg.model_dump(mode="json"))
        ctx = StageContext(cfg, self.out, human=human)
        result = PipelineResult(self.out)
        self._clear_redone()
        self._ensure_testbed(console)
        identities: dict[str, str] = {}
        active = [s for s in STAGES if cfg.enabled(s)]
        for stage in STAGES:
            if stage not in active:
                result.skipped.append(stage)
                continue
            if stage == "report" and not {"baseline", "evaluate"} <= ctx.outputs.keys():
                result.skipped.append(stage)  # nothing to compare
                console.print("[yellow]report skipped[/]: it needs baseline and evaluate")
                continue
            identity = identities[stage] = self.identity(stage, identities, ctx.human)
            human = self.human_digest(stage, ctx.human)
            kept = self._prepare(stage, identity, human)
            number = f"{active.index(stage) + 1}/{len(active)}"
            if kept is not None:
                ctx.outputs[stage] = kept
                result.kept.append(stage)
                console.print(Rule(f"[bold]{number} {stage}[/] (finished earlier, kept)"))
                continue
            console.print(Rule(f"[bold]{number} {stage}"))
            write_json(self.out / stage / "identity.json", {"identity": identity, "human": human})
            start = time.monotonic()
            outputs = STAGE_FUNCTIONS[stage](ctx)
            seconds = time.monotonic() - start
            write_json(self._marker(stage), {"outputs": outputs, "seconds": seconds})
            ctx.outputs[stage] = outputs
            result.ran.append(stage)
            result.seconds[stage] = seconds
            self._track(stage, outputs, seconds)
            console.print(f"[green]{stage} finished[/] in {seconds:.1f} s: {brief(outputs)}")
            if stage in cfg.review.pause_after and cfg.review.enabled and stage != active[-1]:
                result.paused = stage
                break
        result.outputs = ctx.outputs
        return result

    def _track(self, stage: str, outputs: dict[str, Any], seconds: float) -> None:
        """A finished stage's figures (every number in its outputs, ``STAGE/...``) and time to
        ``report_to``'s trackers, run ``pipeline``, at step = the stage's place in the loop."""
        from alignkit.tracking import Tracking

        if not self.config.report_to:
            return
        settings = self.config.model_dump(mode="json", exclude={"report_to"})
        with Tracking(self.config.report_to, self.out, "pipeline", settings) as tracking:
            tracking.log({stage: outputs, "seconds": {stage: seconds}}, STAGES.index(stage))

    def _human_labels(self, console) -> Any:
        """The people's verdicts the later stages read (``review.human_labels``), or None."""
        source = self.config.review.source
        if source is None:
            return None
        from alignkit.review.feed import load_human_labels, summary

        human = load_human_labels(source, self.out)
        counts = summary(human)
        console.print(
            f"human labels from {counts['source']}: {counts['findings']} findings, "
            f"{counts['pairs']} pairs, {counts['samples']} samples with a verdict",
            highlight=False,
        )
        return human
