"""Shared fixtures: one built testbed model per test session."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest


def pytest_configure(config):
    """Under pytest-xdist (``-n``, on by default): the controller builds the testbed once (on the
    build's own two threads) before the workers start; then each worker keeps to one torch
    thread (the workers share the cores, and intra-op threads would oversubscribe them),
    subprocesses too."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
    elif getattr(config.option, "numprocesses", None) and not config.option.collectonly:
        from alignkit.testbed import ensure_testbed

        ensure_testbed(progress=False)
        os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the workers and their subprocesses


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine the
    threads' spin-waiting makes them several times slower; restores the setting afterwards.
    Opt in per module: ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def testbed_path():
    """The testbed model directory, built once (cached under $ALIGNKIT_CACHE)."""
    from alignkit.testbed import ensure_testbed

    return ensure_testbed(progress=False)


@pytest.fixture(scope="session")
def testbed_backend(testbed_path):
    """The testbed model behind the local Hugging Face backend."""
    from alignkit.models import load_backend

    backend = load_backend("testbed", batch_size=64)
    yield backend
    backend.close()


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(directory)`` once per test run, also across pytest-xdist's workers: the first
    worker that asks builds under a file lock in the run's own temporary root (shared by the
    workers, new every run); the others wait for it and read what it built (pytest-xdist's
    recipe for a session fixture that runs once). Without xdist: once per session."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # .../pytest-N, above this worker's popen-gwK
    out = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not (out / ".built").is_file():
            shutil.rmtree(out, ignore_errors=True)  # a build that failed half-way
            out.mkdir()
            build(out)
            (out / ".built").touch()
    return out


@pytest.fixture(scope="session")
def testbed_behaviour(tmp_path_factory, testbed_backend):
    """``measure_behaviour(testbed, n=200, seed=0)`` of the built testbed model: measured once
    per run for the testbed's own targets and as the "before" of the DPO effect."""

    def build(out: Path) -> None:
        from alignkit.testbed import measure_behaviour

        report = measure_behaviour(testbed_backend, n=200, seed=0)
        (out / "behaviour.pkl").write_bytes(pickle.dumps(report))

    path = built_once(tmp_path_factory, "testbed-behaviour", build) / "behaviour.pkl"
    return pickle.loads(path.read_bytes())


@pytest.fixture(scope="session")
def testbed_cost_model(tmp_path_factory, testbed_path):
    """The directory of a cost model on 256 train-split harmless pairs of the testbed world (lr
    1e-3, batch 16, one epoch), trained once per run (see ``built_once``)."""

    def build(out: Path) -> None:
        from alignkit.safety import data as safety_data
        from alignkit.safety.value_model import ValueModelConfig, train_value_model

        config = ValueModelConfig(kind="cost", learning_rate=1e-3, batch_size=16, device="cpu")
        pairs = safety_data.testbed_value_pairs(256, "harmless", "train")
        train_value_model(config, pairs, progress=False).save(out / "model")

    return built_once(tmp_path_factory, "testbed-cost-model", build) / "model"


@pytest.fixture(scope="session")
def dpo_trained(tmp_path_factory, testbed_path):
    """The testbed model after DPO on testbed preference pairs (150 steps), trained once per
    run (see ``built_once``).

    Returns ``(metrics, root)``: ``metrics`` are what training returned; ``root`` holds
    ``train.jsonl``, ``eval.jsonl`` (held-out pairs) and ``run/``; the trained model is saved in
    ``root / "model"``.
    """

    def build(root: Path) -> None:
        from alignkit.dpo import DPOConfig, DPOTrainer
        from alignkit.testbed import World
        from alignkit.testbed.preferences import preference_pairs, write_jsonl

        write_jsonl(preference_pairs(World(0), 512, split="train", seed=0), root / "train.jsonl")
        write_jsonl(preference_pairs(World(0), 64, split="heldout", seed=1), root / "eval.jsonl")
        config = DPOConfig(
            data=root / "train.jsonl",
            eval_data=root / "eval.jsonl",
            output_dir=root / "run",
            max_steps=150,
            batch_size=16,
            learning_rate=5e-4,
            beta=0.1,
            kl_samples=32,
            device="cpu",
        )
        trainer = DPOTrainer(f"hf:{testbed_path}", config)
        metrics = trainer.train()
        trainer.save_model(root / "model")
        (root / "metrics.json").write_text(json.dumps(metrics))

    root = built_once(tmp_path_factory, "dpo-trained", build)
    return json.loads((root / "metrics.json").read_text()), root


READS = ("item", "tolist", "__float__", "__bool__", "__int__", "__index__")
SOURCE = str(Path(__file__).resolve().parents[1] / "src" / "alignkit")
TRANSFORMERS = str(Path(importlib.util.find_spec("transformers").origin).parent)


class _Reads(Counter):
    def pop_transformers(self) -> int:
        """Remove transformers' reads from the counts; return how many there were."""
        return sum(self.pop(key) for key in [k for k in self if k[0].startswith("transformers/")])


@pytest.fixture
def count_reads(monkeypatch):
    """Counts of (file, function) of alignkit's code (file name) and transformers' code (path
    from ``transformers/``) that read a tensor's value (``item``, ``tolist``, ``float``...):
    each such read waits for the device's queued work. (torch's own reads, such as the
    optimizer's host step counters, are not counted.)"""
    import torch

    counts = _Reads()

    def counting(name):
        read = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_code
            if caller.co_filename.startswith(SOURCE):
                counts[(Path(caller.co_filename).name, caller.co_name)] += 1
            elif caller.co_filename.startswith(TRANSFORMERS):
                where = Path(caller.co_filename).relative_to(Path(TRANSFORMERS).parent)
                counts[(str(where), caller.co_name)] += 1  # transformers/...
            return read(self, *args, **kwargs)

        return wrapper

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    return counts
