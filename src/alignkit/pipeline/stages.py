"""The pipeline's stages. Each is a function of a :class:`StageContext` that does its work in
``<output_dir>/<stage>/`` and returns what later stages need (paths and counts, JSON-ready).

- ``baseline``: the base model on the evaluation suite.
- ``redteam``: a red-team campaign (or the user's red-team prompts, answered and judged) ->
  ``failures.jsonl`` (responses the judge calls harmful).
- ``revise``: constitutional critique and revision of the failures -> ``pairs.jsonl`` (the
  revision preferred to the failure; both judged, for the cost model).
- ``feedback``: two samples per prompt, labelled by AI feedback -> ``preferences.jsonl`` (or
  the user's preference file).
- ``train``: a cost model on the judged pairs, then safety-constrained DPO (Lagrangian) on all
  pairs -> ``train/model``; the constraint is measured by the cost model (which drives the
  rounds) and by an independent verifier (testbed ground truth by default on the testbed).
- ``evaluate``: the trained model on the same items as the baseline, and KL to the base.
- ``report``: one HTML / Markdown / JSON report (:mod:`alignkit.pipeline.report`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignkit.errors import DataError
from alignkit.evaluation.rundir import write_jsonl
from alignkit.models.base import GenerationConfig
from alignkit.pipeline.context import StageContext, read_jsonl
from alignkit.pipeline.evaluation import baseline, evaluate
from alignkit.pipeline.report import report

# ------------------------------------------------------------------------------ red team


def _campaign(ctx: StageContext, out: Path) -> list[dict]:
    """Run (or resume) the campaign; every judged attempt as a row."""
    from alignkit.redteam.config import RedTeamConfig
    from alignkit.redteam.run import run_campaign
    from alignkit.redteam.store import CampaignStore

    section = ctx.config.redteam
    settings = section.options_for(RedTeamConfig)
    generation = settings.pop("generation") | {"seed": ctx.config.seed}
    if section.backend.device == "auto":  # the pipeline's device, unless the section sets one
        settings["backend"]["device"] = ctx.config.local_device
    config = RedTeamConfig.model_validate(
        settings | {"target": ctx.config.generator, "output_dir": out, "generation": generation}
    )
    run_campaign(config)
    store = CampaignStore(config.store_path, create=False)
    try:
        attempts = store.attempts()
    finally:
        store.close()
    return [_row(a) for a in attempts if a.response is not None and a.error is None]


def _own_prompts(ctx: StageContext, path: Path, out: Path) -> list[dict]:
    """The user's red-team prompts, answered by the model and judged."""
    from alignkit.evaluation.suites import load_prompt_file
    from alignkit.redteam.base import Attempt, Behaviour

    section = ctx.config.redteam
    items = load_prompt_file(path)
    behaviours = [
        Behaviour(id=i.id, goal=i.prompt if isinstance(i.prompt, str) else str(i.prompt),
                  category=i.category, source=str(path))
        for i in items
    ]  # fmt: skip
    backend = ctx.backend(ctx.config.generator)
    try:
        generation = section.generation.model_copy(update={"seed": ctx.config.seed})
        responses = [c.text for c in backend.generate([b.goal for b in behaviours], generation)]
    finally:
        backend.close()
    with ctx.judge() as judge:
        scores = judge.judge(behaviours, [b.goal for b in behaviours], responses)
    threshold = getattr(judge, "threshold", 0.5)
    attempts = [
        Attempt("user-prompts", b.id, 0, 0, b.goal, r, {judge.name: s},
                s is not None and s >= threshold, category=b.category)
        for b, r, s in zip(behaviours, responses, scores, strict=True)
    ]  # fmt: skip
    _keep_as_campaign(attempts, out / "campaign.sqlite")
    return [_row(a) for a in attempts]


def _keep_as_campaign(attempts: list, path: Path) -> None:
    """The judged answers as a campaign store (what `alignkit review` and `alignkit redteam
    report` read), written afresh."""
    from alignkit.redteam.store import CampaignStore

    for stale in path.parent.glob(path.name + "*"):
        stale.unlink()
    store = CampaignStore(path)
    try:
        store.add_round(attempts)
    finally:
        store.close()


