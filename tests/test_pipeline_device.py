"""``device: auto`` in the pipeline and in every Hugging Face backend: the GPU when there is one,
unless the model is tiny (under 20M parameters, where kernel launches make the GPU slower than
the CPU); an explicit device is kept. The GPU is simulated: only the choice is tested here."""

from __future__ import annotations

import json

import pytest
import tiny_models as tm
import torch

from alignkit.models.auto_device import TINY_PARAMETERS, parameter_count
from alignkit.pipeline import PipelineConfig


def _qwen2_config(directory, hidden: int, layers: int):
    """A model directory holding only a config (no weights: its size is read from it)."""
    directory.mkdir()
    config = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 32000,
              "hidden_size": hidden, "intermediate_size": 4 * hidden, "num_hidden_layers": layers,
              "num_attention_heads": 8, "num_key_value_heads": 2}  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture
def gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_tiny_models_stay_on_the_cpu(testbed_path, tmp_path, gpu):
    tiny = tm.make_tiny_model(tmp_path / "tiny")
    for model in ("testbed", f"hf:{tiny}"):
        assert parameter_count(model) < TINY_PARAMETERS
        assert PipelineConfig(model=model, output_dir=tmp_path / "run").local_device == "cpu"


def test_larger_models_go_to_the_gpu(tmp_path, gpu):
    large = _qwen2_config(tmp_path / "large", hidden=512, layers=8)
    assert parameter_count(f"hf:{large}") > TINY_PARAMETERS  # 32000 x 512 x 2 alone is 33M
    assert PipelineConfig(model=f"hf:{large}", output_dir=tmp_path / "run").local_device == "cuda"
    unread = "hf:some-org/not-downloaded-model"  # no local config: counted as large
    assert parameter_count(unread) is None
    assert PipelineConfig(model=unread, output_dir=tmp_path / "run").local_device == "cuda"


def test_without_a_gpu_or_with_a_device_given(tmp_path, monkeypatch):
    large = _qwen2_config(tmp_path / "large", hidden=512, layers=8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert PipelineConfig(model=f"hf:{large}", output_dir=tmp_path / "a").local_device == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    given = PipelineConfig(model="testbed", output_dir=tmp_path / "b", device="cuda")
    assert given.local_device == "cuda"


def test_a_backend_loaded_with_auto_keeps_a_tiny_model_on_the_cpu(testbed_path, gpu):
    """``alignkit eval --model testbed`` on a GPU machine: the backend loads on the CPU (were
    the choice CUDA, loading would fail here, where there is none)."""
    from alignkit.models import load_backend

    backend = load_backend("testbed")  # device "auto", the default
    assert backend.device.type == "cpu"
    assert next(backend.model.parameters()).device.type == "cpu"
