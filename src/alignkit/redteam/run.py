"""``run_campaign``: what ``alignkit redteam run`` does, callable from Python.

Inputs (behaviour file, attack names, judges) are checked before the target loads; the store
remembers the campaign's identity (target model, behaviours, judge), and resuming a store that
holds attempts of a different identity is refused rather than mixing two campaigns in one
table. The target's identity is the model, not where it is served: ``openai:MODEL@URL`` is
``openai:MODEL``, so a campaign can resume against the same model at another address (a server
that moved, or a first run that was pointed at a closed port).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.errors import ConfigError
from alignkit.redteam.config import RedTeamConfig

IDENTITY_KEYS = ("target", "behaviours", "n_behaviours", "primary_judge")


@dataclass
class CampaignRun:
    output_dir: Path
    summary: Any = None  # CampaignSummary
    qd: Any = None  # QDResult
    results: dict = field(default_factory=dict)  # redteam.json content
    pending: int = 0  # errored attempts in the store that may go away: a rerun sends them
    notes: list[str] = field(default_factory=list)  # what loading the user's files adjusted
    report: dict[str, Path] = field(default_factory=dict)


def model_identity(target: str) -> str:
    """What names a target model whatever serves it: ``openai:MODEL`` for an OpenAI-compatible
    server (the URL left out), the model string otherwise."""
    from alignkit.errors import ModelError
    from alignkit.models.base import ModelSpec

    try:
        spec = ModelSpec.parse(target)
    except ModelError:
        return target
    return f"openai:{spec.model}" if spec.kind == "openai" else str(spec)


def _identity(config: RedTeamConfig) -> dict:
    return {
        "target": model_identity(config.target),
        "behaviours": config.behaviours,
        "n_behaviours": config.n_behaviours,
        "primary_judge": config.primary_judge(),
    }


def _check_store(store, config: RedTeamConfig) -> None:
    """Refuse a store holding another campaign's attempts; stamp this campaign's identity."""
    stored = store.get_meta("identity")
    mine = _identity(config)
    if stored is not None and isinstance(stored.get("target"), str):
        stored = {**stored, "target": model_identity(stored["target"])}  # older stamps: URLs
    if stored is not None and stored != mine and store.count() > 0:
        diff = [k for k in IDENTITY_KEYS if stored.get(k) != mine.get(k)]
        raise ConfigError(
            f"{store.path} holds a campaign with a different {', '.join(diff)} "
            f"({', '.join(f'{k}={stored.get(k)!r}' for k in diff)}); use another output_dir"
        )
    store.set_meta("identity", mine)
    store.set_meta("config", config.model_dump(mode="json"))


def _judge_options(config: RedTeamConfig, load) -> dict:
    options = dict(config.judge_options)
    if config.judge_model:
        options["model"] = load(config.judge_model)
    return options


def run_campaign(config: RedTeamConfig) -> CampaignRun:
    """Run (or resume) the campaign ``config`` describes and write its results."""
    from alignkit.models import load_backend
    from alignkit.redteam.base import ATTACKS, _load_plugins, build_judge
    from alignkit.redteam.behaviours import resolve_behaviours
    from alignkit.redteam.campaign import RedTeaming
    from alignkit.redteam.evaluator import RedTeamingEvaluator
    from alignkit.redteam.store import CampaignStore

    behaviours = resolve_behaviours(config.behaviours, n=config.n_behaviours, seed=config.seed)
    _load_plugins()
    names = [a for a in config.attacks if a != "quality-diversity"]
    unknown = [a for a in names if a not in ATTACKS]
    if unknown:
        raise ConfigError(
            f"unknown attack(s) {unknown}; choose from "
            f"{', '.join(sorted([*ATTACKS, 'quality-diversity']))}"
        )
    attack_options = _template_options(config, names)  # read before the target loads
    out = Path(config.output_dir)
    store = CampaignStore(config.store_path)
    _check_store(store, config)
    backends: dict[str, Any] = {}

    def load(model: str):
        if model not in backends:
            backends[model] = load_backend(model, config.backend)
        return backends[model]

    target = load(config.target)
    options = _judge_options(config, load)
    judge = build_judge(config.primary_judge(), **options)
    extra = [build_judge(j, **options) for j in config.extra_judges]
    attacker = _attacker(config, load)
    run = CampaignRun(out, notes=list(attack_options.pop("_notes", [])))
    if names:
        campaign = RedTeaming(
            target,
            [(a, attack_options.get(a, {})) for a in names],
            behaviours,
            store=store,
            judge=judge,
            extra_judges=extra,
            attacker=attacker,
            generation=config.generation,
            max_attempts=config.max_attempts,
            max_queries=config.max_queries,
            max_time=config.max_time,
            early_stop=config.early_stop,
            seed=config.seed,
            attack_behaviours=config.attack_behaviours,
            max_tries=config.backend.max_tries,
            chunk_size=config.chunk_size,
            flush_seconds=config.flush_seconds,
        )
        run.summary = campaign.run()
    if "quality-diversity" in config.attacks:
        from alignkit.redteam.quality_diversity import MultiObjectiveRedTeaming

        qd = MultiObjectiveRedTeaming(
            target,
            behaviours,
            judge=judge,
            mutator=attacker,
            store=store,
            generation=config.generation,
            seed=config.seed,
            max_tries=config.backend.max_tries,
            **attack_options.get("quality-diversity", {}),
        )
        run.qd = qd.run(iterations=config.qd_iterations, batch_size=config.qd_batch_size)
    errored = store.errored()  # the store's counts now, quality-diversity rows included
    run.pending = errored["transient"]
    if run.summary is not None:
        run.summary.total_attempts = store.count()
        run.summary.errored, run.summary.pending = errored["errored"], errored["transient"]
    evaluator = RedTeamingEvaluator(store, seed=config.seed)
    run.results = evaluator.to_dict()
    evaluator.save(out)
    if config.report:
        from alignkit.evaluation.report import generate_alignment_report

        run.report = generate_alignment_report(out)
    return run


def _template_options(config: RedTeamConfig, names: list[str]) -> dict:
    """Attack options with the user's template files (``config.templates``) loaded into the
    templates attack's ``extra_templates``; ``"_notes"`` says what the load did."""
    options = {name: dict(value) for name, value in config.attack_options.items()}
    if not config.templates:
        return options
    if "templates" not in names:
        raise ConfigError("--templates needs the templates attack (--attacks templates)")
    from alignkit.redteam.template_formats import load_template_paths
    from alignkit.redteam.templates import TEMPLATES

    loaded = load_template_paths(config.templates, config.on_bad_record, set(TEMPLATES))
    options.setdefault("templates", {})["extra_templates"] = loaded.templates
    options["_notes"] = [f"templates: {loaded.summary()}"]
    return options


def _attacker(config: RedTeamConfig, load):
    if config.attacker is None:
        return None
    from alignkit.redteam.mutators import build_mutator

    return build_mutator("rules" if config.attacker == "rules" else load(config.attacker))
