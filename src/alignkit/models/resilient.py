"""Generation that keeps what finished: failed prompts sent again, finished ones handed back.

Two loops that every long-running generator shares (``alignkit generate``, the evaluation's
call cache, red-team campaigns):

* :func:`send_each` asks a backend that answers prompt by prompt (``generate_each``: the
  OpenAI-compatible backend) for every prompt, and sends the prompts whose request failed
  with an error that may go away (429, 5xx, no connection, after the client's own retries)
  again, up to ``tries`` sends in all. Each prompt ends with its completion or its last error.
* :func:`generate_indexed` asks for the completions of some prompts of a call (``idx``), each
  the one a single call with every prompt would give: for sampled decoding, the k-th copies of
  a prompt are asked for together under ``occurrence_seed(seed, k)`` (the rule of
  :mod:`alignkit.models.sampling`), so resending one prompt gives the draw it would have had.
  When some prompts still have no completion, it raises :class:`IncompleteGeneration`, which
  carries the finished ones: the caller stores them before it gives up, and a rerun asks
  only for the rest.

A backend without ``generate_each`` (a local model) answers a call whole or fails whole; its
error is passed on as it is, or, when earlier calls (other occurrences) finished, as an
:class:`IncompleteGeneration` carrying them.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignkit.errors import AlignkitError, BackendError
from alignkit.models.base import Completion, GenerationConfig, ModelBackend, Prompt
from alignkit.models.sampling import occurrence_seed

DEFAULT_TRIES = 3
"""Sends of a prompt whose request failed with an error that may go away, per run."""

CHUNK_BATCHES = 4
"""A chunk is this many batches (or rounds of concurrent requests): what a failure can lose."""


def chunk_size(options: object) -> int:
    """Prompts generated and stored together by a backend with ``options`` (its batch size or
    its concurrency, whichever is larger, :data:`CHUNK_BATCHES` times; 64 without options)."""
    batch = getattr(options, "batch_size", None)
    if batch is None:
        return 64
    return CHUNK_BATCHES * max(batch, getattr(options, "max_concurrency", 1))


class IncompleteGeneration(BackendError):
    """Some prompts have no completion after their tries. ``done`` maps the index of every
    prompt that finished to its completion; ``error`` is the first failure; ``transient`` says
    whether it may go away (a rerun is worth it)."""

    def __init__(self, error: AlignkitError, done: dict[int, Completion], failed: int) -> None:
        total = failed + len(done)
        super().__init__(f"{failed} of {total} prompts got no completion: {error.message}")
        self.error, self.done = error, done
        self.transient = is_transient(error)


def is_transient(error: BaseException) -> bool:
    """True for failures that may go away if tried later: errors marked ``transient`` (the
    OpenAI-compatible backend's 429 / 5xx / connection failures after its retries) and
    connection or timeout errors."""
    return bool(getattr(error, "transient", False)) or isinstance(
        error, (ConnectionError, TimeoutError)
    )


def send_each(
    backend: ModelBackend,
    prompts: Sequence[Prompt],
    config: GenerationConfig,
    tries: int = DEFAULT_TRIES,
) -> list[Completion | AlignkitError]:
    """Each prompt's completion or last error, transient failures sent up to ``tries`` times
    (``backend`` must have ``generate_each``)."""
    outcomes: list[Completion | AlignkitError] = [None] * len(prompts)  # type: ignore[list-item]
    todo = list(range(len(prompts)))
    for _ in range(max(1, tries)):
        answers = backend.generate_each([prompts[i] for i in todo], config)  # type: ignore[attr-defined]
        for i, outcome in zip(todo, answers, strict=True):
            outcomes[i] = outcome
        todo = [i for i in todo if isinstance(outcomes[i], BaseException)]
        todo = [i for i in todo if is_transient(outcomes[i])]
        if not todo:
            break
    return outcomes


def _groups(
    idx: Sequence[int], occurrence: Sequence[int], config: GenerationConfig
) -> list[tuple[GenerationConfig, list[int]]]:
    """The calls that give ``idx`` their one-call completions: one call when greedy, else one
    per occurrence (the k-th copies under ``occurrence_seed(seed, k)``)."""
    if config.temperature == 0:
        return [(config, list(idx))]
    out = []
    for k in sorted({occurrence[i] for i in idx}):
        settings = config.model_copy(update={"seed": occurrence_seed(config.seed, k)})
        out.append((settings, [i for i in idx if occurrence[i] == k]))
    return out


def generate_indexed(
    backend: ModelBackend,
    prompts: Sequence[Prompt],
    idx: Sequence[int],
    occurrence: Sequence[int],
    config: GenerationConfig,
    tries: int | None = None,
) -> dict[int, Completion]:
    """Completions of ``prompts[i]`` for ``i`` in ``idx`` (``occurrence[i]``: how many earlier
    prompts of the whole call are the same prompt). Raises :class:`IncompleteGeneration` with
    the finished completions when some prompts have none after ``tries`` sends (default: the
    backend's ``options.max_tries``)."""
    if tries is None:
        tries = getattr(getattr(backend, "options", None), "max_tries", DEFAULT_TRIES)
    done: dict[int, Completion] = {}
    failures: dict[int, AlignkitError] = {}
    each = callable(getattr(backend, "generate_each", None))
    for settings, group in _groups(idx, occurrence, config):
        texts = [prompts[i] for i in group]
        if not each:
            try:
                done.update(zip(group, backend.generate(texts, settings), strict=True))
            except AlignkitError as exc:
                if not done:
                    raise
                raise IncompleteGeneration(exc, done, len(idx) - len(done)) from None
            continue
        for i, outcome in zip(group, send_each(backend, texts, settings, tries), strict=True):
            if isinstance(outcome, BaseException):
                failures[i] = outcome
            else:
                done[i] = outcome
    if failures:
        raise IncompleteGeneration(next(iter(failures.values())), done, len(failures))
    return done
