"""Experiment tracking: ``report_to`` (``--report-to tensorboard|wandb|mlflow|none``) for every
command that trains (DPO, SFT, reward and cost models, CAI, safety training, the pipeline).

The trackers are accelerate's (:mod:`accelerate.tracking`); this module only chooses where each
writes, keeps a run resumable and turns alignkit's figures into what the trackers accept:

- **tensorboard**: event files in ``DIR/tensorboard/NAME`` (``tensorboard --logdir DIR``);
- **wandb**: online when ``WANDB_API_KEY`` is set or ``WANDB_MODE`` says so, else *offline* into
  ``DIR/wandb`` (upload later with ``wandb sync DIR/wandb/offline-run-*``); ``WANDB_PROJECT``
  (default ``alignkit``), ``WANDB_ENTITY`` and ``WANDB_RUN_GROUP`` are read by W&B itself;
- **mlflow**: the server or store in ``MLFLOW_TRACKING_URI``, else a file store in
  ``DIR/mlruns`` (``mlflow ui --backend-store-uri DIR/mlruns``); experiment
  ``MLFLOW_EXPERIMENT_NAME`` or ``alignkit``.

A run killed and resumed logs into the same W&B and MLflow run: their ids are kept in
``DIR/tracking.json``. Only numbers are logged as metrics (a nested dict becomes
``a/b/c``; names are reduced to the characters MLflow allows, the same name in every tracker);
the config is logged flat, lists and other values as text. A tracker that fails while logging
is reported once (a line on stderr) and left out of the rest of the run rather than ending the
training. Keys come only from the environment (the trackers' own variables) and are never
logged.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator

from alignkit.errors import ConfigError

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # -> module
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny"}
DIRECTORIES = ("tensorboard", "wandb", "mlruns", "tracking.json")  # what trackers write in DIR
IDS_FILE = "tracking.json"
_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")
_ANNOUNCED: set[tuple[str, Path]] = set()  # (tracker, directory) already shown to the user


def check_report_to(value: Any) -> list[str]:
    """``report_to`` as a list of tracker names: a list or a comma-separated string; ``none``
    (alone) is no tracker. Unknown names and trackers whose package is missing are errors, so a
    run fails before any model is loaded."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    names: list[str] = []
    for item in items:
        for name in str(item).split(","):
            name = name.strip().lower()
            if name and name not in names:
                names.append(name)
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(
            f"unknown tracker {unknown[0]!r}; choose from {', '.join(TRACKERS)} or none"
        )
    for name in names:
        if importlib.util.find_spec(TRACKERS[name]) is None:
            package = PACKAGES[name]
            raise ValueError(f"{name} needs the {package} package: pip install {package}")
    return names


ReportTo = Annotated[list[str], BeforeValidator(check_report_to)]
REPORT_TO_HELP = (
    "Log metrics, config and final figures to these trackers: tensorboard, wandb (offline "
    "without WANDB_API_KEY), mlflow (a file store in the output directory without "
    "MLFLOW_TRACKING_URI), or none; repeat the option or separate with commas."
)


def numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of ``values`` (nested dicts joined with ``/``), names made safe for
    every tracker; booleans become 0/1, infinities and other types are left out."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = _NAME.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping):
            out |= numbers(value, name + "/")
        elif hasattr(value, "item") and callable(value.item):  # a 0-d tensor or numpy scalar
            value = value.item()
        if isinstance(value, (int, float)) and not math.isinf(value):  # bool is an int
            out[name] = float(value)
    return out


