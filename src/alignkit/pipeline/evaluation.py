"""The ``baseline`` and ``evaluate`` stages: the base and the trained model measured alike.

Both answer the evaluation suite's items with the same settings and seed (``baseline/`` and
``evaluate/`` are ``alignkit eval`` run directories), and both face a *replay* of the red-team
templates on held-out behaviours (``replay.jsonl``: one row per attack prompt, judged). The
evaluate stage pairs every figure with the baseline's (:func:`~alignkit.pipeline.headline.
compare`) and adds KL(trained || base).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignkit.errors import DataError
from alignkit.evaluation.rundir import write_json, write_jsonl
from alignkit.pipeline.context import StageContext, read_jsonl
from alignkit.pipeline.headline import compare, compare_replay, headline


def _evaluate(ctx: StageContext, model: str, out: Path):
    from alignkit.evaluation.alignment import AlignmentEvaluator

    cfg = ctx.config.evaluation
    backend = ctx.backend(model)
    try:
        evaluator = AlignmentEvaluator(
            backend, cfg.suite, cfg.scorers, n=cfg.n, seed=ctx.config.seed,
            generation=cfg.generation.model_copy(update={"seed": ctx.config.seed}),
            cache=False, suite_name=cfg.suite, **cfg.scorer_options,
        )  # fmt: skip
        result = evaluator.run(out)
    finally:
        backend.close()
    return result


def _replay(ctx: StageContext, model: str, out: Path) -> dict[str, Any] | None:
    """The red-team templates on held-out behaviours against ``model`` -> ``replay.jsonl``."""
    from alignkit.redteam.campaign import RedTeaming
    from alignkit.redteam.evaluator import RedTeamingEvaluator
    from alignkit.redteam.store import CampaignStore

    cfg, section = ctx.config.evaluation, ctx.config.redteam
    spec = cfg.replay_behaviours
    if spec is None:
        return None
    options = dict(section.attack_options.get("templates", {}))
    generation = section.generation.model_copy(update={"seed": ctx.config.seed})
    store = CampaignStore(out / "replay.sqlite")
    backend = ctx.backend(model)
    try:
        with ctx.judge() as judge:
            RedTeaming(
                backend, [("templates", options)], spec, store=store, judge=judge,
                generation=generation, max_attempts=cfg.replay_max_attempts, early_stop=False,
                seed=ctx.config.seed,
            ).run()  # fmt: skip
        attempts = [a for a in store.attempts() if a.response is not None]
        summary = RedTeamingEvaluator(store, seed=ctx.config.seed)
        asr, per_attempt = summary.asr()["templates"], summary.attempt_success()["all"]
    finally:
        backend.close()
        store.close()
    rows = [{"prompt": a.prompt, "behaviour": a.behaviour_id, "success": a.success,
             "response": a.response} for a in attempts]  # fmt: skip
    write_jsonl(out / "replay.jsonl", rows)
    return {"behaviour_asr": asr, "attempt_success": per_attempt}


def baseline(ctx: StageContext) -> dict[str, Any]:
    """The base model on the evaluation suite and the template replay."""
    out = ctx.dir("baseline")
    result = _evaluate(ctx, ctx.config.generator, out)
    replay = _replay(ctx, ctx.config.generator, out)
    return {"run_dir": str(out), "headline": headline(result, kl=0.0), "replay": replay}


def _kl(ctx: StageContext, model: str, out: Path, items: list) -> dict[str, Any] | None:
    """KL(trained || base) on prompts spread over the evaluated ``items``, in nats per
    completion."""
    from alignkit.evaluation.preference import PreferenceAlignmentEvaluator

    cfg = ctx.config
    if not cfg.evaluation.kl_prompts:
        return None
    step = max(1, len(items) // cfg.evaluation.kl_prompts)
    policy, base = ctx.backend(model), ctx.backend(cfg.model)
    try:
        evaluator = PreferenceAlignmentEvaluator(policy, reference=base, seed=cfg.seed)
        prompts = [i.prompt for i in items[::step][: cfg.evaluation.kl_prompts]]
        kl = evaluator.kl(prompts, cfg.evaluation.generation.max_new_tokens).to_dict()
    finally:
        policy.close()
        base.close()
    write_json(out / "kl.json", kl)
    return kl


def evaluate(ctx: StageContext) -> dict[str, Any]:
    """The trained model on the baseline's items and replay, paired with the baseline; KL."""
    cfg, model = ctx.config, ctx.output("train", "model")
    if model is None:
        raise DataError("evaluate: no trained model (the train stage was skipped)")
    out = ctx.dir("evaluate")
    result = _evaluate(ctx, f"hf:{model}", out)
    replay = _replay(ctx, f"hf:{model}", out)
    kl = _kl(ctx, f"hf:{model}", out, [row.item for row in result.items])
    figures = headline(result, kl=kl["value"] if kl else None)
    change: dict[str, Any] = {}
    before = ctx.output("baseline", "run_dir")
    if before:
        change = compare(before, out, figures["scorer"], cfg.seed)
        if replay is not None and (Path(before) / "replay.jsonl").exists():
            change["redteam_asr"] = compare_replay(
                read_jsonl(Path(before) / "replay.jsonl"), read_jsonl(out / "replay.jsonl"),
                cfg.seed,
            )  # fmt: skip
    if kl is not None:
        change["kl"] = {"before": 0.0, "after": kl["value"], "low": kl["low"],
                        "high": kl["high"], "after_ci": [kl["low"], kl["high"]], "n": kl["n"],
                        "method": kl.get("method"), "higher_is_better": False}  # fmt: skip
    write_json(out / "change.json", change)
    return {"run_dir": str(out), "headline": figures, "replay": replay, "change": change}