def _row(a) -> dict:
    """A judged attempt as the stage's row."""
    return {"prompt": a.prompt, "response": a.response, "harmful": a.success,
            "attack": a.attack, "behaviour": a.behaviour_id, "category": a.category}  # fmt: skip


def redteam(ctx: StageContext) -> dict[str, Any]:
    """Attack the base model; keep the harmful responses as failures to learn from."""
    out = ctx.dir("redteam")
    prompts = ctx.config.redteam.prompts
    rows = _own_prompts(ctx, prompts, out) if prompts else _campaign(ctx, out)
    failures = _first_harmful(rows)
    write_jsonl(out / "attempts.jsonl", rows)
    write_jsonl(out / "failures.jsonl", failures)
    by_attack: dict[str, list[int]] = {}
    for row in rows:
        by_attack.setdefault(row["attack"], [0, 0])[row["harmful"]] += 1
    return {
        "failures": str(out / "failures.jsonl"),
        "attempts_file": str(out / "attempts.jsonl"),
        "n_failures": len(failures),
        "attempts": len(rows),
        "by_attack": {k: {"attempts": a + b, "harmful": b} for k, (a, b) in by_attack.items()},
        "source": str(prompts) if prompts else "campaign",
    }


def _first_harmful(rows: list[dict]) -> list[dict]:
    """The harmful rows, the first one of each prompt."""
    seen: set[str] = set()
    failures = []
    for row in rows:
        if row["harmful"] and row["prompt"] not in seen:
            seen.add(row["prompt"])
            failures.append(row)
    return failures


def _judged_rows(ctx: StageContext) -> tuple[list[dict], dict[str, int] | None]:
    """Every judged red-team row, with the people's verdicts where they gave one, and counts of
    what they changed (None without human labels). A run made before rows were kept has its
    failures only: people can then overturn failures, not add them."""
    path = ctx.output("redteam", "attempts_file") or ctx.output("redteam", "failures")
    rows = read_jsonl(path) if path else []
    return ctx.human.correct_findings(rows) if ctx.human else (rows, None)


def failures(ctx: StageContext) -> list[dict]:
    """The red-team failures the later stages learn from (one per prompt): judged harmful, or
    with human labels, harmful by the people's verdict where they gave one."""
    return _first_harmful(_judged_rows(ctx)[0])


# ------------------------------------------------------------------------------ revise


def _judge_safe(ctx: StageContext, failures: list[dict], responses: list[str]) -> list[bool]:
    """The red-team judge's verdict on ``responses`` to the failures' requests (True: safe).

    A revision is safe only if it is harmless on every topic: the testbed judge is asked for
    harm of any kind (``on_target=False``), not just a harmful answer to the request itself.
    """
    from alignkit.redteam.base import Behaviour
    from alignkit.redteam.behaviours import resolve_behaviours

    section = ctx.config.redteam
    known = {}
    if not section.prompts and section.behaviours.startswith("testbed"):
        known = {b.id: b for b in resolve_behaviours(section.behaviours)}
    behaviours = [
        known.get(f["behaviour"]) or Behaviour(id=f["behaviour"], goal=f["prompt"])
        for f in failures
    ]
    with ctx.judge(on_target=False) as judge:
        scores = judge.judge(behaviours, [f["prompt"] for f in failures], responses)
    threshold = getattr(judge, "threshold", 0.5)
    return [s is not None and s < threshold for s in scores]


REVISE_CHUNK = 128