def flat_config(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``values`` flat (``a/b``), each value a bool, int, float or string (what TensorBoard's
    hparams and MLflow's params accept)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = _NAME.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping):
            out |= flat_config(value, name + "/")
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out


def remove_tracking(directory: Path) -> None:
    """Remove what the trackers wrote in ``directory`` (an earlier run there being replaced)."""
    import shutil

    for name in DIRECTORIES:
        path = directory / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextmanager
def _accelerate_state() -> Iterator[None]:
    """accelerate's trackers log through accelerate's logger, which needs its process state.
    Code without an ``Accelerator`` (the stages that only log) gets a CPU state for the call
    only, so that a later ``Accelerator`` still picks its own device."""
    from accelerate.state import PartialState

    if PartialState._shared_state:
        yield
        return
    PartialState(cpu=True)
    try:
        yield
    finally:
        PartialState._reset_state()


def _wandb_mode() -> str | None:
    """``WANDB_MODE``, or ``offline`` when neither it nor ``WANDB_API_KEY`` is set (nothing
    leaves the machine unless the user set W&B up)."""
    mode = os.environ.get("WANDB_MODE")
    return mode or (None if os.environ.get("WANDB_API_KEY") else "offline")


def _main_process() -> bool:
    from accelerate.state import PartialState

    if PartialState._shared_state:
        return PartialState().is_main_process
    return int(os.environ.get("RANK", "0")) == 0


class Tracking:
    """The trackers of one training run named ``name`` (``dpo``, ``sft``, ``cost-model``, ...),
    writing under ``directory``. With no trackers (or off the main process) every call does
    nothing, so training code calls it unconditionally::

        with Tracking(config.report_to, out, "dpo", config.model_dump()) as tracking:
            tracking.log({"loss": 0.69}, step=1)
    """

    def __init__(
        self,
        report_to: Sequence[str],
        directory: str | Path,
        name: str,
        config: Mapping[str, Any] | None = None,
        *,
        enabled: bool | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.name = name
        self.trackers: list[Any] = []
        self.dropped: list[str] = []  # trackers that failed and were left out
        try:
            names = check_report_to(list(report_to))
        except ValueError as exc:
            raise ConfigError(f"report_to: {exc}") from None
        if not names or not (_main_process() if enabled is None else enabled):
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        ids = self._ids()
        resumed = name in ids  # a run with the same name was started here: continue it
        mine = ids.setdefault(name, {})
        with _accelerate_state():
            for kind in names:
                tracker = getattr(self, f"_{kind}")(mine)
                tracker.start()
                if kind == "mlflow":  # its id exists once MLflow has made the run
                    mine["mlflow"]["run_id"] = tracker.active_run.info.run_id
                self.trackers.append(tracker)
                self._announce(kind, mine)
        if mine:
            from alignkit.atomic import write_text

            write_text(self.directory / IDS_FILE, json.dumps(ids, indent=2))
        if config and not resumed:  # (MLflow refuses a parameter logged again with a change)
            self._each("store_init_configuration", flat_config(config))

    # -------------------------------------------------------------------------- trackers

    def _tensorboard(self, ids: dict) -> Any:
        from accelerate.tracking import TensorBoardTracker

        return TensorBoardTracker(self.name, self.directory / "tensorboard")

    def _wandb(self, ids: dict) -> Any:
        import wandb
        from accelerate.tracking import WandBTracker

        ids.setdefault("wandb", uuid.uuid4().hex[:16])  # W&B ids: letters and digits
        options = {"mode": _wandb_mode()} if _wandb_mode() else {}
        return WandBTracker(
            os.environ.get("WANDB_PROJECT", "alignkit"),
            name=f"{self.directory.name}/{self.name}",
            id=ids["wandb"],
            resume="allow",
            dir=str(self.directory),
            settings=wandb.Settings(silent=True),
            **options,
        )

    def _mlflow(self, ids: dict) -> Any:
        import mlflow
        from accelerate.tracking import MLflowTracker

        store = (self.directory / "mlruns").resolve().as_uri()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or store
        if uri.startswith("file:"):  # MLflow 3 refuses its file store unless asked for it
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(uri)
        saved = ids.get("mlflow") or {}
        run_id = saved.get("run_id") if saved.get("uri") == uri else None  # same store: resume
        ids["mlflow"] = {"uri": uri, "run_id": run_id}
        return MLflowTracker(
            os.environ.get("MLFLOW_EXPERIMENT_NAME", "alignkit"),
            run_id=run_id,
            run_name=f"{self.directory.name}/{self.name}",
        )

    def _announce(self, kind: str, ids: dict) -> None:
        """Say once per process where a tracker's logs of ``directory`` are and how to look."""
        from alignkit.progress import console

        d = self.directory
        if (kind, d) in _ANNOUNCED:
            return
        _ANNOUNCED.add((kind, d))
        if kind == "tensorboard":
            line = f"tensorboard: {d / 'tensorboard'} (tensorboard --logdir {d})"
        elif kind == "wandb" and _wandb_mode() == "offline":
            line = f"wandb: offline in {d / 'wandb'} (upload: wandb sync {d}/wandb/offline-run-*)"
        elif kind == "wandb":
            line = f"wandb: run {ids['wandb']} ({_wandb_mode() or 'online'})"
        else:
            uri = ids["mlflow"]["uri"]
            shown = uri if not uri.startswith("file:") else d / "mlruns"
            line = f"mlflow: {shown} (mlflow ui --backend-store-uri {uri})"
        console.print(f"[dim]{line}[/]", highlight=False)

    # ---------------------------------------------------------------------------- logging

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log the numeric figures of ``metrics`` at ``step``."""
        values = numbers(metrics)
        if values:
            self._each("log", values, step=step)

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        if not self.trackers:
            return
        with _accelerate_state():
            for tracker in list(self.trackers):
                try:
                    getattr(tracker, method)(*args, **kwargs)
                except Exception as exc:  # a tracker must not end hours of training
                    self._drop(tracker, exc)

    def _drop(self, tracker: Any, exc: Exception) -> None:
        from alignkit.progress import console

        console.print(
            f"[yellow]{tracker.name} tracking failed and is off for the rest of this run: "
            f"{type(exc).__name__}: {exc}[/]",
            highlight=False,
        )
        self.trackers.remove(tracker)
        self.dropped.append(tracker.name)

    def finish(self) -> None:
        """End every tracker's run (flushing what it buffered)."""
        self._each("finish")
        self.trackers = []

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finish()

    def _ids(self) -> dict[str, dict]:
        path = self.directory / IDS_FILE
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise ConfigError(f"{path}: unreadable ({exc}); delete it to start new runs") from None
