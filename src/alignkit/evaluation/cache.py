"""A persistent cache of model calls, so evaluations are cheap to repeat and resume after a crash.

A call is keyed on what decides its answer: the model's identity (its name or server, extra
replicas left out; the size and modification time of its weight files; the backend options that
change outputs, such as the chat template and system prompt), the operation, the prompt (and
completion, for log-probs) and the generation settings. A sampled completion's key also holds
the sampling rule's version and the prompt's occurrence among equal prompts of the call, the
two things besides the seed that its randomness depends on (:mod:`alignkit.models.sampling`).
Operational settings (batch size, device, concurrency, timeouts, retries) are not part of the
key, and sampled text does not depend on them either: a rerun with another batch size reuses
every entry, and a half-filled cache gives the same completions as an empty one.
:class:`CachedBackend` wraps any backend, asks it only for what the cache lacks, in chunks, and
stores each chunk as soon as it returns: a run that dies loses at most the chunk in flight, and
rerunning it repeats no finished call.

A backend whose weights cannot be identified (a model built in memory) is not cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignkit.errors import DataError
from alignkit.models.base import Completion, GenerationConfig, ModelBackend, Prompt, TokenLogprobs
from alignkit.models.resilient import IncompleteGeneration, generate_indexed
from alignkit.models.sampling import SAMPLING_RULE, occurrences, prompt_key
from alignkit.paths import cache_dir
from alignkit.progress import counter

_OUTPUT_OPTIONS = ("use_chat_template", "system_prompt", "dtype", "api")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".json", ".model")


def _files_signature(path: Path) -> list:
    """(name, size, mtime) of the files that define a local model directory."""
    if path.is_file():
        stat = path.stat()
        return [[path.name, stat.st_size, stat.st_mtime_ns]]
    if not path.is_dir():
        return []
    out = []
    for file in sorted(path.iterdir()):
        if file.is_file() and file.suffix in _WEIGHT_SUFFIXES:
            stat = file.stat()
            out.append([file.name, stat.st_size, stat.st_mtime_ns])
    return out


def model_identity(backend: ModelBackend) -> str | None:
    """A string that changes whenever the backend's answers could change, or None if unknown."""
    spec = getattr(backend, "spec", None)
    if spec is None:
        return None
    options = getattr(backend, "options", None)
    opts = {k: getattr(options, k, None) for k in _OUTPUT_OPTIONS} if options else {}
    files: dict[str, list] = {}
    if spec.kind == "hf":
        files["model"] = _files_signature(Path(spec.path))
        if spec.adapter:
            files["adapter"] = _files_signature(Path(spec.adapter))
    return json.dumps({"model": spec.identity, "options": opts, "files": files}, sort_keys=True)


