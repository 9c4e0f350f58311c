"""The alignkit CLI: generated options, precedence, generate on a tiny model, error exits."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Literal

import pytest
import typer
import yaml
from pydantic import Field
from typer.testing import CliRunner

from alignkit import cli
from alignkit.cli import app
from alignkit.commands._options import cli_options, config_command
from alignkit.config import CommandConfig
from alignkit.errors import DataError

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments: str) -> str:
    """Exit 2, one 'error:' line on stderr naming every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from tiny_models import make_tiny_model

    return "hf:" + str(make_tiny_model(tmp_path_factory.mktemp("tiny-cli") / "model"))


# --- the pydantic -> typer option generator ---------------------------------------------------


class ToyConfig(CommandConfig):
    name: str = Field(description="A required name.")
    level: Literal["low", "high"] = "low"
    tags: list[str] = Field(default_factory=list)
    limit: int | None = None
    verbose: bool = False
    table: dict[str, float] = Field(default_factory=dict)  # YAML / Python only


@pytest.fixture
def toy_app():
    toy = typer.Typer()
    seen: list[ToyConfig] = []

    @config_command(toy, "run", ToyConfig)
    def run(config: ToyConfig) -> None:
        """Run the toy."""
        seen.append(config)

    @toy.command("other")
    def other() -> None:  # a second command, so "run" stays a named subcommand
        pass

    return toy, seen


def test_generated_options_cover_fields_with_a_command_line_form():
    flags = {o.name for o in cli_options(ToyConfig)}
    assert flags == {"name", "level", "tags", "limit", "verbose"}  # the dict stays YAML-only


