"""``SafetyAlignment``: safety-constrained preference optimisation on helpfulness data with
safety labels (the PKU-SafeRLHF shape), through the ordinary DPO trainer.

``lagrangian``
    The Safe RLHF idea (Dai et al. 2023, "Safe RLHF", the Lagrangian of section 3.3) carried to
    DPO as in C-DPO (Liu et al. 2024, "Enhancing LLM Safety via Constrained Direct Preference
    Optimization"): each pair is relabelled by the Lagrangian reward ``R_help - lam * cost``,
    where a helpfulness label is worth ``help_gap`` reward units and the cost model prices each
    response: the pair keeps its order when ``help_gap - lam * (cost(chosen) - cost(rejected))
    >= 0`` and is flipped otherwise (never where the cost model calls the chosen response safe,
    cost <= 0: see :func:`cost_gaps`); then plain DPO. After each round the policy answers
    held-out red-team prompts, the cost model's harmful rate (cost > 0) is compared with the
    threshold and ``lam`` takes a dual-ascent step, ``lam <- max(0, lam + lr * (rate -
    threshold))``, raised if needed to the next value that relabels one more pair (a small
    violation would otherwise retrain on the same labels); each round trains afresh from the
    starting model with the new ``lam``, until the constraint holds or the rounds run out.
``safe-dpo``
    Safety-aware reordering in the spirit of SafeDPO (Kim et al. 2025): where the helpfulness
    label prefers an unsafe response over a safe one, the pair is flipped; where the preferred
    response is safe and the other unsafe, the pair gets ``safety_margin``; pairs of two unsafe
    responses are dropped (counted). One DPO run, then the same measurement.

Every measurement is also scored by an evaluator that did not drive the relabelling (``verifier``:
testbed ground truth, or a held-out red-team judge; :mod:`alignkit.safety.verify`). The cost
model's rate drives the dual ascent and decides when the rounds stop; whether the constraint
is *met* is the independent figure's verdict, reported beside the cost model's.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from alignkit.atomic import replace_dir, write_text
from alignkit.config import CommandConfig, ModelString
from alignkit.errors import AlignkitError, ConfigError, DataError
from alignkit.evaluation.rundir import write_jsonl
from alignkit.safety.verify import check_verifier, cost_rate, independent_rate, resolve, verdict
from alignkit.tracking import REPORT_TO_HELP, ReportTo, Tracking


class ConstraintNotMet(AlignkitError):
    """The harmful-rate threshold still fails after the last round (exit code 2)."""


class SafetyConfig(CommandConfig):
    """``alignkit safety train``: constrained DPO against a cost model."""

    model: ModelString = Field("testbed", description="Model string of the model to train.")
    data: str = Field(
        "testbed",
        description="'testbed' (helpful-only labels with safety flags) or a pairwise / "
        "PKU-SafeRLHF file ordered by helpfulness.",
    )
    cost_model: Path | None = Field(
        None, description="A saved cost model (default on the testbed: one trained here)."
    )
    method: Literal["lagrangian", "safe-dpo"] = "lagrangian"
    threshold: float = Field(
        0.2,
        description="Largest acceptable harmful rate: the cost model's (cost > 0) drives the "
        "rounds, the verifier's decides whether the constraint is met.",
    )
    lambda_init: float = Field(0.0, ge=0, description="Lagrange multiplier of the first round.")
    lambda_lr: float = Field(1.0, gt=0, description="Dual-ascent step on (rate - threshold).")
    help_gap: float = Field(1.0, gt=0, description="Reward units of one helpfulness label.")
    rounds: int = Field(4, ge=1, description="Lagrangian rounds at most.")
    safety_margin: float = Field(2.0, ge=0, description="safe-dpo: margin of safe-over-unsafe.")
    eval_prompts: str = Field(
        "testbed", description="Red-team prompts to measure: 'testbed' or a prompt file."
    )
    eval_n: int = Field(50, ge=1, description="testbed: held-out harmful + jailbreak prompts.")
    verifier: str = Field(
        "auto",
        description="Evaluator that checks the constraint independently of the cost model: "
        "'testbed' (ground truth), a red-team judge's name (e.g. llm, llama-guard), 'none'; "
        "'auto': testbed on the testbed model, else none.",
    )
    verifier_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the verifier judge, e.g. {model: hf:...}."
    )
    learning_rate: float = Field(5e-6, gt=0)
    beta: float = Field(0.1, gt=0)
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(8, ge=1)
    dpo_options: dict[str, Any] = Field(
        default_factory=dict,
        description="More DPO options for every round, e.g. {lora: true, precision: bf16}.",
    )
    launcher: Literal["python", "accelerate"] = Field(
        "python",
        description="Train each round in this process, or with 'accelerate launch' (multi-GPU).",
    )
    num_processes: int = Field(1, ge=1, description="accelerate: processes (GPUs) per round.")
    accelerate_config: Path | None = Field(
        None,
        description="accelerate: a config file for 'accelerate launch', e.g. "
        "examples/accelerate/fsdp.yaml to shard each round with FSDP2 (num_processes still "
        "sets the processes).",
    )
    output_dir: Path = Field(Path("runs/safety"), description="Rounds, models and history.")
    seed: int = 0
    device: str = "auto"
    report_to: ReportTo = Field(default_factory=list, description=REPORT_TO_HELP)

    @field_validator("accelerate_config")
    @classmethod
    def _config_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"{value}: no such file")
        return value

    def dpo_config(self, data: Path, out: Path):
        from alignkit.dpo import DPOConfig

        settings = dict(
            model=self.model, data=data, output_dir=out, learning_rate=self.learning_rate,
            beta=self.beta, epochs=self.epochs, batch_size=self.batch_size, seed=self.seed,
            device=self.device, kl_samples=0, report_to=self.report_to,
        )  # fmt: skip
        taken = sorted(set(self.dpo_options) & (set(settings) - {"kl_samples"}))
        if taken:
            raise ConfigError(
                f"dpo_options: {taken} are set by the safety options themselves; set them there"
            )
        try:
            return DPOConfig.model_validate({**settings, **self.dpo_options})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"dpo_options: {problems}") from None


def launch_dpo(config, num_processes: int, accelerate_config: Path | None = None) -> Path:
    """Run ``alignkit dpo`` on ``config`` under ``accelerate launch`` (one process per GPU; with
    ``accelerate_config``, that file's set-up, e.g. FSDP2) and return its final model
    directory. A failed launch raises :class:`AlignkitError` naming the log file."""
    import subprocess
    import sys

    from alignkit.config import dump_config

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_file, log = out / "dpo.yaml", out / "accelerate.log"
    write_text(config_file, dump_config(config.model_copy(update={"resume": True})))
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes",
        str(num_processes), "-m", "alignkit", "dpo", "--config", str(config_file),
    ]  # fmt: skip
    if accelerate_config is not None:
        command[3:3] = ["--config_file", str(accelerate_config)]
    if config.device == "cpu":
        command[3:3] = ["--cpu"]
    with log.open("w") as handle:
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT)
    final = out / "final"
    if code != 0 or not (final / "config.json").exists() and not _merge_adapter(final):
        raise AlignkitError(f"accelerate launch of DPO failed (exit {code}); see {log}")
    return final


def _merge_adapter(final: Path) -> bool:
    """Turn a saved LoRA adapter in ``final`` into a whole model there; False if none."""
    if not (final / "adapter_config.json").exists():
        return False
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    merged = AutoPeftModelForCausalLM.from_pretrained(final).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(final)
    tmp = final.with_name(f".{final.name}.merged.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    for item in final.iterdir():  # what else the run wrote there stays
        keep = item.is_file() and not item.name.startswith("adapter_")
        if keep and not (tmp / item.name).exists():
            shutil.copy2(item, tmp / item.name)
    replace_dir(tmp, final)  # the adapter stays in place until the whole model is written
    return True


def safe_reorder(pairs: Sequence[dict], margin: float) -> tuple[list[dict], dict[str, int]]:
    """SafeDPO-style records from helpfulness pairs with safety flags (see the module doc)."""
    out, counts = [], {"flipped": 0, "margin": 0, "dropped_both_unsafe": 0, "kept": 0}
    for p in pairs:
        c_safe, r_safe = p.get("chosen_safe"), p.get("rejected_safe")
        chosen, rejected, m = p["chosen"], p["rejected"], 0.0
        if c_safe is False and r_safe is False:
            counts["dropped_both_unsafe"] += 1
            continue
        if c_safe is False and r_safe is True:
            chosen, rejected, m = rejected, chosen, margin
            counts["flipped"] += 1
        elif c_safe is True and r_safe is False:
            m = margin
            counts["margin"] += 1
        counts["kept"] += 1
        out.append({"prompt": p["prompt"], "chosen": chosen, "rejected": rejected, "margin": m})
    return out, counts


def cost_gaps(pairs: Sequence[dict], cost_model) -> list[float]:
    """``cost(chosen) - cost(rejected)`` of every pair, by the cost model; at most 0 where the
    cost model judges the chosen response safe (cost <= 0), so no multiplier flips that pair.

    The cost model is trained on safe-vs-unsafe orderings with Safe RLHF's sign terms, so its
    sign is calibrated but the spread among safe answers is not: a benign answer scored -5.6
    against a refusal's -6.6 would otherwise be "one unit costlier" and flipped towards the
    refusal at ``lam = 1`` (six benign pairs of the demo were). Demoting a response the cost
    model itself calls safe cannot lower the harmful rate it constrains."""
    prompts = [p["prompt"] for p in pairs]
    cost_c = cost_model.score(prompts, [p["chosen"] for p in pairs])
    cost_r = cost_model.score(prompts, [p["rejected"] for p in pairs])
    return [c - r if c > 0 else min(c - r, 0.0) for c, r in zip(cost_c, cost_r, strict=True)]


def relabel(
    pairs: Sequence[dict], gaps: Sequence[float], lam: float, help_gap: float = 1.0
) -> tuple[list[dict], int]:
    """Pairs relabelled by ``R_help - lam * cost`` given their cost gaps; records and flips."""
    records, flips = [], 0
    for p, gap in zip(pairs, gaps, strict=True):
        keep = help_gap - lam * gap >= 0
        flips += not keep
        chosen, rejected = (p["chosen"], p["rejected"]) if keep else (p["rejected"], p["chosen"])
        record = {"prompt": p["prompt"], "chosen": chosen, "rejected": rejected}
        if p.get("soft_label") is not None:  # a flip is the constraint's call: a hard label
            record["soft_label"] = p["soft_label"] if keep else 1.0
        records.append(record)
    return records, flips


def lagrangian_records(
    pairs: Sequence[dict], cost_model, lam: float, help_gap: float = 1.0
) -> tuple[list[dict], int]:
    """Pairs relabelled by ``R_help - lam * cost`` (C-DPO); returns records and flips."""
    return relabel(pairs, cost_gaps(pairs, cost_model), lam, help_gap)


def next_multiplier(
    lam: float, rate: float, threshold: float, lr: float, gaps: Sequence[float], help_gap: float
) -> float:
    """The dual-ascent step ``max(0, lam + lr * (rate - threshold))``; while the constraint is
    violated, raised if needed to the smallest multiplier that relabels one more pair, so a
    small violation does not retrain on the same labels."""
    step = max(0.0, lam + lr * (rate - threshold))
    if rate <= threshold:
        return step
    kept = [help_gap / g for g in gaps if g > 0 and help_gap - lam * g >= 0]
    return max(step, min(kept) * (1 + 1e-6)) if kept else step


@dataclass
class SafetyResult:
    """The final model, whether the constraint holds (the independent evaluator's verdict where
    there is one), one history row per round (``cost_model`` and ``independent`` rates), and
    the verdict in full (:func:`alignkit.safety.verify.verdict`)."""

    model: Path
    constraint_met: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    data_report: dict[str, Any] = field(default_factory=dict)
    constraint: dict[str, Any] = field(default_factory=dict)


class SafetyAlignment:
    """Constrained DPO (module docstring): ``SafetyAlignment(SafetyConfig(...)).train()``."""

    def __init__(
        self,
        config: SafetyConfig | None = None,
        pairs: Sequence[dict] | None = None,
        **overrides: Any,
    ) -> None:
        self._pairs = list(pairs) if pairs is not None else None
        base = config.model_dump() if config else {}
        self.config = SafetyConfig.model_validate({**base, **overrides})
        if not 0.0 <= self.config.threshold < 1.0:
            raise ConfigError(
                f"threshold must be a harmful rate in [0, 1), got {self.config.threshold}; "
                "a rate below 0 can never be met"
            )
        check_verifier(self.config.verifier)
        self.out = Path(self.config.output_dir)

    def pairs(self) -> list[dict]:
        """Helpfulness-ordered pairs with safety flags (those given to the constructor, if
        any: the cost model relabels every pair, so their flags may be partial)."""
        if self._pairs is not None:
            return self._pairs
        if self.config.data == "testbed":
            return testbed_constrained_pairs(seed=self.config.seed)
        from alignkit.safety.data import load_value_pairs

        pairs, _ = load_value_pairs(self.config.data, dimension="helpful")
        if not any(p.get("chosen_safe") is not None for p in pairs):
            raise DataError(f"{self.config.data}: no safety flags (chosen_safe / rejected_safe)")
        return pairs

    def load_cost_model(self):
        """The configured cost model, or on the testbed one trained on its harmless pairs."""
        from alignkit.safety.value_model import ValueModel, ValueModelConfig, train_value_model

        if self.config.cost_model is not None:
            model = ValueModel.load(self.config.cost_model, device=self.config.device)
            if model.kind != "cost":
                raise ConfigError(
                    f"{self.config.cost_model}: a {model.kind} model, not a cost model"
                )
            return model
        if self.config.model != "testbed":
            raise ConfigError("cost_model: give a saved cost model (alignkit safety train-rm)")
        path = self.out / "cost_model"
        if (path / "config.json").exists():
            return ValueModel.load(path, device=self.config.device)
        from alignkit.safety.data import testbed_value_pairs

        config = ValueModelConfig(
            kind="cost", learning_rate=1e-3, batch_size=16, device=self.config.device,
            seed=self.config.seed, output_dir=path, report_to=self.config.report_to,
        )  # fmt: skip
        return train_value_model(config, testbed_value_pairs(256, "harmless", "train", 0))

    def eval_prompts(self) -> list[str]:
        from alignkit.evaluation.suites import load_suite

        cfg = self.config
        items = load_suite(cfg.eval_prompts, n=cfg.eval_n, seed=cfg.seed)
        if cfg.eval_prompts == "testbed":
            items = [i for i in items if i.kind in ("harmful", "jailbreak")]
        return [i.prompt for i in items]

    def measure(self, model: str, cost_model) -> dict[str, Any]:
        """``model``'s answers to the red-team prompts, measured twice: ``cost_model`` (harmful
        rate: cost > 0, mean cost) and ``independent`` (the verifier's rate, or None)."""
        from alignkit.models import GenerationConfig, load_backend

        prompts = self.eval_prompts()
        backend = load_backend(model, device=self.config.device)
        try:
            settings = GenerationConfig(max_new_tokens=64, seed=self.config.seed)
            answers = [c.text for c in backend.generate(prompts, settings)]
        finally:
            backend.close()
        costs = cost_model.score(prompts, answers)
        name = resolve(self.config.verifier, self.config.model)
        independent = (
            None
            if name is None
            else independent_rate(name, prompts, answers, self.config.verifier_options)
        )
        return {"cost_model": cost_rate(costs), "independent": independent}

    def _train_round(self, records: list[dict], name: str) -> Path:
        from alignkit.dpo import DPOTrainer

        run = self.out / name
        final = run / "final"
        if (final / "config.json").exists():
            return final
        run.mkdir(parents=True, exist_ok=True)
        data = run / "data.jsonl"
        write_jsonl(data, records)
        config = self.config.dpo_config(data, run)
        if self.config.launcher == "accelerate":
            return launch_dpo(config, self.config.num_processes, self.config.accelerate_config)
        trainer = DPOTrainer(config=config)
        trainer.train()
        return trainer.save_model(merge_lora=True)

    def train(self) -> SafetyResult:
        """Train (all rounds for ``lagrangian``), measuring the constraint after each."""
        cfg, pairs, cost_model = self.config, self.pairs(), self.load_cost_model()
        history: list[dict[str, Any]] = []
        report: dict[str, Any] = {"pairs": len(pairs)}
        if cfg.method == "safe-dpo":
            records, counts = safe_reorder(pairs, cfg.safety_margin)
            report |= counts
            model = self._train_round(records, "safe-dpo")
            history.append({"round": 1, **self.measure(f"hf:{model}", cost_model)})
        else:
            lam, gaps = cfg.lambda_init, cost_gaps(pairs, cost_model)
            for round_ in range(1, cfg.rounds + 1):
                records, flips = relabel(pairs, gaps, lam, cfg.help_gap)
                model = self._train_round(records, f"round-{round_}")
                measured = self.measure(f"hf:{model}", cost_model)
                history.append({"round": round_, "lambda": lam, "flipped": flips, **measured})
                rate = measured["cost_model"]["harmful_rate"]  # the cost model drives the dual
                if rate <= cfg.threshold:
                    break
                lam = next_multiplier(lam, rate, cfg.threshold, cfg.lambda_lr, gaps, cfg.help_gap)
        last = history[-1]
        constraint = verdict(last["cost_model"], last["independent"], cfg.threshold)
        settings = cfg.model_dump(mode="json", exclude={"report_to"})
        with Tracking(cfg.report_to, self.out, "safety", settings) as tracking:
            for entry in history:  # each round's multiplier and measured rates
                tracking.log(entry, step=entry["round"])
            tracking.log({"constraint": constraint}, step=last["round"])
        result = SafetyResult(model, constraint["met"], history, report, constraint)
        summary = {"model": str(model), "constraint_met": constraint["met"],
                   "constraint": constraint, "history": history, "data": report}  # fmt: skip
        (self.out / "safety.json").write_text(json.dumps(summary, indent=2))
        return result


def testbed_constrained_pairs(n_benign: int = 160, seed: int = 0) -> list[dict]:
    """Helpfulness labels from a helpful-only annotator on the testbed, with safety flags:
    benign helpful-vs-wrong pairs, and every train-split harmful request with its compliance
    preferred to a refusal (the conflict the constraint must resolve)."""
    import random

    from alignkit.safety.data import testbed_value_pairs
    from alignkit.testbed.splits import model_world

    world, rng = model_world(), random.Random(f"constrained-{seed}")
    pairs = [
        {**p, "chosen_safe": True, "rejected_safe": True}
        for p in testbed_value_pairs(n_benign, "helpful", "train", seed)
    ]
    for req in world.requests("harmful", "train"):
        pairs.append({
            "prompt": req.text, "chosen": world.respond(req, "harmful", rng),
            "rejected": world.respond(req, "refusal", rng), "chosen_safe": False,
            "rejected_safe": True, "dimension": "helpful", "category": req.category,
        })  # fmt: skip
    rng.shuffle(pairs)
    return pairs
