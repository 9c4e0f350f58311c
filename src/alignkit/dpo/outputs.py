"""The output directory of a DPO run: checked before any model is loaded, one run per directory.

``alignkit dpo`` (:meth:`~alignkit.dpo.pipeline.DPOPipeline.run`) keeps one run per directory:

- A directory holding another run's files (:data:`RUN_FILES`) is refused unless ``resume``
  (continue that run) or ``overwrite`` (remove those files, and only those, then start afresh;
  anything else in the directory, such as a data file or a config, is left alone).
- ``resume`` is refused when the saved run (``run.json``, :func:`write_record`) had another total
  (``max_steps`` / ``epochs``) or other settings (:func:`run_settings`: the data's content, the
  model, the loss, the optimiser, ...); a finished run (``summary.json``) is reported finished.
- An output path that is a file, lies under a file, or cannot be created or written
  (``/proc/x``) is refused.

The checks write nothing until they have passed, so a refused command leaves the directory as it
was; all of them fail as one :class:`~alignkit.errors.ConfigError` (one line, exit 2).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from alignkit.atomic import check_writable_dir, write_text
from alignkit.errors import ConfigError
from alignkit.tracking import DIRECTORIES as TRACKER_FILES

RECORD = "run.json"
SUMMARY = "summary.json"
# what a run writes; their presence means the directory holds a run (run.json alone does not:
# a run stopped before its first metric row or checkpoint has nothing to continue or to lose)
RUN_FILES = (
    "metrics.jsonl", "checkpoints", "final", "sft", SUMMARY, "selection.json", "selection",
    *TRACKER_FILES,
)  # fmt: skip
# leftovers of a run killed while writing a model (DPOPipeline, DPOTrainer.save_model, replace_dir)
TEMPORARY = (".final.*.tmp", ".sft.*.tmp", "final.old", "sft.old")
# options that do not change what is trained (where, how often and on what device it is written
# or evaluated); the total (max_steps / epochs) is compared on its own
UNCHECKED = frozenset(
    {
        "output_dir", "resume", "overwrite", "max_steps", "epochs", "save_steps",
        "eval_steps", "logging_steps", "tensorboard", "report_to", "eval_data", "kl_samples",
        "device", "trust_remote_code", "gradient_checkpointing", "select_eta", "prefix_sharing",
        "compile", "attn_implementation",
    }
)  # fmt: skip


def is_main_process() -> bool:
    """Whether this is the first process of a launch (``torchrun`` / ``accelerate launch`` set
    ``RANK``), or the only one; it alone checks and writes the directory before training."""
    return os.environ.get("RANK", "0") == "0"


# ------------------------------------------------------------------------------ the location


# ---------------------------------------------------------------------- what a run is made of


def run_files(out: Path) -> list[str]:
    """The names of the run files in ``out`` (empty if none, or if ``out`` does not exist)."""
    out = Path(out)
    return [name for name in RUN_FILES if (out / name).exists() or (out / name).is_symlink()]


def clear_run(out: Path) -> None:
    """Remove the run files of ``out`` (:data:`RUN_FILES`, ``run.json`` and half-written
    leftovers) and nothing else; a link among them is removed, never followed."""
    out = Path(out)
    paths = [out / name for name in (*RUN_FILES, RECORD)]
    paths += [p for pattern in TEMPORARY for p in out.glob(pattern)]
    for path in paths:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        except OSError as exc:
            raise ConfigError(f"cannot remove the previous run's {str(path)!r}: {exc}") from None


def data_digest(path: Path | str | None) -> str | None:
    """SHA-256 of the data's bytes (of every file, by relative path, for a directory); None
    when there is no data path or nothing is there (the data loader then names the problem)."""
    if path is None:
        return None
    path = Path(path)
    if path.is_file():
        files = [(path.name, path)]
    elif path.is_dir():
        files = [(str(p.relative_to(path)), p) for p in sorted(path.rglob("*")) if p.is_file()]
    else:
        return None
    digest = hashlib.sha256()
    for name, file in files:
        digest.update(name.encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def run_settings(config) -> dict[str, Any]:
    """The settings that decide what a run trains: every option of ``config`` but
    :data:`UNCHECKED` ones, with ``data`` as its content's digest (a moved but identical file is
    the same data, a rewritten one is not) and a model inside the run's own folder (the SFT
    stage's) named relative to it, so that a run folder moved or copied elsewhere resumes."""
    settings = {
        key: value for key, value in config.model_dump(mode="json").items() if key not in UNCHECKED
    }
    settings["data"] = data_digest(config.data)
    settings["model"] = _model_in_run(config.model, config.output_dir)
    return settings


