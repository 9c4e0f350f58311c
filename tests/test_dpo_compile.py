"""``DPOConfig(compile=True)`` / ``alignkit dpo --compile``: every decoder layer compiled in place
(torch.compile; on CPU the inductor's C++ backend), the head left eager and fused. The compiled
run follows the eager one: the same losses step by step and the same final weights, saved under
the same names (no ``_orig_mod`` prefixes)."""

from __future__ import annotations

import pytest
import torch
from dpo_runs import run_both

from alignkit.dpo.model_io import compile_layers
from alignkit.errors import ModelError


def test_compiled_layers_train_as_the_eager_ones(tmp_path):
    def check(trainer, compiled):
        layers = [m for m in trainer.model.modules() if type(m).__name__ == "LlamaDecoderLayer"]
        assert len(layers) == 4
        assert all((m._compiled_call_impl is not None) == compiled for m in layers)

    run_both(tmp_path, "compile", check)


def test_a_model_without_named_layers_is_refused():
    with pytest.raises(ModelError, match="names no decoder layer class"):
        compile_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))
