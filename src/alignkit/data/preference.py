"""Load preference data from files, validate every record, and report what was kept.

    examples, report = load_preferences("prefs.jsonl")              # stops at the first bad record
    examples, report = load_preferences("prefs.jsonl", on_bad_record="skip")
    print(report.summary())   # prefs.jsonl: 100 read, 97 loaded (standard 97), 3 skipped (...)

File types (:data:`FILE_TYPES`): JSON Lines (``.jsonl``, ``.ndjson``), JSON (``.json``: a list of
records, ``{"data": [...]}``, or JSON Lines as ``Dataset.to_json`` writes them), Parquet
(``.parquet``, ``.pq``), CSV (``.csv``), those text files gzip-compressed (``.jsonl.gz`` as
HH-RLHF ships, ``.json.gz``, ``.ndjson.gz``, ``.csv.gz``), and a directory written by ``datasets``'
``save_to_disk`` (a ``Dataset``, or a ``DatasetDict``: its ``train`` split, or the split named
as ``DIR::SPLIT``). Record layouts are described in :mod:`alignkit.data.records`.

In a CSV file a cell of ``prompt`` / ``chosen`` / ``rejected`` / ``responses`` that holds a JSON
list of ``{role, content}`` messages is read as messages; ``responses``, ``ranking``, ``ranks``
and ``scores`` cells are JSON lists, and ``*harm_category`` cells dicts. A cell that is not JSON
but a Python repr (pandas / ``datasets`` ``to_csv``: ``{'Violence': False}``, single-quoted
messages) is read with ``ast.literal_eval`` (:func:`alignkit.data.formats.literal_cell`).

Record sources in messages: ``FILE:LINE`` for JSON Lines and CSV (1-based line numbers, as an
editor shows them), ``FILE:record N`` for JSON lists and ``FILE:row N`` for Parquet and
datasets (0-based indices, as ``data[N]`` / ``dataset[N]``).

Bad records raise :class:`~alignkit.errors.DataError` naming file, line and field; with
``on_bad_record="skip"`` they are skipped and counted by reason in :class:`LoadReport`.
A file with no usable record is always an error: nothing is dropped silently.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from alignkit.data.formats import check_pku_preference, literal_cell
from alignkit.data.records import CONVERTED_LAYOUTS, BadRecord, PreferenceExample, parse_record
from alignkit.errors import ConfigError, DataError

OnBadRecord = Literal["error", "skip"]
FILE_TYPES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
}
_GZIP_TYPES = ("jsonl", "json", "csv")  # text files read through gzip as FILE.gz
_ACCEPTED = (
    "JSON Lines (.jsonl), JSON (.json), Parquet (.parquet), CSV (.csv), "
    "those text files gzipped (.jsonl.gz, .json.gz, .csv.gz), "
    "or a directory saved by datasets' save_to_disk"
)
_DATASET_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
_LIST_CELLS = ("responses", "ranking", "ranks", "scores")
_JSON_CELLS = ("prompt", "chosen", "rejected", *_LIST_CELLS)
_DICT_CELL_SUFFIX = "harm_category"  # PKU-SafeRLHF's response_K_harm_category
_SHOWN = 3  # sources listed per reason in the summary


@dataclass
class LoadReport:
    """What happened to every record: read, loaded, skipped, truncated and dropped, by reason.

    ``skipped`` counts records rejected while loading (bad input), ``dropped`` records removed
    while tokenizing (e.g. a prompt longer than ``max_length``), ``truncated`` how many records
    had their prompt / completions shortened, ``adjusted`` non-fatal changes (tied responses
    dropped from a ranked list), ``converted`` records of an upstream layout mapped onto a pair
    (``hh-rlhf``: transcripts split; ``pku-saferlhf/better`` or ``/safer``: ordered by that id).
    ``where`` lists the first few sources for each reason.
    """

    source: str = ""
    read: int = 0
    loaded: int = 0
    formats: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    adjusted: Counter = field(default_factory=Counter)
    converted: Counter = field(default_factory=Counter)
    truncated: Counter = field(default_factory=Counter)
    truncated_records: int = 0
    dropped: Counter = field(default_factory=Counter)
    where: dict[str, list[str]] = field(default_factory=dict)

    def _note(self, reason: str, source: str) -> None:
        shown = self.where.setdefault(reason, [])
        if len(shown) < _SHOWN:
            shown.append(source)

    def skip(self, reason: str, source: str) -> None:
        """Count a record rejected while loading."""
        self.skipped[reason] += 1
        self._note(reason, source)

    def parse(self, record: Any, source: str, on_bad_record: OnBadRecord, parse):
        """``parse(record, source)``, counting the record as read.

        A bad record (a :class:`BadRecord` read error, or one ``parse`` raises) is raised again,
        or with ``on_bad_record="skip"`` counted as skipped and ``None`` returned.
        """
        self.read += 1
        try:
            if isinstance(record, BadRecord):
                raise record
            return parse(record, source)
        except BadRecord as err:
            if on_bad_record == "error":
                raise err from None
            self.skip(err.reason, source)
            return None

    def drop(self, reason: str, source: str) -> None:
        """Count a loaded record removed later (while tokenizing)."""
        self.dropped[reason] += 1
        self._note(reason, source)

    def truncate(self, parts: Iterable[str]) -> None:
        """Count one truncated record and which parts of it ("prompt", "completion") were cut."""
        self.truncated_records += 1
        self.truncated.update(parts)

    @property
    def kept(self) -> int:
        """Records that are loaded and not dropped."""
        return self.loaded - sum(self.dropped.values())

    def _counts(self, counter: Counter) -> str:
        parts = []
        for reason, count in counter.most_common():
            shown = self.where.get(reason, [])
            more = ", ..." if count > len(shown) else ""
            parts.append(f"{reason} {count}" + (f" [{', '.join(shown)}{more}]" if shown else ""))
        return "; ".join(parts)

    def summary(self) -> str:
        """One line: counts of every outcome, with example sources for skips and drops."""
        text = f"{self.source}: {self.read} read, {self.loaded} loaded"
        if self.formats:
            text += f" ({', '.join(f'{k} {v}' for k, v in self.formats.most_common())})"
        if self.converted:
            parts = ", ".join(f"{k} {v}" for k, v in self.converted.most_common())
            text += f", {sum(self.converted.values())} converted ({parts})"
        if self.skipped:
            text += f", {sum(self.skipped.values())} skipped ({self._counts(self.skipped)})"
        if self.adjusted:
            text += f", adjusted ({', '.join(f'{k} {v}' for k, v in self.adjusted.items())})"
        if self.truncated_records:
            parts = ", ".join(f"{k} {v}" for k, v in self.truncated.items())
            text += f", {self.truncated_records} truncated ({parts})"
        if self.dropped:
            text += f", {sum(self.dropped.values())} dropped ({self._counts(self.dropped)})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable counts."""
        return {
            "source": self.source,
            "read": self.read,
            "loaded": self.loaded,
            "kept": self.kept,
            "formats": dict(self.formats),
            "skipped": dict(self.skipped),
            "adjusted": dict(self.adjusted),
            "converted": dict(self.converted),
            "truncated": {"records": self.truncated_records, **self.truncated},
            "dropped": dict(self.dropped),
            "where": {k: list(v) for k, v in self.where.items()},
            "summary": self.summary(),
        }