def _model_in_run(model: str, output_dir: str | Path | None) -> str:
    """``hf:<run>/sft`` for ``hf:OUTPUT_DIR/sft``; any other model string as it is."""
    if output_dir is None or not model.startswith("hf:"):
        return model
    try:
        inside = Path(model[3:]).resolve().relative_to(Path(output_dir).resolve())
    except ValueError:
        return model
    return f"hf:<run>/{inside.as_posix()}"


def _older_run_model(saved: str, now: str) -> bool:
    """Whether ``saved`` is how alignkit before 2026-12-07 recorded ``now``, a model inside the
    run's folder: by its absolute path (``hf:/runs/a/sft`` for ``hf:<run>/sft``)."""
    inside = now.removeprefix("hf:<run>")
    return inside != now and saved.startswith("hf:/") and saved.endswith(inside)


def total_of(config) -> dict[str, Any]:
    """How long the run trains: ``{"max_steps": N}``, or ``{"epochs": E}`` without max_steps."""
    if config.max_steps is not None:
        return {"max_steps": config.max_steps}
    return {"epochs": config.epochs}


def settings_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The settings that differ, as ``"name saved, not now"`` (``data`` by content); a setting
    unknown to one side (another alignkit version) or unreadable data is not compared."""
    changes = []
    for key in sorted(set(saved) & set(now)):
        if saved[key] == now[key] or (key == "data" and now[key] is None):
            continue
        if key == "model" and _older_run_model(saved[key], now[key]):
            continue
        if key == "data":
            changes.append("data: its content changed")
        else:
            changes.append(f"{key} {saved[key]!r}, not {now[key]!r}")
    return changes


def _describe(total: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in total.items())


# ------------------------------------------------------------------------------- the record


def read_record(out: Path) -> dict[str, Any] | None:
    """The saved ``run.json`` of ``out``, or None if there is none."""
    path = Path(out) / RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable run record ({exc}); use --overwrite") from None
    return record if isinstance(record, dict) else None


def write_record(out: Path, config) -> None:
    """Save ``config``'s total and settings as ``out/run.json`` (atomically)."""
    record = {"total": total_of(config), "settings": run_settings(config)}
    write_text(Path(out) / RECORD, json.dumps(record, indent=2) + "\n")


def check_resumable(out: Path, config) -> None:
    """Refuse to resume the run in ``out`` with another total or other settings than it was
    started with (a run without a record, from an older alignkit, is not compared)."""
    record = read_record(out)
    if record is None:
        return
    saved_total, total = record.get("total"), total_of(config)
    if saved_total and saved_total != total:
        raise ConfigError(
            f"cannot resume {str(out)!r}: its run was started with {_describe(saved_total)}, not "
            f"{_describe(total)}; resume with the same total, or start over with --overwrite"
        )
    changes = settings_changes(record.get("settings") or {}, run_settings(config))
    if changes:
        raise ConfigError(
            f"cannot resume {str(out)!r}: its run was started with other settings "
            f"({'; '.join(changes)}); resume with the same settings, or start over with "
            "--overwrite"
        )


def check_output_dir(config, *, require_run: bool = False) -> str:
    """Check ``config.output_dir`` before any model is loaded; writes nothing but the empty
    directory itself. Returns what to do there: ``"fresh"`` (no run yet), ``"overwrite"`` (the
    caller clears the previous run with :func:`clear_run` when it starts), ``"resume"``,
    ``"finished"`` (resume of a run that has finished) or ``"skip"`` (a process other than the
    first of a launch: the first one checks and writes).

    ``resume`` into a directory without a run starts one, unless ``require_run`` (``--resume``
    given on the command line), which refuses it.
    """
    out = Path(config.output_dir)
    check_writable_dir(out)
    if config.resume and config.overwrite:
        raise ConfigError("give --resume (continue the run) or --overwrite (replace it), not both")
    found = run_files(out)
    if not is_main_process():
        return "finished" if config.resume and found and (out / SUMMARY).exists() else "skip"
    if not found:
        if config.resume and require_run:
            raise ConfigError(
                f"nothing to resume: {str(out)!r} holds no alignkit dpo run; drop --resume to "
                "start one there"
            )
        return "fresh"
    if config.overwrite:
        return "overwrite"
    if not config.resume:
        raise ConfigError(
            f"output_dir {str(out)!r} holds another run ({', '.join(found)}); pass --resume to "
            "continue it or --overwrite to replace it, or give another --output-dir"
        )
    check_resumable(out, config)
    if (out / SUMMARY).exists():
        return "finished"
    return "resume"
