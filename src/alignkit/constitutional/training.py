"""``ConstitutionalAITrainer``: SL-CAI then RL-CAI (Bai et al. 2022, "Constitutional AI:
Harmlessness from AI Feedback", sections 3 and 4), in one resumable run directory.

1. ``generate``: the model answers the training prompts, then critiques and revises its answers
   under sampled principles (:class:`ConstitutionalAI`) -> ``revisions.jsonl``.
2. ``train_sl``: supervised fine-tuning on the final revisions (SL-CAI) -> ``sl/``.
3. ``label``: the SL-CAI model samples two responses per prompt; a feedback model picks the
   better one per constitutional comparison question (:class:`AIFeedback`, both orders, soft
   labels) -> ``feedback.jsonl`` and the DPO-ready ``preferences.jsonl``.
4. ``train_rl``: DPO on the AI-labelled pairs, starting from (and referenced to) the SL-CAI
   model (RL-CAI; DPO in place of PPO against a preference model) -> ``rl/final``.

Stages 1 and 3 save their work in chunks of ``chunk_size`` prompts as they finish; a rerun
skips finished prompts, and a backend failure stops with a message naming what was kept. A
torn last line (a crash mid-write) is dropped and redone. ``cai.json`` records the settings
that shape the data; rerunning the directory with different ones is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.atomic import replace_dir
from alignkit.constitutional.config import CAIConfig
from alignkit.constitutional.constitution import (
    Constitution,
    default_constitution,
    load_constitution,
)
from alignkit.errors import AlignkitError, BackendError, ConfigError, DataError
from alignkit.evaluation.rundir import write_jsonl, write_text
from alignkit.evaluation.suites import EvalItem, load_suite
from alignkit.models.base import GenerationConfig, ModelBackend
from alignkit.tracking import Tracking

IDENTITY_FIELDS = (
    "model", "prompts", "n", "principles", "seed", "rounds", "temperature", "max_new_tokens",
    "feedback_model", "feedback_mode", "n_principles", "pair_attempts",
)  # fmt: skip


class ChunkStore:
    """JSON Lines keyed by ``id``, appended a chunk at a time; tolerates a torn last line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, dict] = {}
        self.dropped = 0
        if path.exists():
            self._read()

    def _read(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        good = []
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # torn by a crash mid-write: redo that prompt
                    self.dropped += 1
                    continue
                raise DataError(f"{self.path}, line {number}: invalid JSON") from None
            if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                raise DataError(f"{self.path}, line {number}: not a record with a string 'id'")
            self.rows[row["id"]] = row
            good.append(line)
        if self.dropped:
            write_text(self.path, "".join(g + "\n" for g in good))

    def append(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        self.rows.update({r["id"]: r for r in rows})


@dataclass
class CAIRunResult:
    """Paths of a run's outputs and the counts of each stage."""

    output_dir: Path
    revisions: Path | None = None
    sl_model: Path | None = None
    preferences: Path | None = None
    rl_model: Path | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def select_constitution(path: Path | None, principles: Sequence[str] | None) -> Constitution:
    """The constitution in ``path`` (default: alignkit's own), cut to ``principles`` if given;
    an unknown principle id raises :class:`~alignkit.errors.ConfigError`."""
    constitution = (load_constitution(path) if path else None) or default_constitution()
    if principles:
        known = {q.id for q in constitution.principles}
        unknown = [p for p in principles if p not in known]
        if unknown:
            raise ConfigError(
                f"principles: unknown id(s) {unknown}; the constitution has "
                f"{', '.join(q.id for q in constitution.principles)}"
            )
        constitution = constitution.select(*principles)
    return constitution


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ConstitutionalAITrainer:
    """SL-CAI then RL-CAI on any HF model (LoRA or full), resumable (see the module docstring).

    ``ConstitutionalAITrainer(CAIConfig(model="hf:./base", prompts="prompts.jsonl")).train()``;
    keyword arguments override config fields: ``ConstitutionalAITrainer(model="testbed")``.
    """

    def __init__(self, config: CAIConfig | None = None, **overrides: Any) -> None:
        base = config.model_dump() if config else {}
        self.config = CAIConfig.model_validate({**base, **overrides})
        self.out = Path(self.config.output_dir)
        self.constitution = self._constitution()
        self.stats: dict[str, Any] = {}

    # -- inputs ------------------------------------------------------------------------------
    def _constitution(self) -> Constitution:
        return select_constitution(self.config.constitution, self.config.principles)

    def prompts(self) -> list[EvalItem]:
        """The training prompts (their ids key the resumable stores)."""
        return load_suite(self.config.prompts, n=self.config.n, seed=self.config.seed)

    def _check_identity(self, items: list[EvalItem]) -> None:
        """Refuse to continue a run directory made with settings or prompts that shape
        different data."""
        cfg = self.config

        def digest(text: str) -> str:
            return hashlib.sha256(text.encode()).hexdigest()[:16]

        identity = {k: getattr(cfg, k) for k in IDENTITY_FIELDS} | {
            "constitution": digest(self.constitution.model_dump_json()),
            "prompt_set": digest(json.dumps([[i.id, i.prompt] for i in items])),
        }
        identity = json.loads(json.dumps(identity, default=str))
        path = self.out / "cai.json"
        if path.exists():
            saved = json.loads(path.read_text())
            changed = sorted(k for k in identity if saved.get(k) != identity[k])
            if changed:
                raise ConfigError(
                    f"{self.out}: this run directory was made with other settings "
                    f"({', '.join(changed)}); use a new output_dir or the same settings"
                )
            return
        self.out.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(identity, indent=2))

    def _backend(self, model: str) -> ModelBackend:
        from alignkit.models import load_backend

        return load_backend(model, device=self.config.device)

    def _run_chunks(
        self,
        store: ChunkStore,
        items: list[EvalItem],
        work: Callable[[list[EvalItem]], list[dict]],
        what: str,
    ) -> None:
        """Apply ``work`` to the unfinished items chunk by chunk, saving each chunk."""
        from alignkit.progress import make_progress

        todo = [item for item in items if item.id not in store.rows]
        self.stats[f"{what}_resumed"] = len(items) - len(todo)
        with make_progress() as bar:
            task = bar.add_task(what, total=len(items), completed=len(items) - len(todo), info="")
            for chunk in _chunks(todo, self.config.chunk_size):
                try:
                    rows = work(chunk)
                except (AlignkitError, OSError, RuntimeError) as exc:
                    done = sum(item.id in store.rows for item in items)
                    raise BackendError(
                        f"{what} stopped: {exc}. {done} of {len(items)} prompts are finished and "
                        f"kept in {store.path}; rerun the same command to continue"
                    ) from None
                store.append(rows)
                bar.update(task, advance=len(chunk))

    # -- stage 1: critique and revision -------------------------------------------------------
    def generate(self) -> Path:
        """Critique-and-revise every training prompt -> ``revisions.jsonl``."""
        from alignkit.constitutional.critique import ConstitutionalAI

        cfg = self.config
        items = self.prompts()
        self._check_identity(items)
        store = ChunkStore(self.out / "revisions.jsonl")
        self.stats["revisions_torn_lines"] = store.dropped
        backend = None

        def work(chunk: list[EvalItem]) -> list[dict]:
            nonlocal backend
            backend = backend or self._backend(cfg.model)
            cai = ConstitutionalAI(
                backend,
                self.constitution,
                rounds=cfg.rounds,
                seed=cfg.seed,
                generation=GenerationConfig(
                    temperature=cfg.temperature, seed=cfg.seed, max_new_tokens=cfg.max_new_tokens
                ),
                critique_generation=GenerationConfig(
                    temperature=0.0, max_new_tokens=cfg.max_new_tokens
                ),
            )
            cai.principle_keys = [item.id for item in chunk]
            records = cai.run([item.prompt for item in chunk])
            return [
                {"id": item.id, "kind": item.kind, **record.to_dict()}
                for item, record in zip(chunk, records, strict=True)
            ]

        try:
            self._run_chunks(store, items, work, "revisions")
        finally:
            if backend is not None:
                backend.close()
        self.stats["revised"] = sum(r["init_response"] != r["chosen"] for r in store.rows.values())
        self.stats["prompts"] = len(items)
        return store.path

    # -- stage 2: SL-CAI ----------------------------------------------------------------------
    def train_sl(self) -> Path:
        """Supervised fine-tuning on the final revisions -> ``sl/`` (a whole HF model)."""
        from alignkit.data import PreferenceExample
        from alignkit.dpo.pipeline import supervised_finetune

        out = self.out / "sl"
        if (out / "config.json").exists():
            return out
        revisions = self.out / "revisions.jsonl"
        if not revisions.exists():
            self.generate()
        partial = self.out / "sl.partial"
        examples = [
            PreferenceExample([{"role": "user", "content": row["prompt"]}], [row["chosen"]], key)
            for key, row in sorted(ChunkStore(revisions).rows.items())
        ]
        supervised_finetune(self.config.sl_config(revisions, self.out), partial, examples)
        replace_dir(partial, out)
        return out

    # -- stage 3: AI feedback -----------------------------------------------------------------
    def label(self, policy: str | None = None) -> Path:
        """Two sampled responses per prompt from ``policy`` (default: the SL-CAI model), labelled
        by the feedback model -> ``feedback.jsonl`` (every pair) and ``preferences.jsonl``."""

        cfg = self.config
        items = self.prompts()
        self._check_identity(items)
        policy = policy or f"hf:{self.train_sl()}"
        store = ChunkStore(self.out / "feedback.jsonl")
        backends: dict[str, ModelBackend] = {}

        def work(chunk: list[EvalItem]) -> list[dict]:
            if not backends:
                backends["policy"] = self._backend(policy)
                judge = cfg.feedback_model or cfg.model
                backends["judge"] = self._backend(judge)
            first, second = self._sample_pairs(backends["policy"], [i.prompt for i in chunk])
            return self._labelled(backends["judge"], chunk, first, second)

        try:
            self._run_chunks(store, items, work, "feedback")
        finally:
            for backend in backends.values():
                backend.close()
        return self._write_preferences(store)

    def _sample_pairs(self, policy: ModelBackend, prompts: list[str]) -> tuple[list, list]:
        """Two sampled responses per prompt; where they come out identical, the second is drawn
        again (up to ``pair_attempts`` draws of it in all): an identical pair teaches nothing."""
        cfg = self.config

        def draw(which: list[str], k: int) -> list:
            settings = GenerationConfig(
                temperature=max(cfg.temperature, 1e-3),
                seed=cfg.seed + k,
                max_new_tokens=cfg.max_new_tokens,
            )
            return policy.generate(which, settings)

        first, second = draw(prompts, 1), draw(prompts, 2)
        for k in range(3, cfg.pair_attempts + 2):
            same = [
                i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a.text == b.text
            ]
            if not same:
                break
            for i, c in zip(same, draw([prompts[i] for i in same], k), strict=True):
                second[i] = c
        return first, second

    def _labelled(self, judge, chunk, first, second) -> list[dict]:
        """Feedback rows for one chunk: identical pairs are kept as rows but not labelled."""
        from alignkit.constitutional.feedback import AIFeedback

        cfg = self.config
        pairs = [
            (item.prompt, a.text.strip(), b.text.strip())
            for item, a, b in zip(chunk, first, second, strict=True)
        ]
        distinct = [k for k, (_, a, b) in enumerate(pairs) if a != b]
        feedback = AIFeedback(
            judge, self.constitution.principles, cfg.n_principles, cfg.feedback_mode, cfg.seed
        )
        labels = dict(zip(distinct, feedback.label([pairs[k] for k in distinct]), strict=True))
        rows = []
        for k, item in enumerate(chunk):
            label = labels.get(k)
            row = {"id": item.id, "kind": item.kind, "prompt": item.prompt}
            if label is None:
                row["skipped"] = "identical responses"
            elif label.soft_label is None:
                row["skipped"] = "no readable answer"
            else:
                row |= label.to_record() | {"p_ab": label.p_ab, "p_ba": label.p_ba}
            rows.append(row)
        return rows

    def _write_preferences(self, store: ChunkStore) -> Path:
        rows = [store.rows[k] for k in sorted(store.rows)]
        usable = [r for r in rows if "skipped" not in r]
        skipped: dict[str, int] = {}
        for r in rows:
            if "skipped" in r:
                skipped[r["skipped"]] = skipped.get(r["skipped"], 0) + 1
        self.stats["pairs_labelled"], self.stats["pairs_skipped"] = len(usable), skipped
        if not usable:
            raise DataError(f"{store.path}: no usable AI-labelled pair ({skipped})")
        path = self.out / "preferences.jsonl"
        keys = ("prompt", "chosen", "rejected", "soft_label", "principles")
        write_jsonl(path, [{k: r[k] for k in keys} for r in usable])
        return path

    # -- stage 4: RL-CAI ----------------------------------------------------------------------
    def train_rl(self) -> Path:
        """DPO on the AI-labelled pairs from the SL-CAI model -> ``rl/final`` (a whole model;
        a LoRA adapter is merged into it)."""
        from alignkit.dpo.trainer import DPOTrainer

        final = self.out / "rl" / "final"
        if (final / "config.json").exists():
            return final
        sl = self.train_sl()
        preferences = self.out / "preferences.jsonl"
        if not preferences.exists():
            preferences = self.label()
        config = self.config.rl_config(f"hf:{sl}", preferences, self.out / "rl")
        config = config.model_copy(update={"resume": (self.out / "rl").exists()})
        trainer = DPOTrainer(config=config)
        self.stats["rl_metrics"] = trainer.train()
        return trainer.save_model(merge_lora=True)  # a whole model, as SL-CAI's

    def evaluate(self, model: Path | str | None = None, cache: bool = True):
        """``evaluate_alignment`` of ``model`` (default: the RL-CAI model) against the starting
        model on :attr:`CAIConfig.evaluation_suite` -> ``eval/`` (None when there is none).
        ``cache=False`` generates afresh: sampled outputs then do not depend on which earlier
        runs filled the call cache (and in which batches)."""
        from alignkit.evaluation.before_after import evaluate_alignment

        cfg = self.config
        suite = cfg.evaluation_suite
        if suite is None:
            return None
        model = model or self.out / "rl" / "final"
        change = evaluate_alignment(
            model if isinstance(model, str) else f"hf:{model}",
            baseline=cfg.model,
            suite=suite,
            n=cfg.eval_n,
            seed=cfg.seed,
            scorers=("testbed", "refusal") if suite == "testbed" else ("refusal",),
            generation=GenerationConfig(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed),
            output_dir=self.out / "eval",
            cache=cache,
        )
        self.stats["evaluation"] = change.table()
        return change

    def train(self, evaluate: bool = True) -> CAIRunResult:
        """All four stages (finished ones are skipped), then the before/after evaluation;
        writes ``summary.json``."""
        revisions = self.generate()
        sl = self.train_sl()
        preferences = self.label(self.config.policy)
        rl = self.train_rl()
        if evaluate:
            self.evaluate(rl)
        result = CAIRunResult(self.out, revisions, sl, preferences, rl, dict(self.stats))
        settings = self.config.model_dump(mode="json", exclude={"report_to"})
        with Tracking(self.config.report_to, self.out, "cai", settings) as tracking:
            tracking.log(result.stats, step=0)  # the stages' counts and the evaluation
        summary = {k: str(v) for k, v in vars(result).items() if k != "stats"}
        (self.out / "summary.json").write_text(
            json.dumps(summary | {"stats": result.stats}, indent=2, default=str)
        )
        return result