def _revisions(ctx: StageContext, failures: list[dict], path: Path) -> list[dict]:
    """The CAI record of each failure (``chosen`` is the final revision), made a chunk at a
    time into ``path`` (a rerun after a crash keeps the finished chunks)."""
    from alignkit.constitutional.critique import ConstitutionalAI
    from alignkit.constitutional.training import ChunkStore, select_constitution
    from alignkit.progress import make_progress

    cfg, section = ctx.config, ctx.config.revise
    constitution = select_constitution(cfg.constitution, cfg.principles)
    critique = GenerationConfig(temperature=0.0, max_new_tokens=section.max_new_tokens)
    keys = [hashlib.sha256(f["prompt"].encode()).hexdigest()[:16] for f in failures]
    store = ChunkStore(path)
    todo = [(k, f) for k, f in zip(keys, failures, strict=True) if k not in store.rows]
    backend = ctx.backend(section.critic or cfg.generator) if todo else None
    try:
        with make_progress() as bar:
            task = bar.add_task("revise", total=len(keys), completed=len(keys) - len(todo), info="")
            for start in range(0, len(todo), REVISE_CHUNK):
                chunk = todo[start : start + REVISE_CHUNK]
                cai = ConstitutionalAI(
                    backend, constitution, rounds=section.rounds, seed=cfg.seed,
                    critique_generation=critique,
                )  # fmt: skip
                cai.principle_keys = [f["prompt"] for _, f in chunk]
                records = cai.run(
                    [f["prompt"] for _, f in chunk], [f["response"] for _, f in chunk]
                )
                store.append(
                    {"id": k, **r.to_dict()} for (k, _), r in zip(chunk, records, strict=True)
                )
                bar.update(task, advance=len(chunk))
    finally:
        if backend is not None:
            backend.close()
    return [store.rows[k] for k in keys]


def revise(ctx: StageContext) -> dict[str, Any]:
    """Critique and revise each failure under the constitution; the revision is preferred."""
    cfg, section = ctx.config, ctx.config.revise
    out = ctx.dir("revise")
    rows, human = _judged_rows(ctx)
    found = _first_harmful(rows)
    if not found:
        write_jsonl(out / "pairs.jsonl", [])
        return {"pairs": str(out / "pairs.jsonl"), "n_pairs": 0, "n_failures": 0, "human": human}
    if section.max_failures and len(found) > section.max_failures:
        found = random.Random(f"revise-{cfg.seed}").sample(found, section.max_failures)
    records = _revisions(ctx, found, out / "revisions.jsonl")
    revised = [(f, r["chosen"].strip()) for f, r in zip(found, records, strict=True)]
    revised = [(f, text) for f, text in revised if text and text != f["response"].strip()]
    safe = _judge_safe(ctx, [f for f, _ in revised], [text for _, text in revised])
    pairs = [
        {"prompt": f["prompt"], "chosen": text, "rejected": f["response"], "chosen_safe": ok,
         "rejected_safe": False, "source": f"redteam:{f['attack']}"}
        for (f, text), ok in zip(revised, safe, strict=True)
    ]  # fmt: skip
    write_jsonl(out / "pairs.jsonl", pairs)
    return {
        "pairs": str(out / "pairs.jsonl"),
        "n_failures": len(found),
        "n_pairs": len(pairs),
        "unchanged": len(found) - len(revised),
        "revisions_judged_safe": sum(safe),
        "human": human,
    }


# ------------------------------------------------------------------------------ feedback


def feedback(ctx: StageContext) -> dict[str, Any]:
    """AI-labelled pairs sampled from the base model (or the user's preference file)."""
    from alignkit.constitutional.config import CAIConfig
    from alignkit.constitutional.training import ConstitutionalAITrainer

    cfg, section = ctx.config, ctx.config.feedback
    out = ctx.dir("feedback")
    if section.preferences is not None:
        from alignkit.safety.data import load_value_pairs

        pairs, report = load_value_pairs(section.preferences, dimension="helpful")
        write_jsonl(out / "preferences.jsonl", pairs)
        return {"preferences": str(out / "preferences.jsonl"), "n_pairs": len(pairs),
                "records_read": report.read, "records_converted": sum(report.converted.values()),
                "source": str(section.preferences), "load": report.to_dict()}  # fmt: skip
    prompts = _feedback_prompts(ctx, out)
    trainer = ConstitutionalAITrainer(
        CAIConfig.model_validate(
            section.options_for(CAIConfig)
            | {"model": cfg.generator, "prompts": prompts, "constitution": cfg.constitution,
               "principles": cfg.principles, "output_dir": out, "seed": cfg.seed,
               "device": cfg.local_device}
        )
    )  # fmt: skip
    path = trainer.label(policy=cfg.generator)
    return {"preferences": str(path), "n_pairs": trainer.stats["pairs_labelled"],
            "skipped": trainer.stats["pairs_skipped"], "source": "ai-feedback"}  # fmt: skip


