"""Finding the run directories alignkit wrote below a folder, and reading their figures.

:func:`find_runs` walks a folder and returns one :class:`RunInfo` per run it finds (a folder
holding two kinds of run, such as an eval run written into a DPO output folder, gives two):

- ``eval``: ``eval.json`` + ``eval_items.jsonl`` (``alignkit eval``, and the ``baseline/`` and
  ``evaluate/`` folders of a demo or pipeline run). Figures: the loop's headline figures
  (:data:`alignkit.pipeline.headline.HEADLINE`), each the mean of the run's first scorer over
  the items of one kind, with :func:`~alignkit.evaluation.stats.estimate`'s 95% interval and n;
  the per-item values are kept for paired tests between runs.
- ``redteam``: ``redteam.json`` (overall ASR: ``asr["all"]``, a behaviour counts once when any
  of its attempts succeeded; and the per-attempt success rate ``attempt_success["all"]``), or a
  ``campaign.sqlite`` not yet summarised (its per-attempt success rate over answered attempts,
  read from the store without writing to it).
- ``dpo``: ``metrics.jsonl``, a ``final/`` model or a ``run.json`` record (``alignkit dpo``, the
  pipeline's ``train/round-N``). Figures: the last logged training loss and the last reward
  accuracy (held-out ``eval/rewards/accuracies`` where logged, else the training one); the log
  has no n, so these carry no interval.
- ``pipeline``: ``pipeline.json`` (``alignkit demo`` / ``pipeline``); its ``evaluate/change.json``
  (every headline figure before and after the loop, with the paired test) is kept.

Time: ``eval.json``'s ``created`` (a pipeline: the newest of its ``baseline/`` and
``evaluate/`` runs'); otherwise the modification time of the run's main file. A run whose files
cannot be read is returned with ``error`` set (the reason, one line), never raised.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.errors import DataError

KINDS = ("pipeline", "eval", "redteam", "dpo")
EVAL_FILES = ("eval.json", "eval_items.jsonl")
REDTEAM_FILES = ("redteam.json", "campaign.sqlite")
DPO_FILES = ("metrics.jsonl", "final", "run.json")
# folders inside a run that hold models, checkpoints or logs, never another run
SKIP_DIRS = frozenset(
    {
        "final",
        "sft",
        "checkpoints",
        "tensorboard",
        "wandb",
        "mlruns",
        "selection",
        "cost_model",
        "__pycache__",
    }
)
ROLES = {"baseline": "pipeline baseline", "evaluate": "pipeline trained"}


@dataclass
class RunInfo:
    """One run: where it is, what it is, its model, its time and its figures.

    ``figures`` maps a metric name (:data:`alignkit.runs.trend.METRICS`) to
    ``{"value", "low", "high", "n"}`` (low / high / n are None where the run records no
    interval); ``items`` maps an eval run's metric to its per-item values ``{item id: value}``;
    ``change`` is a pipeline's before/after table; ``error`` says why an unreadable run could
    not be read (its figures are then empty)."""

    path: Path
    kind: str
    model: str | None = None
    time: dt.datetime | None = None
    time_source: str = "mtime"
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    items: dict[str, dict[str, float]] = field(default_factory=dict)
    change: dict[str, Any] = field(default_factory=dict)
    role: str | None = None
    error: str | None = None

    @property
    def readable(self) -> bool:
        """Whether the run's files were read."""
        return self.error is None

    @property
    def time_text(self) -> str:
        """The run's time as ``YYYY-MM-DD HH:MM:SS`` (UTC), or ``unknown``."""
        return self.time.strftime("%Y-%m-%d %H:%M:%S") if self.time else "unknown"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (per-item values left out)."""
        return {
            "path": str(self.path), "kind": self.kind, "model": self.model,
            "time": self.time.isoformat() if self.time else None, "time_text": self.time_text,
            "time_source": self.time_source, "role": self.role, "figures": self.figures,
            "change": self.change, "error": self.error,
        }  # fmt: skip


def _mtime(path: Path) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
    except OSError:
        return None


def parse_created(value: Any) -> dt.datetime | None:
    """An ISO-8601 time such as ``2026-12-05T17:02:25Z`` as an aware UTC datetime (a time
    without zone is taken as UTC); None when ``value`` is not such a string."""
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=dt.timezone.utc) if parsed.tzinfo is None else parsed


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; DataError (naming the file) when it is unreadable, not JSON
    or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc.__class__.__name__})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def point(value: Any, low: Any = None, high: Any = None, n: Any = None) -> dict[str, Any]:
    """A figure ``{"value", "low", "high", "n"}``: numbers kept, anything else (NaN, strings)
    as None."""

    def number(x: Any) -> float | None:
        ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
        return float(x) if ok else None

    count = n if isinstance(n, int) and not isinstance(n, bool) else None
    return {"value": number(value), "low": number(low), "high": number(high), "n": count}


def estimate_point(estimate: Any) -> dict[str, Any] | None:
    """An Estimate dict (``value``/``low``/``high``/``n``) as a figure; None if it is not one."""
    if not isinstance(estimate, dict) or "value" not in estimate:
        return None
    return point(estimate.get("value"), estimate.get("low"), estimate.get("high"),
                 estimate.get("n"))  # fmt: skip


# ------------------------------------------------------------------------------- the kinds


def read_eval(path: Path) -> RunInfo:
    """An ``alignkit eval`` run: the headline figures of its first scorer, with the items."""
    from alignkit.evaluation.rundir import load_run
    from alignkit.pipeline.headline import item_scores

    run = RunInfo(path, "eval", role=ROLES.get(path.name) if _in_pipeline(path) else None)
    for name in EVAL_FILES:
        if not (path / name).is_file():
            raise DataError(f"{path / name}: missing (an eval run has {' and '.join(EVAL_FILES)})")
    data = load_run(path)  # checks the JSON, the item ids and the estimates
    scorers = data.eval.get("scorers")
    if not isinstance(scorers, list) or not scorers or not isinstance(scorers[0], str):
        raise DataError(f"{path / 'eval.json'}: field 'scorers' must be a non-empty list of names")
    run.model = data.model
    run.time = parse_created(data.eval.get("created"))
    run.time_source = "created" if run.time else "mtime"
    run.time = run.time or _mtime(path / "eval.json")
    try:
        run.items = {k: v for k, v in item_scores(data.items, scorers[0]).items() if v}
        run.figures = {name: estimate_values(values) for name, values in run.items.items()}
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path / 'eval_items.jsonl'}: a score is not a number ({exc})") from None
    return run


def estimate_values(values: dict[str, float]) -> dict[str, Any]:
    """The mean of per-item values with :func:`~alignkit.evaluation.stats.estimate`'s 95%
    interval (a score interval for 0/1 values, BCa otherwise) and n, as a figure."""
    from alignkit.evaluation.stats import estimate

    est = estimate([float(v) for v in values.values()]).to_dict()
    return point(est["value"], est["low"], est["high"], est["n"])


def _in_pipeline(path: Path) -> bool:
    return (path.parent / "pipeline.json").is_file()


def _redteam_model(config: Any) -> str | None:
    target = config.get("target") if isinstance(config, dict) else None
    return target if isinstance(target, str) else None


def read_redteam(path: Path) -> RunInfo:
    """A red-team run: overall ASR and per-attempt success from ``redteam.json``, or the
    per-attempt success of a campaign store that has no summary yet."""
    run = RunInfo(path, "redteam")
    summary = path / "redteam.json"
    if not summary.is_file():
        return _read_campaign(run, path / "campaign.sqlite")
    data = read_json_object(summary)
    run.model = _redteam_model(data.get("config"))
    run.time = _mtime(summary)
    for name, key in (("redteam_asr", "asr"), ("redteam_attempt_success", "attempt_success")):
        section = data.get(key)
        figure = estimate_point(section.get("all")) if isinstance(section, dict) else None
        if section is not None and figure is None:
            raise DataError(f"{summary}: field '{key}.all' must be an estimate")
        if figure is not None:
            run.figures[name] = figure
    return run


def _read_campaign(run: RunInfo, store: Path) -> RunInfo:
    """Answered attempts and successes counted in a campaign store opened read-only."""
    from alignkit.evaluation.stats import proportion_ci

    try:
        db = sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True)
        try:
            answered, successes = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(success), 0) FROM attempts "
                "WHERE response IS NOT NULL AND error IS NULL"
            ).fetchone()
            row = db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
        finally:
            db.close()
        config = json.loads(row[0]) if row else None
    except (sqlite3.Error, ValueError) as exc:
        raise DataError(f"{store}: unreadable campaign store ({exc})") from None
    run.model = _redteam_model(config)
    run.time = _mtime(store)
    est = proportion_ci(int(successes), int(answered)).to_dict()
    run.figures["redteam_attempt_success"] = point(est["value"], est["low"], est["high"],
                                                   est["n"])  # fmt: skip
    return run


def _last(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> float | None:
    """The last finite value of the first of ``keys`` that any row logs."""
    for key in keys:
        values = [point(r.get(key))["value"] for r in rows if key in r]
        values = [v for v in values if v is not None]
        if values:
            return values[-1]
    return None


def read_dpo(path: Path) -> RunInfo:
    """A DPO run: its base model (``run.json``), last training loss and reward accuracy."""
    from alignkit.evaluation.rundir import load_run

    run = RunInfo(path, "dpo")
    record = read_json_object(path / "run.json") if (path / "run.json").is_file() else {}
    settings = record.get("settings")
    model = settings.get("model") if isinstance(settings, dict) else None
    run.model = model if isinstance(model, str) else None
    rows = load_run(path).training if (path / "metrics.jsonl").is_file() else []
    summary = path / "summary.json"
    if summary.is_file():
        metrics = read_json_object(summary).get("metrics")
        rows = [*rows, metrics] if isinstance(metrics, dict) else rows
    for name, keys in (
        ("dpo_loss", ("loss",)),
        ("reward_accuracy", ("eval/rewards/accuracies", "rewards/accuracies")),
    ):
        value = _last(rows, keys)
        if value is not None:
            run.figures[name] = point(value)
    main = [path / n for n in ("summary.json", "metrics.jsonl", "run.json", "final")]
    run.time = next((_mtime(p) for p in main if p.exists()), None)
    return run


def read_pipeline(path: Path) -> RunInfo:
    """A demo / pipeline run: its model, time and before/after table (``evaluate/change.json``)."""
    config = read_json_object(path / "pipeline.json")
    model = config.get("model")
    run = RunInfo(path, "pipeline", model=model if isinstance(model, str) else None)
    change_file = path / "evaluate" / "change.json"
    if change_file.is_file():
        run.change = {k: v for k, v in read_json_object(change_file).items()
                      if isinstance(v, dict)}  # fmt: skip
    times = []
    for stage in ROLES:
        try:
            times.append(parse_created(read_json_object(path / stage / "eval.json")["created"]))
        except (DataError, KeyError):
            continue
    times = [t for t in times if t is not None]
    run.time_source = "created" if times else "mtime"
    run.time = max(times) if times else _mtime(path / "pipeline.json")
    return run


# ----------------------------------------------------------------------------- the walk

READERS = {"pipeline": read_pipeline, "eval": read_eval, "redteam": read_redteam,
           "dpo": read_dpo}  # fmt: skip


def run_kinds(path: Path, names: set[str]) -> list[str]:
    """The kinds of run a folder holding the entries ``names`` is, in :data:`KINDS` order."""
    found = {
        "pipeline": "pipeline.json" in names,
        "eval": bool(names.intersection(EVAL_FILES)),
        "redteam": bool(names.intersection(REDTEAM_FILES)),
        "dpo": "metrics.jsonl" in names or (path / "final").is_dir()
        or ("run.json" in names and not names.intersection(EVAL_FILES)),
    }  # fmt: skip
    return [kind for kind in KINDS if found[kind]]


def read_kind(path: Path, kind: str) -> RunInfo:
    """The run of ``kind`` in ``path``; an unreadable one comes back with ``error`` set."""
    try:
        return READERS[kind](path)
    except DataError as exc:
        return RunInfo(path, kind, time=_mtime(path), error=exc.message)
    except Exception as exc:  # noqa: BLE001 (a listing reports any bad file, never crashes)
        reason = " ".join(str(exc).split())[:300]
        return RunInfo(
            path, kind, time=_mtime(path), error=f"{path}: {type(exc).__name__}: {reason}"
        )


def read_dir(path: str | Path) -> list[RunInfo]:
    """Every run held by the folder ``path`` itself (not below it); empty if it holds none."""
    path = Path(path)
    try:
        names = {p.name for p in path.iterdir()}
    except OSError:
        return []
    return [read_kind(path, kind) for kind in run_kinds(path, names)]


def find_runs(directory: str | Path = "runs") -> list[RunInfo]:
    """Every run in and below ``directory`` (links not followed; model, checkpoint and log
    folders not entered), sorted by path then kind. DataError when ``directory`` is not a
    folder."""
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"runs: {str(root)!r} is not a directory")
    runs: list[RunInfo] = []
    for folder, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        runs.extend(read_dir(folder))
    return sorted(runs, key=lambda r: (str(r.path), KINDS.index(r.kind)))
