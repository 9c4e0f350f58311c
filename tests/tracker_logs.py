"""Read back what the experiment trackers wrote, with each tracker's own reader where it has one:
TensorBoard's event accumulator, MLflow's client, and (W&B has no public reader of offline runs)
the record log of a ``run-ID.wandb`` file decoded with W&B's own protobuf messages."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def tensorboard_scalars(directory: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of every event file in ``directory`` (a later file wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def mlflow_run(run_dir: Path, name: str):
    """The MLflow run ``name`` that alignkit noted in ``run_dir/tracking.json``, with its
    client: ``(client, run)``."""
    from mlflow.tracking import MlflowClient

    ids = json.loads((run_dir / "tracking.json").read_text())[name]["mlflow"]
    client = MlflowClient(tracking_uri=ids["uri"])
    return client, client.get_run(ids["run_id"])


def mlflow_history(run_dir: Path, name: str, key: str) -> dict[int, float]:
    client, run = mlflow_run(run_dir, name)
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}


BLOCK = 32 * 1024  # the W&B log is LevelDB's log format: 32 KiB blocks of typed fragments


def _records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B log"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += room
            continue
        fragment, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:  # full
            records.append(fragment)
        elif kind == 2:  # first
            pending = fragment
        elif kind == 3:  # middle
            pending += fragment
        elif kind == 4:  # last
            records.append(pending + fragment)
    return records


def wandb_offline(run_dir: Path) -> list[dict]:
    """Every offline run under ``run_dir/wandb``, oldest first: ``{"id", "name", "project",
    "config": {key: value}, "history": [{key: value, ...} per logged step]}``."""
    from wandb.proto import wandb_internal_pb2 as pb

    runs = []
    for folder in sorted((run_dir / "wandb").glob("offline-run-*")):
        (log,) = folder.glob("run-*.wandb")
        run = {"config": {}, "history": []}
        for raw in _records(log):
            record = pb.Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run |= {"id": record.run.run_id, "name": record.run.display_name,
                        "project": record.run.project}  # fmt: skip
            elif kind == "config":
                run["config"] |= {i.key: json.loads(i.value_json) for i in record.config.update}
            elif kind == "history":
                run["history"].append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                     for i in record.history.item}
                )  # fmt: skip
        runs.append(run)
    return runs