def _feedback_prompts(ctx: StageContext, out: Path) -> str:
    """The feedback prompt set: the configured one, plus failure prompts if asked (a file)."""
    section = ctx.config.feedback
    if not section.failure_prompts or "redteam" not in ctx.outputs:
        return section.prompts
    from alignkit.evaluation.suites import load_suite

    items = load_suite(section.prompts, n=section.n, seed=ctx.config.seed)
    rows = [{"id": i.id, "prompt": i.prompt, "kind": i.kind} for i in items]
    found = failures(ctx)
    rng = random.Random(f"feedback-{ctx.config.seed}")
    chosen = rng.sample(found, min(section.failure_prompts, len(found)))
    rows += [{"id": f"failure-{k}", "prompt": f["prompt"]}
             for k, f in enumerate(chosen)]  # fmt: skip
    write_jsonl(out / "prompts.jsonl", rows)
    return str(out / "prompts.jsonl")


# ------------------------------------------------------------------------------ train


def _split_failures(
    ctx: StageContext, out: Path, judged: list[dict]
) -> tuple[set[str], str | None]:
    """Failure prompts held out for measuring the constraint (not trained on), as a file;
    ``judged``: the red-team rows (:func:`_judged_rows`)."""
    section = ctx.config.train
    if section.eval_prompts != "failures":
        return set(), section.eval_prompts
    prompts = sorted({f["prompt"] for f in _first_harmful(judged)})
    if not prompts:
        return set(), "testbed" if ctx.config.model == "testbed" else None
    rng = random.Random(f"holdout-{ctx.config.seed}")
    held = set(rng.sample(prompts, max(1, round(section.holdout * len(prompts)))))
    write_jsonl(out / "constraint_prompts.jsonl", [{"prompt": p} for p in sorted(held)])
    return held, str(out / "constraint_prompts.jsonl")


def cost_pairs(pairs: list[dict], seed: int = 0) -> list[dict]:
    """Safety-ordered pairs for the cost model: every pair with one safe and one unsafe
    response (safe first), plus *anchors*: each response of a pair whose two responses are both
    safe (benign answers, refusals), contrasted with an unsafe response drawn from the others,
    as many as the judged pairs. Without anchors the cost model only ever sees harmful
    requests and may price any compliance, a benign answer too, as unsafe."""
    judged = []
    for p in pairs:
        flags = (p.get("chosen_safe"), p.get("rejected_safe"))
        if flags in ((True, False), (False, True)):
            safe, unsafe = (
                (p["chosen"], p["rejected"]) if flags[0] else (p["rejected"], p["chosen"])
            )
            judged.append({"prompt": p["prompt"], "chosen": safe, "rejected": unsafe})
    both_safe = [
        p for p in pairs if p.get("chosen_safe") is True and p.get("rejected_safe") is True
    ]
    rng = random.Random(f"anchors-{seed}")
    safe_answers = [(p["prompt"], r) for p in both_safe for r in (p["chosen"], p["rejected"])]
    safe_answers = rng.sample(safe_answers, min(len(safe_answers), len(judged)))
    unsafe = [j["rejected"] for j in judged]
    anchors = [
        {"prompt": prompt, "chosen": answer, "rejected": rng.choice(unsafe)}
        for prompt, answer in safe_answers
    ]
    flags = {"chosen_safe": True, "rejected_safe": False, "dimension": "harmless"}
    return [{**p, **flags} for p in judged + anchors]


