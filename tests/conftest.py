"""Shared fixtures: one built testbed model per test session."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    """Under pytest-xdist (``-n``, on by default): the controller builds the testbed once, with
    every thread, before the workers start; then each worker keeps to one torch thread (the
    workers share the cores, and intra-op threads would oversubscribe them), subprocesses too."""
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


@pytest.fixture(scope="session")
def dpo_trained(tmp_path_factory, testbed_path):
    """The testbed model after DPO on testbed preference pairs (150 steps, about 20 s).

    Returns ``(trainer, metrics, root)``: ``root`` holds ``train.jsonl``, ``eval.jsonl``
    (held-out pairs) and ``run/``; the trained model is saved in ``root / "model"``.
    """
    from alignkit.dpo import DPOConfig, DPOTrainer
    from alignkit.testbed import World
    from alignkit.testbed.preferences import preference_pairs, write_jsonl

    root = tmp_path_factory.mktemp("dpo-trained")
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
    return trainer, metrics, root