def check_on_bad_record(value: str) -> None:
    if value not in ("error", "skip"):
        raise ConfigError(f"on_bad_record must be 'error' or 'skip', got {value!r}")


# ---------------------------------------------------------------------------------- readers


def _malformed(source: str, exc: json.JSONDecodeError) -> BadRecord:
    return BadRecord(
        source, None, f"malformed JSON: {exc.msg} (column {exc.colno})", "malformed_json"
    )


def _read_text(path: Path, name: str) -> str:
    """The UTF-8 text of ``path``, decompressed first when its name ends in ``.gz``."""
    try:
        if path.suffix.lower() == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                return handle.read()
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (gzip.BadGzipFile, EOFError) as exc:
        raise DataError(f"{name}: not a complete gzip file ({exc})") from None
    except OSError as exc:
        raise DataError(f"{name}: cannot read the file ({exc.strerror})") from None


def _jsonl_records(text: str, name: str) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        source = f"{name}:{number}"
        try:
            yield source, json.loads(line)
        except json.JSONDecodeError as exc:
            yield source, _malformed(source, exc)


def _json_records(text: str, name: str) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # JSON Lines in a .json file (what Dataset.to_json writes)
            yield from _jsonl_records(text, name)
            return
        raise DataError(
            f"{name}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if isinstance(data, dict) and any(k in data for k in ("chosen", "responses")):
        data = [data]  # a file holding one record
    if not isinstance(data, list):
        raise DataError(f'{name}: expected a JSON list of records or {{"data": [...]}}')
    for i, record in enumerate(data):
        yield f"{name}:record {i}", record


def _csv_cell(key: str, value: Any) -> Any:
    """Decode a CSV cell that holds JSON or a Python repr: messages, a list of responses /
    numbers, or a ``*harm_category`` dict; other cells are returned unchanged."""
    if not isinstance(value, str):
        return value
    if key.endswith(_DICT_CELL_SUFFIX):
        decoded = literal_cell(value)
        return decoded if isinstance(decoded, dict) else value
    if key not in _JSON_CELLS:
        return value
    if value == "" and key in _LIST_CELLS:
        return None  # an empty cell of a column this row does not use
    if not value.strip().startswith("["):
        return value
    decoded = literal_cell(value)
    if not isinstance(decoded, list):
        return value
    if key in _LIST_CELLS:
        return decoded
    is_messages = (
        isinstance(decoded, list)
        and decoded
        and all(isinstance(m, dict) and "role" in m for m in decoded)
    )
    return decoded if is_messages else value


def _csv_records(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    text = _read_text(path, name)
    reader = csv.DictReader(text.splitlines(keepends=True))
    if not reader.fieldnames:
        return
    try:
        for row in reader:
            record = {k: _csv_cell(k, v) for k, v in row.items() if k is not None}
            yield f"{name}:{reader.line_num}", record
    except csv.Error as exc:
        raise DataError(f"{name}:{reader.line_num}: malformed CSV: {exc}") from None


def _parquet_records(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(f"{name}: unreadable Parquet file: {str(exc).splitlines()[0]}") from None
    for i, row in enumerate(rows):
        yield f"{name}:row {i}", row


def _dataset_records(path: Path, split: str | None, name: str) -> Iterator[tuple[str, Any]]:
    import datasets

    if not any((path / marker).exists() for marker in _DATASET_MARKERS):
        raise DataError(f"{name}: a directory not saved by datasets; accepted: {_ACCEPTED}")
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises several types for damaged directories
        raise DataError(f"{name}: cannot load the dataset: {str(exc).splitlines()[0]}") from None
    if isinstance(loaded, datasets.DatasetDict):
        split = split or "train"
        if split not in loaded:
            available = ", ".join(loaded)
            raise DataError(f"{name}: no split {split!r}; available: {available} (use DIR::SPLIT)")
        loaded = loaded[split]
        name = f"{name}::{split}"
    elif split is not None:
        raise DataError(f"{name}: holds a single dataset, not splits; drop '::{split}'")
    for i, row in enumerate(loaded):
        yield f"{name}:row {i}", row


def _file_type(file: Path) -> str | None:
    """The kind of ``file`` from its suffix (:data:`FILE_TYPES`); ``FILE.EXT.gz`` is the kind of
    ``.EXT`` for the text kinds, None for an unknown suffix."""
    suffixes = [s.lower() for s in file.suffixes]
    if suffixes[-1:] == [".gz"]:
        kind = FILE_TYPES.get(suffixes[-2]) if len(suffixes) > 1 else None
        return kind if kind in _GZIP_TYPES else None
    return FILE_TYPES.get(file.suffix.lower())


def read_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(source, record)`` for every record of a file or dataset directory.

    A malformed JSON line is yielded as a :class:`BadRecord` instance in place of the record,
    so the caller can skip it; problems with the file as a whole raise ``DataError``.
    """
    name, split = str(path), None
    if "::" in name:
        name, split = name.rsplit("::", 1)
    file = Path(name).expanduser()
    if not file.exists():
        raise DataError(f"{name}: no such file or directory")
    if file.is_dir():
        yield from _dataset_records(file, split, name)
        return
    if split is not None:
        raise DataError(f"{name}: '::{split}' names a split, which only dataset directories have")
    kind = _file_type(file)
    if kind is None:
        raise DataError(
            f"{name}: unknown file type {file.suffix or '(none)'!r}; accepted: {_ACCEPTED}"
        )
    if kind == "parquet":
        yield from _parquet_records(file, name)
    elif kind == "csv":
        yield from _csv_records(file, name)
    else:
        text = _read_text(file, name)
        yield from (_jsonl_records if kind == "jsonl" else _json_records)(text, name)


# ---------------------------------------------------------------------------------- loading


def _converted_as(layout: str, pku_preference: str) -> str | None:
    """The ``LoadReport.converted`` key of a record of ``layout`` (None: not converted)."""
    if layout not in CONVERTED_LAYOUTS:
        return None
    return f"{layout}/{pku_preference}" if layout == "pku-saferlhf" else layout


def _collect(
    items: Iterable[tuple[str, Any]],
    report: LoadReport,
    on_bad_record: OnBadRecord,
    pku_preference: str = "better",
) -> list[PreferenceExample]:
    def parse(record: Any, source: str):
        return parse_record(record, source, pku_preference)

    examples = []
    for source, record in items:
        parsed = report.parse(record, source, on_bad_record, parse)
        if parsed is None:
            continue
        example, layout, notes = parsed
        report.loaded += 1
        report.formats[layout] += 1
        report.adjusted.update(notes)
        converted = _converted_as(layout, pku_preference)
        if converted:
            report.converted[converted] += 1
        examples.append(example)
    if not examples:
        raise DataError(f"no usable preference records in {report.summary()}")
    return examples


def load_preferences(
    path: str | Path, on_bad_record: OnBadRecord = "error", pku_preference: str = "better"
) -> tuple[list[PreferenceExample], LoadReport]:
    """Read and validate every preference record of ``path``.

    Returns the examples (completions ordered best -> worst) and a :class:`LoadReport`.
    With ``on_bad_record="error"`` the first bad record raises ``DataError``; with ``"skip"``
    bad records are skipped and counted by reason. No usable record at all raises.
    ``pku_preference`` orders PKU-SafeRLHF records by ``better_response_id`` (``"better"``) or
    ``safer_response_id`` (``"safer"``).
    """
    check_on_bad_record(on_bad_record)
    check_pku_preference(pku_preference)
    report = LoadReport(source=str(path))
    return _collect(read_records(path), report, on_bad_record, pku_preference), report


def parse_records(
    records: Iterable[Any],
    on_bad_record: OnBadRecord = "error",
    name: str = "records",
    pku_preference: str = "better",
) -> tuple[list[PreferenceExample], LoadReport]:
    """Validate in-memory records (dicts in any accepted layout); sources are ``NAME:record N``.
    ``pku_preference`` as for :func:`load_preferences`."""
    check_on_bad_record(on_bad_record)
    check_pku_preference(pku_preference)
    report = LoadReport(source=name)
    items = ((f"{name}:record {i}", r) for i, r in enumerate(records))
    return _collect(items, report, on_bad_record, pku_preference), report