def _cost_model(ctx: StageContext, pairs: list[dict], out: Path, human: list[dict]):
    """The user's cost model, or one trained on the judged (safe, unsafe) pairs and the
    ``human`` ones (a harmful and a safe answer to one behaviour, by the people's verdicts)."""
    from alignkit.safety.value_model import ValueModel, ValueModelConfig, train_value_model

    section, device = ctx.config.train, ctx.config.local_device
    if section.cost_model is not None:
        return ValueModel.load(section.cost_model, device=device), section.cost_model
    path = out / "cost_model"
    if (path / "config.json").exists():
        return ValueModel.load(path, device=device), path
    judged = cost_pairs(pairs, ctx.config.seed) + human
    if not judged:
        raise DataError(
            "train: no judged (safe, unsafe) pair to train a cost model on; give train.cost_model"
        )
    config = ValueModelConfig(
        model=ctx.config.model, kind="cost", learning_rate=section.cost_learning_rate,
        epochs=section.cost_epochs, batch_size=16, seed=ctx.config.seed,
        device=device, output_dir=path, lora=bool(section.dpo_options.get("lora")),
        report_to=ctx.config.report_to,
    )  # fmt: skip
    return train_value_model(config, judged), path


ORIGINS = ("revise", "feedback", "helpful-data", "review")


def _helpful_pairs(ctx: StageContext) -> list[dict]:
    """The helpfulness data mixed in (``train.helpful_data``), or none."""
    section, on_testbed = ctx.config.train, ctx.config.model == "testbed"
    data = (
        ("testbed" if on_testbed else None)
        if section.helpful_data == "auto"
        else section.helpful_data
    )
    if data is None:
        return []
    if data == "testbed":
        from alignkit.safety.constrained import testbed_constrained_pairs

        return testbed_constrained_pairs(section.helpful_n, ctx.config.seed)
    from alignkit.safety.data import load_value_pairs

    pairs, _ = load_value_pairs(data, dimension="helpful")
    return pairs


def train(ctx: StageContext) -> dict[str, Any]:
    """Safety-constrained DPO (:class:`~alignkit.safety.SafetyAlignment`) on every pair."""
    from alignkit.safety.constrained import SafetyAlignment, SafetyConfig

    cfg, section = ctx.config, ctx.config.train
    out = ctx.dir("train")
    judged = _judged_rows(ctx)[0]  # read once: the held-out failures and the cost pairs
    held, eval_prompts = _split_failures(ctx, out, judged)
    pairs = []
    for stage, key in (("revise", "pairs"), ("feedback", "preferences")):
        path = ctx.output(stage, key)
        pairs += [{**p, "origin": stage} for p in read_jsonl(path)] if path else []
    pairs += [{**p, "origin": "helpful-data"} for p in _helpful_pairs(ctx)]
    human = {}
    if ctx.human:
        pairs, human["pairs"] = ctx.human.orient_pairs(pairs)
    pairs = [p for p in pairs if p["prompt"] not in held]
    if not pairs:
        raise DataError("train: no preference pairs (the revise and feedback stages gave none)")
    write_jsonl(out / "pairs.jsonl", pairs)
    extra = []
    if ctx.human:
        extra, _ = ctx.human.cost_pairs(judged)
        extra = [p for p in extra if p["prompt"] not in held]
        human["cost_pairs"] = len(extra)
    cost_model, cost_path = _cost_model(ctx, pairs, out, extra)
    settings = section.options_for(SafetyConfig)
    safety = SafetyConfig.model_validate(
        settings | {"model": cfg.model, "data": str(out / "pairs.jsonl"), "output_dir": out,
                    "cost_model": cost_path, "eval_prompts": eval_prompts or "testbed",
                    "seed": cfg.seed, "device": cfg.local_device, "report_to": cfg.report_to}
    )  # fmt: skip
    alignment = SafetyAlignment(safety, pairs=pairs)
    result = alignment.train()
    counts = {o: sum(p["origin"] == o for p in pairs) for o in ORIGINS}
    return {
        "model": str(result.model),
        "constraint_met": result.constraint_met,  # the independent verdict where there is one
        "constraint": result.constraint,
        "history": result.history,
        "pairs": counts,
        "held_out_failures": len(held),
        "cost_model": str(cost_path),
        "human": human or None,
    }


STAGE_FUNCTIONS: dict[str, Callable[[StageContext], dict[str, Any]]] = {
    "baseline": baseline,
    "redteam": redteam,
    "revise": revise,
    "feedback": feedback,
    "train": train,
    "evaluate": evaluate,
    "report": report,
}
