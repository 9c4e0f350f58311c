"""Reading a run directory (what ``alignkit eval`` and ``alignkit dpo`` write) for reports.

:func:`load_run` reads every file of the layout it finds (``eval.json``, ``eval_items.jsonl``,
``preference.json``, ``multi_objective.json``, ``mc.json``, ``metrics.jsonl``, ``redteam.json``)
into a :class:`RunData`. A missing or unreadable directory, one with none of the result files,
or a malformed file raises :class:`~alignkit.errors.DataError` naming the path (and line).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.atomic import write_text  # noqa: F401 (re-exported: the one atomic writer)
from alignkit.errors import DataError

# name in RunData -> file name; at least one of RESULT_FILES must exist in a run directory
JSON_FILES = {
    "eval": "eval.json",
    "preference": "preference.json",
    "multi_objective": "multi_objective.json",
    "mc": "mc.json",
    "redteam": "redteam.json",
}
RESULT_FILES = (
    "eval.json",
    "preference.json",
    "multi_objective.json",
    "mc.json",
    "metrics.jsonl",
    "redteam.json",
)
ESTIMATE_KEYS = ("value", "low", "high", "n")


@dataclass
class RunData:
    """Everything a run directory holds; sections whose file is absent are None (or empty)."""

    path: Path
    eval: dict[str, Any] | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    preference: dict[str, Any] | None = None
    multi_objective: dict[str, Any] | None = None
    mc: dict[str, Any] | None = None
    redteam: dict[str, Any] | None = None
    training: list[dict[str, Any]] = field(default_factory=list)

    @property
    def model(self) -> str | None:
        """The evaluated model string, from the first result that names one."""
        for section in (self.eval, self.preference, self.mc, self.redteam):
            if section and isinstance(section.get("model"), str):
                return section["model"]
        return None

    @property
    def suite(self) -> str | None:
        """The eval suite name (from eval.json), or None."""
        return self.eval.get("suite") if self.eval else None

    def to_dict(self) -> dict[str, Any]:
        """The loaded data as plain JSON-ready values (item rows are left out; see reports)."""
        return {
            "run_dir": str(self.path),
            "model": self.model,
            **{name: getattr(self, name) for name in JSON_FILES},
            "n_items": len(self.items),
            "training": self.training,
        }


def is_estimate(value: Any) -> bool:
    """Whether ``value`` is an Estimate dict (``value``/``low``/``high``/``n``)."""
    return isinstance(value, dict) and all(key in value for key in ESTIMATE_KEYS)


def as_float(value: Any) -> float:
    """A JSON number as a float (None and non-numbers become NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None, so it is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as strict JSON (NaN becomes null), atomically."""
    write_text(path, json.dumps(json_safe(data), indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write one strict-JSON line per row, atomically."""
    write_text(path, "".join(json.dumps(json_safe(r), ensure_ascii=False) + "\n" for r in rows))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc}") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {number}: invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object")
        rows.append(row)
    return rows


def _check_items(path: Path, rows: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        item_id = row.get("id")
        if not isinstance(item_id, str) or not item_id:
            raise DataError(f"{path}, row {number}: field 'id' must be a non-empty string")
        if item_id in seen:
            raise DataError(f"{path}, row {number}: duplicate item id {item_id!r}")
        seen.add(item_id)
        if not isinstance(row.get("scores", {}), dict):
            raise DataError(f"{path}, row {number}: field 'scores' must be an object")


def _check_estimates(path: Path, section: dict[str, Any], name: str) -> None:
    value = section.get(name)
    if value is None:
        return
    if not isinstance(value, dict):
        raise DataError(f"{path}: field {name!r} must be an object")
    for key, estimate in value.items():
        if not is_estimate(estimate):
            raise DataError(
                f"{path}: field {name}.{key} must be an estimate with keys {list(ESTIMATE_KEYS)}"
            )


def load_run(run_dir: str | Path) -> RunData:
    """Read the run directory ``run_dir``; raise DataError if it is missing or malformed."""
    path = Path(run_dir)
    if not path.exists():
        raise DataError(f"run directory {str(path)!r} not found")
    if not path.is_dir():
        raise DataError(f"run directory {str(path)!r} is not a directory")
    try:
        present = {p.name for p in path.iterdir()}
    except OSError as exc:
        raise DataError(f"cannot read run directory {str(path)!r}: {exc}") from None
    if not present.intersection(RESULT_FILES):
        raise DataError(
            f"run directory {str(path)!r} has none of {', '.join(RESULT_FILES)}; "
            "is it the output of 'alignkit eval', 'alignkit dpo' or 'alignkit redteam run'?"
        )
    run = RunData(path=path)
    for name, filename in JSON_FILES.items():
        if filename in present:
            setattr(run, name, _read_json(path / filename))
    if "eval_items.jsonl" in present:
        run.items = _read_jsonl(path / "eval_items.jsonl")
        _check_items(path / "eval_items.jsonl", run.items)
    if "metrics.jsonl" in present:
        run.training = _read_jsonl(path / "metrics.jsonl")
    if run.eval is not None:
        _check_estimates(path / "eval.json", run.eval, "metrics")
    if run.redteam is not None:
        _check_estimates(path / "redteam.json", run.redteam, "asr")
    return run
