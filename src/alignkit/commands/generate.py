"""``alignkit generate``: complete prompts with any model string."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.rule import Rule

from alignkit.commands._console import print_note, stdout
from alignkit.commands._options import config_command
from alignkit.config import GenerateConfig
from alignkit.errors import DataError
from alignkit.models import Completion, Prompt, load_backend

_ROLES = ("system", "user", "assistant")


def _check_prompt(value: Any, where: str) -> Prompt:
    """A prompt field: a non-empty string or a list of {role, content} messages."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field 'prompt' is empty")
        return value
    if not isinstance(value, list) or not value:
        raise DataError(
            f"{where}: field 'prompt' must be a string or a non-empty list of "
            f"{{role, content}} messages, got {type(value).__name__}"
        )
    for i, message in enumerate(value):
        ok = (
            isinstance(message, dict)
            and message.get("role") in _ROLES
            and isinstance(message.get("content"), str)
        )
        if not ok:
            raise DataError(
                f"{where}: field 'prompt', message {i} must be {{'role': one of {list(_ROLES)}, "
                f"'content': str}}, got {message!r:.80}"
            )
    return value


def load_prompts(path: Path) -> list[Prompt]:
    """Prompts from a JSONL file (``{"prompt": ...}`` per line) or a .txt file (one per line)."""
    if not path.is_file():
        raise DataError(f"prompts file {str(path)!r} not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    prompts: list[Prompt] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path.suffix == ".txt":
            prompts.append(line)
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or "prompt" not in record:
            raise DataError(f"{where}: expected a JSON object with a 'prompt' field")
        prompts.append(_check_prompt(record["prompt"], where))
    if not prompts:
        raise DataError(f"prompts file {str(path)!r} has no prompts")
    return prompts


def _prompt_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def write_completions(path: Path, prompts: list[Prompt], completions: list[Completion]) -> None:
    """Write one JSON line per prompt: prompt, completion, finish_reason, num_tokens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for prompt, c in zip(prompts, completions, strict=True):
            row = {
                "prompt": prompt if isinstance(prompt, str) else list(prompt),
                "completion": c.text,
                "finish_reason": c.finish_reason,
                "num_tokens": c.num_tokens,
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _print_completions(prompts: list[Prompt], completions: list[Completion]) -> None:
    console = stdout()
    for prompt, c in zip(prompts, completions, strict=True):
        console.print(Rule(style="dim"))
        console.print(f"[bold cyan]{escape(_prompt_text(prompt))}[/]", highlight=False)
        console.print(escape(c.text), highlight=False)
        console.print(f"[dim]({c.num_tokens} tokens, {c.finish_reason})[/]", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``generate`` to ``app``."""

    @config_command(app, "generate", GenerateConfig)
    def generate(config: GenerateConfig) -> None:
        """Complete prompts with a model: print them, or write JSONL with --output."""
        if config.output is not None and config.output.is_dir():
            raise DataError(f"--output {str(config.output)!r} is a directory; give a file path")
        prompts: list[Prompt] = list(config.prompt)
        if config.prompts_file is not None:
            prompts += load_prompts(config.prompts_file)
        backend = load_backend(config.model, config.backend)
        try:
            completions = backend.generate(prompts, config.generation)
        finally:
            backend.close()
        if config.output is None:
            _print_completions(prompts, completions)
        else:
            write_completions(config.output, prompts, completions)
            print_note(f"wrote {len(completions)} completions to {config.output}")