def call_key(identity: str, operation: str, *parts: Any) -> str:
    """The cache key of one call (sha256 of its canonical JSON)."""
    blob = json.dumps([identity, operation, *parts], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class CallCache:
    """A SQLite table of ``key -> JSON value``; safe to share between threads."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else cache_dir() / "eval-calls.sqlite"
        self._lock = threading.Lock()
        with self._errors():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT)")
            self._db.execute("SELECT key, value FROM calls LIMIT 1").fetchall()
            self._db.commit()

    @contextlib.contextmanager
    def _errors(self):
        """A file that is not a usable SQLite database (damaged, not a database, not writable)
        becomes one :class:`~alignkit.errors.DataError` naming it, not a traceback."""
        try:
            yield
        except (sqlite3.DatabaseError, OSError) as exc:
            raise DataError(
                f"call cache {str(self.path)!r} cannot be used ({exc}); delete it or give "
                "another --cache-path"
            ) from None

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock, self._errors():
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, value FROM calls WHERE key IN ({marks})", chunk
                ).fetchall()
                found.update((k, json.loads(v)) for k, v in rows)
        return found

    def put_many(self, items: dict[str, Any]) -> None:
        with self._lock, self._errors():
            self._db.executemany(
                "INSERT OR REPLACE INTO calls (key, value) VALUES (?, ?)",
                [(k, json.dumps(v, ensure_ascii=False)) for k, v in items.items()],
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _prompt_key(prompt: Prompt) -> Any:
    return prompt if isinstance(prompt, str) else [dict(m) for m in prompt]


class CachedBackend:
    """A :class:`ModelBackend` that answers from a :class:`CallCache` where it can.

    ``hits`` and ``misses`` count calls served from the cache and sent to the model.
    """

    def __init__(
        self,
        backend: ModelBackend,
        cache: CallCache,
        chunk_size: int = 64,
        progress: bool | None = None,
    ) -> None:
        self.backend = backend
        self.progress = progress
        self.cache = cache
        self.chunk_size = chunk_size
        self.identity = model_identity(backend)
        self.name = backend.name
        self.supports_logprobs = backend.supports_logprobs
        self.hits = 0
        self.misses = 0

    def _through_cache(self, keys: list[str], call, decode, encode) -> list:
        """Values for ``keys``: cached ones, then the rest from ``call(indices)`` chunk by chunk."""
        found = self.cache.get_many(keys)
        todo = [i for i, k in enumerate(keys) if k not in found]
        stored = 0  # calls this call put in the cache
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        # progress over the calls sent to the model, when there are several chunks of them
        show = self.progress is not False and len(todo) > self.chunk_size
        with counter(f"model calls ({self.name})", len(todo), show) as advance:
            for start in range(0, len(todo), self.chunk_size):
                chunk = todo[start : start + self.chunk_size]
                try:
                    results = call(chunk)
                except IncompleteGeneration as exc:  # keep what finished; a rerun asks the rest
                    self.cache.put_many({keys[i]: encode(c) for i, c in exc.done.items()})
                    kept = stored + len(exc.done)
                    exc.message += (
                        f" ({kept} of {len(todo)} new model calls are kept in the call cache "
                        f"{self.cache.path}; run the same command again to resume)"
                    )
                    raise
                fresh = {keys[i]: encode(r) for i, r in zip(chunk, results, strict=True)}
                self.cache.put_many(fresh)
                stored += len(fresh)
                found.update(fresh)
                advance(len(chunk))
        return [decode(found[k]) for k in keys]

    def generate(
        self, prompts: Sequence[Prompt], config: GenerationConfig | None = None
    ) -> list[Completion]:
        """Completions from the cache where it has them; the rest from the backend.

        A sampled prompt's k-th copy in the call is asked for on its own, in a call of k-th
        copies under ``occurrence_seed(seed, k)``, which by the sampling rule is the draw it
        would have had in one call with every copy.
        """
        config = config or GenerationConfig()
        if self.identity is None:
            return self.backend.generate(prompts, config)
        settings = config.model_dump()
        sampled = config.temperature > 0
        occurrence = (
            occurrences([prompt_key(p) for p in prompts]) if sampled else [0] * len(prompts)
        )
        keys = [
            call_key(self.identity, "generate", _prompt_key(p), settings)
            if not sampled
            else call_key(self.identity, "generate", _prompt_key(p), settings, SAMPLING_RULE, k)
            for p, k in zip(prompts, occurrence, strict=True)
        ]

        def call(idx: list[int]) -> list[Completion]:
            out = generate_indexed(self.backend, prompts, idx, occurrence, config)
            return [out[i] for i in idx]

        return self._through_cache(
            keys,
            call,
            lambda v: Completion(**v),
            lambda c: {
                "text": c.text,
                "finish_reason": c.finish_reason,
                "num_tokens": c.num_tokens,
                "token_logprobs": c.token_logprobs,
            },
        )

    def logprobs(
        self, prompts: Sequence[Prompt], completions: Sequence[str]
    ) -> list[TokenLogprobs]:
        if self.identity is None:
            return self.backend.logprobs(prompts, completions)
        keys = [
            call_key(self.identity, "logprobs", _prompt_key(p), c)
            for p, c in zip(prompts, completions, strict=True)
        ]
        return self._through_cache(
            keys,
            lambda idx: self.backend.logprobs(
                [prompts[i] for i in idx], [completions[i] for i in idx]
            ),
            lambda v: TokenLogprobs(**v),
            lambda t: {"tokens": list(t.tokens), "logprobs": list(t.logprobs)},
        )

    def close(self) -> None:
        self.backend.close()

    def __getattr__(self, name: str) -> Any:  # tokenizer, model, ... of the wrapped backend
        return getattr(self.backend, name)