def test_generated_command_parses_types_and_precedence(toy_app, tmp_path):
    toy, seen = toy_app
    path = tmp_path / "toy.yaml"
    path.write_text("name: from-yaml\nlevel: high\nlimit: 3\ntable: {a: 1.5}\nverbose: true\n")
    args = ["run", "--config", path, "--tags", "a", "--tags", "b", "--limit", "9", "--no-verbose"]
    result = runner.invoke(toy, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    config = seen[-1]
    assert config.name == "from-yaml" and config.level == "high"  # YAML, flags not given
    assert config.tags == ["a", "b"] and config.limit == 9 and config.verbose is False  # flags
    assert config.table == {"a": 1.5}
    assert runner.invoke(toy, ["run", "--name", "x"]).exit_code == 0
    assert seen[-1] == ToyConfig(name="x")  # unset flags keep the model's defaults


def test_generated_command_help_shows_fields(toy_app):
    toy, _ = toy_app
    result = runner.invoke(toy, ["run", "--help"], env={"COLUMNS": "150"})
    assert result.exit_code == 0
    for text in ("--name", "A required name.", "--level", "low|high", "--tags", "--no-verbose"):
        assert text in result.output
    assert "--table" not in result.output


def test_reserved_names_are_rejected():
    class Bad(CommandConfig):
        config: int = 0

    with pytest.raises(TypeError, match="reserved"):
        config_command(typer.Typer(), "bad", Bad)


# --- help, entry points, import cost -----------------------------------------------------------


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("generate", "testbed", "demo"):
        assert command in result.output
    for sub in (["generate"], ["testbed", "build"], ["testbed", "info"], ["testbed", "sample"]):
        assert invoke(*sub, "--help").exit_code == 0


def test_console_entry_point_and_import_are_light():
    code = (
        "import sys, alignkit, alignkit.cli; "
        "print(any(m in sys.modules for m in ('torch', 'transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    result = subprocess.run(
        [sys.executable, "-m", "alignkit", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "generate" in result.stdout


def test_real_entry_point_config_error_is_one_line_exit_2(tmp_path):
    path = tmp_path / "gen.yaml"
    path.write_text("model: testbed\nprompt: hi\ngeneration:\n  top_k: many\n")
    result = subprocess.run(
        [sys.executable, "-m", "alignkit", "generate", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines() == [
        f"error: {path}, line 4: key 'generation.top_k': expected a valid integer, "
        "unable to parse string as an integer, got 'many'"
    ]


def test_print_config_shows_the_merged_config(tmp_path):
    path = tmp_path / "gen.yaml"
    path.write_text("model: testbed\nprompt: hi\ntemperature: 0.3\nbackend: {batch_size: 4}\n")
    result = invoke("generate", "--config", path, "--batch-size", "2", "--print-config")
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(result.stdout)
    assert config["generation"]["temperature"] == 0.3  # from YAML
    assert config["backend"]["batch_size"] == 2  # the flag beats YAML
    assert config["generation"]["max_new_tokens"] == 128  # default
    assert config["model"] == "testbed" and config["prompt"] == ["hi"]


# --- generate ------------------------------------------------------------------------------------


def test_generate_prints_completions(tiny_model):
    result = invoke(
        "generate", "--model", tiny_model, "--prompt", "Two plus two", "--prompt", "The sea",
        "--max-new-tokens", "4", "--temperature", "0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Two plus two" in result.stdout and "The sea" in result.stdout
    assert result.stdout.count("tokens, ") == 2


def test_generate_prompts_file_to_jsonl(tiny_model, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    lines = [json.dumps({"prompt": "Water boils"}), "", json.dumps({"prompt": chat})]
    prompts.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "completions.jsonl"
    args = ["generate", "--model", tiny_model, "--prompts-file", prompts, "--output", out]
    result = invoke(*args, "--prompt", "Extra", "--max-new-tokens", "3", "--temperature", "0")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Extra", "Water boils", chat]
    for row in rows:
        assert set(row) == {"prompt", "completion", "finish_reason", "num_tokens"}
        assert 1 <= row["num_tokens"] <= 3 and isinstance(row["completion"], str)
    assert str(out) in result.stderr
    again = tmp_path / "again.jsonl"
    assert invoke(*args[:-1], again, "--prompt", "Extra", "--max-new-tokens", "3",
                  "--temperature", "0").exit_code == 0  # fmt: skip
    assert again.read_text() == out.read_text()  # greedy decoding is deterministic


def test_generate_txt_prompts_file(tiny_model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first prompt\n\nsecond prompt\n")
    out = tmp_path / "o.jsonl"
    result = invoke("generate", "--model", tiny_model, "--prompts-file", prompts, "--output", out,
                    "--max-new-tokens", "2")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["prompt"] for x in out.read_text().splitlines()] == [
        "first prompt",
        "second prompt",
    ]


@pytest.mark.parametrize(
    "line, fragment",
    [
        ('{"promt": "x"}', "'prompt' field"),
        ("{not json", "invalid JSON"),
        ('{"prompt": 5}', "field 'prompt' must be a string"),
        ('{"prompt": [{"role": "robot", "content": "x"}]}', "field 'prompt', message 0"),
    ],
)
def test_generate_bad_prompts_line_exits_2(tmp_path, line, fragment):
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text('{"prompt": "fine"}\n' + line + "\n")
    result = invoke("generate", "--model", "hf:/unused", "--prompts-file", prompts)
    assert_user_error(result, f"{prompts}, line 2", fragment)


def test_generate_user_errors_exit_2(tmp_path):
    assert_user_error(invoke("generate", "--model", "hf:x"), "--prompt")
    assert_user_error(invoke("generate", "--prompt", "x"), "missing required option 'model'")
    assert_user_error(
        invoke("generate", "--model", "gguf:x", "--prompt", "x"), "--model", "unknown kind 'gguf'"
    )
    missing = tmp_path / "no-such-model"
    assert_user_error(invoke("generate", "--model", f"hf:{missing}", "--prompt", "x"), str(missing))
    assert_user_error(
        invoke("generate", "--model", "hf:x", "--prompts-file", tmp_path / "none.jsonl"),
        "none.jsonl",
        "not found",
    )
    assert_user_error(
        invoke("generate", "--model", "hf:x", "--prompt", "x", "--top-p", "2"), "--top-p"
    )
    assert_user_error(invoke("generate", "--config", tmp_path / "absent.yaml"), "absent.yaml")


# --- main(): errors and Ctrl-C -----------------------------------------------------------------


@pytest.mark.parametrize(
    "exc, code", [(DataError("bad row 7 in data.jsonl"), 2), (KeyboardInterrupt(), 130)]
)
def test_main_exit_codes(monkeypatch, capsys, exc, code):
    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr("alignkit.commands.generate.load_backend", fail)
    with pytest.raises(SystemExit) as info:
        cli.main(["generate", "--model", "hf:x", "--prompt", "hi"])
    assert info.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert ("error: bad row 7 in data.jsonl" in err) == (code == 2)


# --- testbed sample (needs only the world, not the trained model) -------------------------------


def test_testbed_sample_jsonl():
    result = invoke("testbed", "sample", "--kind", "harmful", "--n", "3", "--jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3 and {r["kind"] for r in rows} == {"harmful"}
    assert all(r["prompt"] and r["response"] for r in rows)
    again = invoke("testbed", "sample", "--kind", "harmful", "--n", "3", "--jsonl")
    assert again.stdout == result.stdout  # seeded


def test_testbed_sample_table_and_bad_kind():
    result = invoke("testbed", "sample", "--n", "2", "--split", "train")
    assert result.exit_code == 0 and "response" in result.stdout
    assert invoke("testbed", "sample", "--kind", "evil").exit_code == 2
    assert invoke("testbed", "sample", "--split", "test").exit_code == 2


# --- behaviour table on any model (the tiny random one: no trained testbed needed) --------------


def test_testbed_info_on_a_given_model(tiny_model, tmp_path):
    out = tmp_path / "report.json"
    result = invoke("testbed", "info", "--model", tiny_model, "--n", "2", "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["config"] == {"model": tiny_model, "n": 2, "seed": 0, "json": str(out)}
    assert report["rows"] and {"name", "value", "n", "target", "ok", "low", "high"} <= set(
        report["rows"][0]
    )
    from alignkit.models import load_backend
    from alignkit.testbed import measure_behaviour

    # the figures are the library's own measurement of the same model and seed, each a share
    # of its n items
    direct = measure_behaviour(load_backend(tiny_model), n=2, seed=0).to_dict()["rows"]
    assert [(r["name"], r["value"], r["n"]) for r in report["rows"]] == [
        (r["name"], r["value"], r["n"]) for r in direct
    ]
    for row in report["rows"]:
        assert row["value"] * row["n"] == round(row["value"] * row["n"])
        assert row["name"] in result.stdout


def test_generate_model_errors_exit_2(tmp_path):
    """A model that is not a causal LM and a server that is down: one line each, exit 2."""
    from servers import free_port
    from tiny_models import make_tiny_encoder

    encoder = make_tiny_encoder(tmp_path / "encoder")
    assert_user_error(
        invoke("generate", "--model", f"hf:{encoder}", "--prompt", "x"), str(encoder), "causal"
    )
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = invoke("generate", "--model", f"openai:m@{url}", "--prompt", "x", "--max-retries", 0)
    assert_user_error(result, url)


def test_threads_option_sets_torch_threads(monkeypatch):
    """`alignkit --threads N CMD` (or ALIGNKIT_THREADS) sets torch's CPU threads before the
    command runs; 0 is refused."""
    import torch

    before = torch.get_num_threads()
    try:
        seen = []
        monkeypatch.setattr(torch, "set_num_threads", seen.append)
        assert invoke("--threads", "1", "testbed", "--help").exit_code == 0
        monkeypatch.setenv("ALIGNKIT_THREADS", "3")
        assert invoke("testbed", "--help").exit_code == 0
        assert seen == [1, 3]
        assert invoke("--threads", "0", "testbed", "--help").exit_code == 2
    finally:
        torch.set_num_threads(before)


def test_optional_numbers_take_none_on_the_command_line():
    """`--seed none` gives a fresh seed (None), as the help says; a number stays a number and
    anything else is refused with exit 2."""
    base = ["generate", "--model", "testbed", "--prompt", "x", "--print-config"]
    for given, expected in (("none", "seed: null"), ("NULL", "seed: null"), ("5", "seed: 5")):
        result = invoke(*base, "--seed", given)
        assert result.exit_code == 0 and expected in result.output, result.output
    assert "seed: 0" in invoke(*base).output
    assert invoke(*base, "--seed", "abc").exit_code == 2
