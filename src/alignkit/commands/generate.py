"""``alignkit generate``: complete prompts with any model string.

Prompts are generated a chunk at a time. With ``--output``, each finished chunk is appended
(flushed and fsynced) to ``OUTPUT.part`` beside the output, and the output itself appears whole
at the end (written atomically, the part file then removed). A run that fails or is killed
keeps every finished chunk in the part file and says so; running the same command again
resumes: prompts already done (matched by index and text, under the same model and settings)
are not generated again, and the output is exactly what an uninterrupted run writes, because
each prompt is sampled with its own randomness (:mod:`alignkit.models.sampling`), whatever the
chunk it falls in. The output location is checked before any model is loaded.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import Field
from rich.markup import escape
from rich.rule import Rule

from alignkit.atomic import write_text
from alignkit.commands._console import print_note, stdout
from alignkit.commands._options import config_command
from alignkit.config import GenerateConfig
from alignkit.errors import AlignkitError, DataError
from alignkit.evaluation.suites import read_text_file
from alignkit.models import Completion, GenerationConfig, Prompt, load_backend
from alignkit.models.base import PromptTooLongError
from alignkit.models.resilient import IncompleteGeneration, chunk_size, generate_indexed
from alignkit.models.sampling import occurrences, prompt_key
from alignkit.progress import make_progress

_ROLES = ("system", "user", "assistant")
PART_FORMAT = "alignkit-generate-part/1"


class GenerateCommandConfig(GenerateConfig):
    """``alignkit generate``, with the options that only the command has."""

    on_long_prompt: Literal["error", "skip"] = Field(
        "error",
        description="A prompt too long for the model's context: 'error' (stop before "
        "generating anything) or 'skip' it (counted, left out of the output).",
    )


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
    lines = read_text_file(path, "prompts file").splitlines()
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


def _row(prompt: Prompt, c: Completion) -> dict:
    """One output record: prompt, completion, finish_reason, num_tokens."""
    return {
        "prompt": prompt if isinstance(prompt, str) else list(prompt),
        "completion": c.text,
        "finish_reason": c.finish_reason,
        "num_tokens": c.num_tokens,
    }


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def check_output(path: Path) -> None:
    """Fail now, before a model loads, if ``path`` cannot be written: a directory, a file in
    the way of its folder, a read-only or pseudo file system (``/proc``). Nothing is created: a
    temporary file is made and removed in the nearest existing folder of ``path``. An existing
    non-regular file (``/dev/stdout``, a pipe) must open for writing."""
    if path.is_dir():
        raise DataError(f"--output {str(path)!r} is a directory; give a file path")
    try:
        if path.exists() and not path.is_file():
            path.open("a").close()
            return
        probe = next(p for p in path.absolute().parents if p.exists())
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is not a directory")
        with tempfile.TemporaryFile(dir=probe, prefix=f".{path.name}."):
            pass
    except OSError as exc:
        raise DataError(f"cannot write --output {str(path)!r}: {exc.strerror or exc}") from None


class StreamOutput:
    """An output that is not a regular file (``/dev/stdout``, a pipe): rows are written to it
    in input order as chunks finish; there is nothing to resume from."""

    def __init__(self, path: Path) -> None:
        self.rows: dict[int, dict] = {}
        self._handle = path.open("w", encoding="utf-8")

    def add(self, rows: dict[int, dict]) -> None:
        self._handle.write(_jsonl(list(rows.values())))
        self._handle.flush()
        self.rows.update(rows)

    def close(self, remove: bool = False) -> None:
        self._handle.close()


class PartFile:
    """``OUTPUT.part``: a header line (model and settings), then one line per finished prompt
    (``{"index": i, **row}``), appended a chunk at a time and fsynced."""

    def __init__(self, output: Path) -> None:
        self.path = output.with_name(output.name + ".part")
        self.rows: dict[int, dict] = {}
        self._handle = None

    def resume(self, header: dict, prompts: list[Prompt], keep_seed: bool) -> dict:
        """Keep the rows of an earlier run whose index and prompt match ``prompts`` (if it
        used the same model and settings) and rewrite the file with them; return the header
        in force (``keep_seed``: take the earlier run's seed, drawn for ``seed=None``)."""
        lines = self._read()
        old = lines[0] if lines and lines[0].get("format") == PART_FORMAT else None
        if old is not None and keep_seed:
            header["generation"]["seed"] = old.get("generation", {}).get("seed")
        if old is not None and old != header:
            print_note(f"ignoring {self.path}: it was written with another model or settings")
        elif old is not None:
            for row in lines[1:]:
                i = row.get("index")
                if isinstance(i, int) and 0 <= i < len(prompts) and row.get("prompt") == prompts[i]:
                    self.rows[i] = {k: v for k, v in row.items() if k != "index"}
        rows = [{"index": i, **row} for i, row in sorted(self.rows.items())]
        write_text(self.path, _jsonl([header, *rows]))
        self._handle = self.path.open("a", encoding="utf-8")
        return header

    def _read(self) -> list[dict]:
        """The part file's records (none if absent); a torn last line (a kill) is dropped."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if isinstance(record, dict):
                out.append(record)
        return out

    def add(self, rows: dict[int, dict]) -> None:
        """Append finished rows; they are on disk when this returns."""
        self._handle.write(_jsonl([{"index": i, **row} for i, row in rows.items()]))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.rows.update(rows)

    def close(self, remove: bool = False) -> None:
        if self._handle is not None:
            self._handle.close()
        if remove:
            self.path.unlink(missing_ok=True)


def _chunks(todo: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(todo), size):
        yield todo[start : start + size]


def _fitting(backend, prompts: list[Prompt], todo: list[int], config, mode: str) -> list[int]:
    """The prompts of ``todo`` that fit the model's context; over-long ones raise (``error``,
    before anything is generated) or are left out (``skip``). Backends that cannot measure
    prompts (servers) are trusted."""
    if mode == "skip" and hasattr(backend, "fits"):
        fits = backend.fits([prompts[i] for i in todo], config)
        return [i for i, ok in zip(todo, fits, strict=True) if ok]
    if hasattr(backend, "check_prompts"):
        labels = [f"prompt {i}" for i in todo]
        try:
            backend.check_prompts([prompts[i] for i in todo], config, labels)
        except PromptTooLongError as exc:
            exc.message += " (--on-long-prompt skip leaves such prompts out)"
            raise
    return todo


def run_generate(config: GenerateCommandConfig) -> None:
    """What ``alignkit generate`` does (see the module docstring)."""
    prompts: list[Prompt] = list(config.prompt)
    if config.prompts_file is not None:
        prompts += load_prompts(config.prompts_file)
    out = config.output
    if out is not None:
        check_output(out)
    backend = load_backend(config.model, config.backend)
    sink: PartFile | StreamOutput | None = None
    try:
        gen, keep_seed = config.generation, config.generation.seed is None
        if keep_seed:
            gen = gen.model_copy(update={"seed": secrets.randbits(62)})
        if out is not None and out.exists() and not out.is_file():
            sink = StreamOutput(out)
        elif out is not None:
            sink = PartFile(out)
            header = {"format": PART_FORMAT, **_identity(backend), "generation": gen.model_dump()}
            gen = GenerationConfig(**sink.resume(header, prompts, keep_seed)["generation"])
        done = set(sink.rows) if sink is not None else set()
        todo = [i for i in range(len(prompts)) if i not in done]
        todo = _fitting(backend, prompts, todo, gen, config.on_long_prompt)
        _generate(backend, prompts, todo, gen, sink, config)
    except BaseException as exc:
        _report_failure(exc, sink, len(prompts))
        raise
    finally:
        backend.close()
    skipped = len(prompts) - len(done) - len(todo)
    if skipped:
        print_note(f"skipped {skipped} prompts too long for the model's context")
    if isinstance(sink, PartFile):
        write_text(out, _jsonl([sink.rows[i] for i in sorted(sink.rows)]))
    if sink is not None:
        sink.close(remove=True)
        print_note(f"wrote {len(sink.rows)} completions to {out}")


def _identity(backend) -> dict:
    """What decides the completions besides the settings: the model (its weight files too)."""
    from alignkit.evaluation.cache import model_identity

    return {"model": model_identity(backend) or backend.name}


def _generate(backend, prompts, todo, gen, sink, config) -> None:
    """Generate ``todo`` a chunk at a time; each chunk goes to ``sink`` or is printed."""
    occurrence = occurrences([prompt_key(p) for p in prompts])
    size = chunk_size(config.backend)
    done = len(sink.rows) if sink is not None else 0
    with make_progress(transient=True) as bar:
        task = bar.add_task("generate", total=done + len(todo), completed=done, info="")
        for idx in _chunks(todo, size):
            try:
                completions = generate_indexed(backend, prompts, idx, occurrence, gen)
            except IncompleteGeneration as exc:  # keep the prompts that finished
                _emit(sink, prompts, exc.done)
                raise
            _emit(sink, prompts, completions)
            bar.update(task, advance=len(idx))


def _emit(sink, prompts: list[Prompt], completions: dict[int, Completion]) -> None:
    """Finished completions to the part file, or printed in input order."""
    if sink is not None:
        sink.add({i: _row(prompts[i], c) for i, c in sorted(completions.items())})
    else:
        order = sorted(completions)
        _print_completions([prompts[i] for i in order], [completions[i] for i in order])


def _report_failure(exc: BaseException, sink, total: int) -> None:
    """Say (on one line) what a failed run kept and where; drop a part file holding nothing."""
    if not isinstance(sink, PartFile):
        if sink is not None:
            sink.close()
        return
    sink.close(remove=not sink.rows)
    if not sink.rows:
        return
    note = (
        f"{len(sink.rows)} of {total} completions are kept in {sink.path}; "
        "run the same command again to resume"
    )
    if isinstance(exc, AlignkitError):
        exc.message = f"{exc.message} ({note})"
    else:
        print_note(note)


def _print_completions(prompts: list[Prompt], completions: list[Completion]) -> None:
    console = stdout()
    for prompt, c in zip(prompts, completions, strict=True):
        console.print(Rule(style="dim"))
        console.print(f"[bold cyan]{escape(_prompt_text(prompt))}[/]", highlight=False)
        console.print(escape(c.text), highlight=False)
        console.print(f"[dim]({c.num_tokens} tokens, {c.finish_reason})[/]", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``generate`` to ``app``."""

    @config_command(app, "generate", GenerateCommandConfig)
    def generate(config: GenerateCommandConfig) -> None:
        """Complete prompts with a model: print them, or write JSONL with --output."""
        run_generate(config)
