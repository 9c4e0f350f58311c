"""Config models, YAML loading, precedence and error messages (alignkit.config)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field, ValidationError

from alignkit import ConfigError, GenerationConfig, load_config
from alignkit.config import (
    BehaviourConfig,
    BuildTestbedConfig,
    CommandConfig,
    GenerateConfig,
    SampleTestbedConfig,
    config_options,
    dump_config,
    nest_options,
)


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    return info.value.message


# --- names: flat and nested are the same setting -----------------------------------------------


def test_flat_and_nested_python_construction_agree():
    flat = GenerateConfig(model="testbed", prompt="hi", temperature=0.0, batch_size=3, stop=["x"])
    nested = GenerateConfig(
        model="testbed",
        prompt=["hi"],
        generation=GenerationConfig(temperature=0.0, stop=["x"]),
        backend={"batch_size": 3},
    )
    assert flat == nested
    assert flat.generation.temperature == 0.0 and flat.backend.batch_size == 3
    assert flat.generation.max_new_tokens == GenerationConfig().max_new_tokens


def test_option_names_are_the_leaf_field_names():
    options = config_options(GenerateConfig)
    assert options["max_new_tokens"].path == ("generation", "max_new_tokens")
    assert options["batch_size"].path == ("backend", "batch_size")
    assert options["model"].path == ("model",)
    assert config_options(BuildTestbedConfig)["seed"].path == ("testbed", "seed")
    assert config_options(BehaviourConfig)["json"].path == ("json",)  # alias is the public name


def test_a_setting_given_twice_is_an_error():
    with pytest.raises(ValidationError, match="given twice"):
        GenerateConfig(model="testbed", prompt="x", temperature=0.5, generation={"temperature": 1})
    with pytest.raises(ValueError, match="given twice"):
        nest_options(GenerateConfig, {"top_k": 1, "generation": GenerationConfig(top_k=2)})


def test_nest_options_does_not_mutate_its_input():
    group = {"temperature": 0.5}
    data = {"generation": group, "top_k": 3}
    assert nest_options(GenerateConfig, data) == {"generation": {"temperature": 0.5, "top_k": 3}}
    assert group == {"temperature": 0.5}


def test_duplicate_option_names_across_groups_are_a_programming_error():
    class A(BaseModel):
        seed: int = 0

    class Clash(CommandConfig):
        seed: int = 1
        group: A = Field(default_factory=A)

    with pytest.raises(TypeError, match="'seed' is defined twice"):
        config_options(Clash)


# --- precedence: defaults < YAML < overrides -----------------------------------------------------


def test_precedence_defaults_yaml_overrides(tmp_path):
    path = write(
        tmp_path,
        "model: testbed\nprompt: hello\ntemperature: 0.3\n"
        "generation:\n  max_new_tokens: 7\nbackend:\n  batch_size: 4\n",
    )
    from_yaml = load_config(GenerateConfig, path)
    assert from_yaml.generation.temperature == 0.3  # flat key in YAML
    assert from_yaml.generation.max_new_tokens == 7  # nested key in YAML
    assert from_yaml.backend.batch_size == 4
    assert from_yaml.generation.top_p == 1.0  # default
    merged = load_config(GenerateConfig, path, {"temperature": 0.9, "batch_size": 2})
    assert merged.generation.temperature == 0.9 and merged.backend.batch_size == 2
    assert merged.generation.max_new_tokens == 7  # YAML value the override left alone
    assert merged.prompt == ["hello"]


def test_overrides_alone_and_empty_yaml(tmp_path):
    empty = write(tmp_path, "# nothing here\n")
    config = load_config(SampleTestbedConfig, empty, {"kind": "harmful", "n": 3})
    assert config.kind == "harmful" and config.n == 3 and config.split == "heldout"


def test_dump_config_round_trips(tmp_path):
    config = load_config(BehaviourConfig, None, {"json": tmp_path / "r.json", "n": 5})
    text = dump_config(config)
    assert "json:" in text and "json_path" not in text
    assert load_config(BehaviourConfig, write(tmp_path, text)) == config


# --- errors -------------------------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path):
    assert error_of(GenerateConfig, tmp_path / "nope.yaml") == (
        f"config file {str(tmp_path / 'nope.yaml')!r} not found"
    )
    assert "is a directory" in error_of(GenerateConfig, tmp_path)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "model: testbed\nprompt: [unclosed\ntemperature: 1\n")
    message = error_of(GenerateConfig, path)
    assert message.startswith(f"{path}, line ")
    assert "invalid YAML" in message
    bad_indent = write(tmp_path, "model: testbed\n  prompt: x\n", "indent.yaml")
    assert error_of(GenerateConfig, bad_indent).startswith(f"{bad_indent}, line 2, column")


def test_top_level_must_be_a_mapping(tmp_path):
    message = error_of(GenerateConfig, write(tmp_path, "- a\n- b\n"))
    assert "expected a mapping" in message and "got list" in message


def test_unknown_key_names_file_line_key_and_suggestion(tmp_path):
    path = write(tmp_path, "model: testbed\nprompt: x\ntemprature: 0.5\n")
    assert error_of(GenerateConfig, path) == (
        f"{path}, line 3: unknown key 'temprature'; did you mean 'temperature'?"
    )
    nested = write(tmp_path, "model: testbed\nprompt: x\nbackend:\n  dtyp: float32\n", "n.yaml")
    assert error_of(GenerateConfig, nested) == (
        f"{nested}, line 4: unknown key 'backend.dtyp'; did you mean 'dtype'?"
    )


def test_unknown_key_without_close_match_lists_valid_options(tmp_path):
    message = error_of(SampleTestbedConfig, write(tmp_path, "zzz: 1\n"))
    assert "unknown key 'zzz'; valid options: jsonl, kind, n, seed, split" in message


def test_wrong_type_names_key_expected_and_given(tmp_path):
    path = write(tmp_path, "model: testbed\nprompt: x\ngeneration:\n  max_new_tokens: lots\n")
    message = error_of(GenerateConfig, path)
    assert message.startswith(f"{path}, line 4: key 'generation.max_new_tokens': expected")
    assert "valid integer" in message and message.endswith("got 'lots'")
    choice = write(tmp_path, "split: test\n", "s.yaml")
    assert error_of(SampleTestbedConfig, choice) == (
        f"{choice}, line 1: key 'split': expected 'train' or 'heldout', got 'test'"
    )


def test_errors_name_a_flat_yaml_key_as_written(tmp_path):
    path = write(tmp_path, "model: testbed\nprompt: x\n\ntop_p: 7\n")
    assert error_of(GenerateConfig, path) == (
        f"{path}, line 4: key 'top_p': expected less than or equal to 1, got 7"
    )


def test_several_errors_in_one_message(tmp_path):
    path = write(tmp_path, "n: 0\nsplit: test\n")
    message = error_of(SampleTestbedConfig, path)
    assert "key 'n'" in message and "key 'split'" in message and "; " in message


def test_override_errors_name_the_option_or_flag():
    assert error_of(SampleTestbedConfig, None, {"n": 0}) == (
        "option 'n': expected greater than or equal to 1, got 0"
    )
    assert error_of(SampleTestbedConfig, None, {"n": 0}, flag_names=True) == (
        "--n: expected greater than or equal to 1, got 0"
    )
    assert error_of(GenerateConfig, None, {"model": "testbed", "promt": "x"}).startswith(
        "unknown option 'promt'; did you mean 'prompt'"
    )


def test_list_item_errors_name_the_option():
    message = error_of(GenerateConfig, None, {"model": "testbed", "prompt": ["a", 3]})
    assert message == "option 'prompt': expected a valid string, got 3"


def test_missing_required_and_model_string_checks():
    assert error_of(GenerateConfig, None, {"prompt": "x"}).startswith(
        "missing required option 'model' (--model"
    )
    assert "unknown kind 'foo'" in error_of(GenerateConfig, None, {"model": "foo:x", "prompt": "x"})
    assert error_of(GenerateConfig, None, {"model": "testbed"}) == (
        "give at least one --prompt or a --prompts-file"
    )
    assert GenerateConfig(model=" hf:/m+/a ", prompt="x").model == "hf:/m+/a"


from alignkit.constitutional.config import CAIConfig  # noqa: E402
from alignkit.dpo.config import DPOConfig  # noqa: E402
from alignkit.evaluation.config import EvalConfig  # noqa: E402
from alignkit.pipeline.config import DemoConfig, PipelineConfig  # noqa: E402
from alignkit.redteam.config import RedTeamConfig  # noqa: E402
from alignkit.safety.constrained import SafetyConfig  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


EXAMPLE_CONFIGS = {
    "generate.yaml": GenerateConfig,
    "testbed-build.yaml": BuildTestbedConfig,
    "testbed-sample.yaml": SampleTestbedConfig,
    "demo.yaml": DemoConfig,
    "dpo-testbed.yaml": DPOConfig,
    "eval-testbed.yaml": EvalConfig,
    "redteam-testbed.yaml": RedTeamConfig,
    "cai-testbed.yaml": CAIConfig,
    "safety-testbed.yaml": SafetyConfig,
    "pipeline-testbed.yaml": PipelineConfig,
    "pipeline-qwen-lora.yaml": PipelineConfig,
    "pipeline-multi-gpu.yaml": PipelineConfig,
}


def test_every_example_config_loads():
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(EXAMPLE_CONFIGS)
    for name, cls in EXAMPLE_CONFIGS.items():
        config = load_config(cls, EXAMPLES / name)
        assert config.model_fields_set, name
