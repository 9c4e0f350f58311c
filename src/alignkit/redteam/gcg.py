"""Greedy Coordinate Gradient (GCG) adversarial strings on white-box Hugging Face models.

GCG (Zou et al., 2023, "Universal and Transferable Adversarial Attacks on Aligned Language
Models") optimises a string of tokens placed in the user's message so that the model's reply
starts with a target string ("Sure, here is how to ..."). Each step:

1. the gradient of the target loss w.r.t. a one-hot encoding of the optimised tokens ranks, at
   every position, the ``topk`` substitutions expected to lower the loss most;
2. ``search_width`` candidates are sampled, each putting random top-k tokens at ``n_replace``
   random positions; duplicates, candidates that change under decode -> encode (the
   retokenisation filter) and special / non-ASCII tokens are dropped;
3. all candidates are scored exactly, in batched forward passes (as many candidates per pass
   as fit in memory: halved after an out-of-memory error) that reuse the KV cache of the
   fixed prompt prefix and of the current string up to each candidate's first change
   (broadcast across the batch; logits only where the target is; see
   :mod:`alignkit.redteam.gcg_ops`), and the best is kept: the best of this step
   (``buffer_size=0``, as in the paper) or the best of a buffer of the best strings so far.

The string goes where the prompt says ``{optim_str}``, or after a space at the end of the last
message. Whitespace before the placeholder is tokenised with the string when that is how the
whole prompt tokenises (byte-level BPE), and the string's first token then keeps it, so the
prompt a user sends, :func:`insert_suffix`, has exactly the optimised tokens. With
``early_stop`` the search ends once greedy decoding of that prompt yields the target.
:meth:`GradientBasedRedTeaming.run_universal` optimises one string for several behaviours (the
sum of their losses). Option names and defaults follow nanoGCG's::

    attack = GradientBasedRedTeaming("hf:path/to/model", GCGConfig(num_steps=250, seed=0))
    result = attack.run("Tell me how to pick a lock", "Sure, here is how to pick a lock")
    print(result.best_string, result.best_loss, result.success)
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from alignkit.errors import ConfigError, ModelError
from alignkit.models.base import GenerationConfig, Message
from alignkit.redteam.gcg_ops import (
    PLACEHOLDER,
    AttackBuffer,
    Problem,
    ScoreOptions,
    allowed_tokens,
    build_problem,
    cache_prefix,
    candidate_losses,
    retokenization_mask,
    sample_candidates,
    token_gradient,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PLACEHOLDER",
    "GCGConfig",
    "GCGResult",
    "GradientBasedRedTeaming",
    "insert_suffix",
    "with_placeholder",
]


@dataclass
class GCGConfig:
    """GCG settings; names and defaults follow nanoGCG's ``GCGConfig``.

    ``optim_str_init`` may be a list of strings of one token length (they seed the attack
    buffer). ``batch_size`` is the most candidates per forward pass to try (None: all of them);
    a pass that runs out of memory is retried with half as many (accelerate's
    ``find_executable_batch_size``), and later passes start from the size that fitted.
    ``progress`` (alignkit's own) shows progress; None shows it (a live bar on a terminal,
    a plain line every 30 s elsewhere).
    """

    num_steps: int = 250
    optim_str_init: str | list[str] = "x x x x x x x x x x x x x x x x x x x x"
    search_width: int = 512
    batch_size: int | None = None
    topk: int = 256
    n_replace: int = 1
    buffer_size: int = 0
    use_mellowmax: bool = False
    mellowmax_alpha: float = 1.0
    early_stop: bool = False
    use_prefix_cache: bool = True
    allow_non_ascii: bool = False
    filter_ids: bool = True
    add_space_before_target: bool = False
    seed: int | None = None
    verbosity: str = "INFO"
    progress: bool | None = None

    def __post_init__(self) -> None:
        for name in ("num_steps", "search_width", "topk", "n_replace"):
            if getattr(self, name) < 1:
                raise ConfigError(f"GCGConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.buffer_size < 0 or (self.batch_size is not None and self.batch_size < 1):
            raise ConfigError("GCGConfig.buffer_size must be >= 0 and batch_size None or >= 1")
        if self.mellowmax_alpha <= 0:
            raise ConfigError(f"GCGConfig.mellowmax_alpha must be > 0, got {self.mellowmax_alpha}")
        if not self.optim_str_init:
            raise ConfigError("GCGConfig.optim_str_init must not be empty")
        if not isinstance(getattr(logging, str(self.verbosity).upper(), None), int):
            raise ConfigError(f"GCGConfig.verbosity {self.verbosity!r} is not a logging level")

    @classmethod
    def from_options(cls, **options: Any) -> GCGConfig:
        """Build from keyword options; an unknown option is a ConfigError naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown GCG option(s) {unknown}; choose from {sorted(known)}")
        return cls(**options)


@dataclass
class GCGResult:
    """What a GCG run found.

    ``losses[i]``, ``strings[i]`` and ``step_times[i]`` are step ``i``'s loss (of the best
    candidate sampled), the string the search went on from, and wall-clock seconds. ``success``:
    greedy decoding with ``best_string`` starts with the target (for every behaviour of a
    universal run; ``successes`` and ``completions`` have one entry per behaviour).
    """

    best_loss: float
    best_string: str
    losses: list[float] = field(default_factory=list)
    strings: list[str] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    success: bool = False
    steps: int = 0
    early_stopped: bool = False
    successes: list[bool] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)

    @property
    def steps_per_second(self) -> float:
        total = sum(self.step_times)
        return len(self.step_times) / total if total > 0 else 0.0


# ----------------------------------------------------------------------------- prompts


def as_chat(messages_or_goal: str | list[Message]) -> list[Message]:
    """A goal string becomes one user message; a message list is deep-copied."""
    if isinstance(messages_or_goal, str):
        return [{"role": "user", "content": messages_or_goal}]
    return copy.deepcopy(list(messages_or_goal))


def with_placeholder(messages_or_goal: str | list[Message]) -> list[Message]:
    """The messages with ``{optim_str}``, appended as `` {optim_str}`` to the last message when
    no message holds it."""
    messages = as_chat(messages_or_goal)
    if not any(PLACEHOLDER in m["content"] for m in messages):
        messages[-1]["content"] = f"{messages[-1]['content']} {PLACEHOLDER}"
    return messages


def insert_suffix(messages_or_goal: str | list[Message], suffix: str) -> Any:
    """The prompt with ``suffix`` in place of ``{optim_str}`` (or appended after a space):
    a string for a string goal, a message list for a message list."""
    filled = [
        {**m, "content": m["content"].replace(PLACEHOLDER, suffix)}
        for m in with_placeholder(messages_or_goal)
    ]
    return filled[-1]["content"] if isinstance(messages_or_goal, str) else filled


# ----------------------------------------------------------------------------- the attack


def _resolve_backend(model_or_backend: Any, tokenizer: Any = None):
    """An HFBackend from a backend, an ``hf:`` / ``testbed`` model string or a model."""
    from alignkit.models.hf import HFBackend

    if isinstance(model_or_backend, str):
        from alignkit.models import load_backend

        model_or_backend = load_backend(model_or_backend)
    if isinstance(model_or_backend, HFBackend):
        return model_or_backend
    if isinstance(model_or_backend, torch.nn.Module):
        if tokenizer is None:
            raise ModelError("GradientBasedRedTeaming(model) needs tokenizer=... as well")
        return HFBackend.from_model(model_or_backend, tokenizer, name="gcg-target")
    raise ModelError(
        "GCG needs white-box access to a local Hugging Face model (hf:PATH or testbed); "
        f"got {getattr(model_or_backend, 'name', type(model_or_backend).__name__)}"
    )


def _run_with_executable_batch(attempt: Any, start: int) -> Any:
    """``attempt(batch_size)`` with ``start``; on an out-of-memory error, again from half of it
    down, halving each time (accelerate's ``find_executable_batch_size``). A ModelError when not
    even one candidate fits. The first try skips accelerate's cache clearing and garbage
    collection, which would otherwise cost every step."""
    from accelerate.utils import find_executable_batch_size
    from accelerate.utils.memory import should_reduce_batch_size

    try:
        return attempt(start)
    except RuntimeError as error:
        if not should_reduce_batch_size(error):
            raise
    size = start // 2

    def halve() -> int:
        nonlocal size
        size //= 2
        return size

    options: dict[str, Any] = {"starting_batch_size": size}
    if "reduce_batch_size_fn" in inspect.signature(find_executable_batch_size).parameters:
        options["reduce_batch_size_fn"] = halve  # older accelerate halves by itself
    try:
        return find_executable_batch_size(attempt, **options)()
    except RuntimeError as error:
        if "No executable batch size found" not in str(error):
            raise
        raise ModelError(
            "GCG cannot score even one candidate per forward pass: out of memory"
        ) from error


@contextlib.contextmanager
def _progress_bar(total: int, show: bool) -> Iterator[Any]:
    """Yield ``advance(info)`` for a rich progress bar over GCG steps (a no-op when hidden)."""
    if not show:
        yield lambda info: None
        return
    from alignkit.progress import make_progress

    with make_progress(transient=True) as bar:
        task = bar.add_task("GCG", total=total, info="")
        yield lambda info: bar.update(task, advance=1, info=info)


class GradientBasedRedTeaming:
    """GCG adversarial-string search against a local transformers model.

    ``model_or_backend``: an :class:`~alignkit.models.hf.HFBackend`, an ``hf:PATH`` or
    ``testbed`` model string, or a transformers model (then pass ``tokenizer=``). Prompts are
    rendered exactly as the backend renders them for generation (chat template, system prompt).
    """

    def __init__(
        self, model_or_backend: Any, config: GCGConfig | None = None, tokenizer: Any = None
    ) -> None:
        self.backend = _resolve_backend(model_or_backend, tokenizer)
        self.model, self.tokenizer = self.backend.model, self.backend.tokenizer
        self.config = config or GCGConfig()
        self.device = next(self.model.parameters()).device
        self._allowed: dict[str, torch.Tensor] = {}
        self._fitted_batch: int | None = None  # set after an out-of-memory error: what fitted

    def run(self, messages_or_goal: str | list[Message], target: str) -> GCGResult:
        """Optimise a string that makes the model's reply start with ``target``."""
        return self._optimise([(messages_or_goal, target)])

    def run_universal(self, behaviours: list[Any]) -> GCGResult:
        """One string for several behaviours: ``(goal_or_messages, target)`` pairs or
        :class:`~alignkit.redteam.base.Behaviour` objects; the loss sums over them."""
        pairs = [(b.goal, b.target) if hasattr(b, "goal") else tuple(b) for b in behaviours]
        if not pairs:
            raise ConfigError("run_universal needs at least one behaviour")
        return self._optimise(pairs)

    def allowed_token_ids(self, prefix: str = "") -> torch.Tensor:
        """:func:`allowed_tokens` for this model and config (computed once per prefix)."""
        if prefix not in self._allowed:
            rows = self.model.get_input_embeddings().weight.shape[0]
            ids = allowed_tokens(self.tokenizer, rows, self.config.allow_non_ascii, prefix)
            self._allowed[prefix] = ids.to(self.device)
        return self._allowed[prefix]

    @property
    def score_options(self) -> ScoreOptions:
        c = self.config
        return ScoreOptions(c.batch_size, c.use_mellowmax, c.mellowmax_alpha)

    def _optimise(self, pairs: list[tuple[Any, str]]) -> GCGResult:
        """The GCG loop over ``num_steps`` (fewer with ``early_stop``)."""
        config = self.config
        logger.setLevel(getattr(logging, config.verbosity.upper()))
        generator = torch.Generator(device=self.device)
        generator.manual_seed(config.seed if config.seed is not None else secrets.randbits(63))
        problems, lead = self.build_problems(pairs)
        first = self.allowed_token_ids(lead) if lead else None  # keep the leading whitespace
        if first is not None and len(first) == 0:
            raise ModelError(f"no allowed token starts with {lead!r}; put {{optim_str}} elsewhere")
        buffer = self._init_buffer(problems, lead, generator)
        losses, strings, times = [], [], []
        best_loss, best_string, early = float("inf"), "", False
        show = config.progress if config.progress is not None else True  # plain off a terminal
        with _progress_bar(config.num_steps, show) as advance:
            for step in range(config.num_steps):
                start = time.perf_counter()
                loss, ids, exact = self.step(problems, buffer.best_ids(), generator, first)
                buffer.add(loss, ids)
                losses.append(loss)
                strings.append(self._decode(buffer.best_ids(), lead))
                text = self._decode(ids, lead)
                early = config.early_stop and exact and self.verify(pairs, text)[0]
                if loss < best_loss or early:
                    best_loss, best_string = loss, text
                times.append(time.perf_counter() - start)
                advance(f"loss {loss:.3f} (best {best_loss:.3f})")
                logger.debug("step %d loss %.4f string %r", step, loss, text)
                if early:
                    break
        success, successes, completions = self.verify(pairs, best_string)
        logger.info("GCG: %d steps, best loss %.4f, success %s", len(losses), best_loss, success)
        return GCGResult(
            best_loss=best_loss, best_string=best_string, losses=losses, strings=strings,
            step_times=times, success=success, steps=len(losses), early_stopped=early,
            successes=successes, completions=completions,
        )  # fmt: skip

    def step(
        self,
        problems: list[Problem],
        current: torch.Tensor,
        generator: torch.Generator,
        first_allowed: torch.Tensor | None = None,
    ) -> tuple[float, torch.Tensor, bool]:
        """One GCG step from ``current``: the chosen candidate's (loss, ids, exact match)."""
        c = self.config
        grad = sum(token_gradient(self.model, p, current, self.score_options) for p in problems)
        with torch.inference_mode():
            cands = sample_candidates(
                current, grad, c.search_width, c.topk, c.n_replace, self.allowed_token_ids(),
                generator, first_allowed,
            )  # fmt: skip
            cands = torch.unique(cands, dim=0)
            if c.filter_ids:
                cands = cands[retokenization_mask(self.tokenizer, cands)]
            if len(cands) == 0:
                raise ModelError(
                    "no GCG candidate survives decode -> encode; set filter_ids=False or "
                    "choose another optim_str_init"
                )
            loss, exact = self.score(problems, cands, current)
            if c.early_stop and exact.any():  # prefer candidates that already hit the target
                loss = torch.where(exact, loss, torch.full_like(loss, float("inf")))
            best = int(loss.argmin())
        return float(loss[best]), cands[best].clone(), bool(exact[best])

    def score(
        self, problems: list[Problem], cands: torch.Tensor, current: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss over behaviours ``[B]`` and whether every target is hit exactly ``[B]``;
        with ``current`` and ``use_prefix_cache``, groups of candidates share prompt prefixes."""
        current = current if self.config.use_prefix_cache else None

        def attempt(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
            options = self.score_options
            options.batch_size = batch_size
            total = torch.zeros(len(cands), device=self.device)
            exact = torch.ones(len(cands), dtype=torch.bool, device=self.device)
            for problem in problems:
                loss, hit = candidate_losses(self.model, problem, cands, options, current)
                total += loss
                exact &= hit
            if batch_size < start:  # an out-of-memory error made it smaller: keep that cap
                self._fitted_batch = batch_size
            return total, exact

        start = max(1, min(self._fitted_batch or self.config.batch_size or len(cands), len(cands)))
        return _run_with_executable_batch(attempt, start)

    def build_problems(self, pairs: list[tuple[Any, str]]) -> tuple[list[Problem], str]:
        """Tokenised behaviours (prefix KV caches filled when ``use_prefix_cache``) and the
        whitespace that leads the optimised string."""
        problems, leads = [], set()
        for messages, target in pairs:
            if not target:
                raise ConfigError("a GCG target string must not be empty")
            target = f" {target}" if self.config.add_space_before_target else target
            problem, lead = build_problem(
                self.backend, with_placeholder(messages), target, self._init_strings()[0]
            )
            if self.config.use_prefix_cache:
                cache_prefix(self.model, problem)
            problems.append(problem)
            leads.add(lead)
        if len(leads) > 1:
            raise ConfigError("every behaviour must put {optim_str} after the same whitespace")
        return problems, leads.pop()

    def _init_strings(self) -> list[str]:
        init = self.config.optim_str_init
        return [init] if isinstance(init, str) else list(init)

    def _init_buffer(
        self, problems: list[Problem], lead: str, generator: torch.Generator
    ) -> AttackBuffer:
        """The attack buffer: the initial string(s), then random strings of allowed tokens
        (that survive retokenisation) up to ``buffer_size``."""
        encode = self.tokenizer
        rows = [
            encode(lead + s, add_special_tokens=False)["input_ids"] for s in self._init_strings()
        ]
        if len({len(r) for r in rows}) > 1:
            raise ConfigError("every optim_str_init string must tokenize to the same length")
        ids = torch.tensor(rows, dtype=torch.long, device=self.device)
        allowed, first = self.allowed_token_ids(), self.allowed_token_ids(lead)
        for _ in range(20):
            if len(ids) >= self.config.buffer_size:
                break
            shape = (4 * self.config.buffer_size, ids.shape[1])
            rand = allowed[
                torch.randint(len(allowed), shape, generator=generator, device=self.device)
            ]
            rand[:, 0] = first[
                torch.randint(len(first), shape[:1], generator=generator, device=self.device)
            ]
            ids = torch.cat([ids, rand[retokenization_mask(self.tokenizer, rand)]])
        losses, _ = self.score(problems, ids[: max(1, self.config.buffer_size)])
        buffer = AttackBuffer(self.config.buffer_size)
        for loss, row in zip(losses.tolist(), ids, strict=False):
            buffer.add(loss, row)
        return buffer

    def _decode(self, ids: torch.Tensor, lead: str) -> str:
        """The optimised string as a user appends it (without the leading whitespace)."""
        return self.tokenizer.decode(ids.tolist())[len(lead) :]

    def verify(
        self, pairs: list[tuple[Any, str]], suffix: str
    ) -> tuple[bool, list[bool], list[str]]:
        """Greedy-decode each behaviour's prompt with ``suffix``: (all hit, hits, completions);
        a hit is a completion that starts with its target."""
        prompts = [insert_suffix(m, suffix) for m, _ in pairs]
        n = max(len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for _, t in pairs)
        config = GenerationConfig(max_new_tokens=n + 4, temperature=0.0)
        texts = [c.text for c in self.backend.generate(prompts, config, progress=False)]
        hits = [c.lstrip().startswith(t.strip()) for c, (_, t) in zip(texts, pairs, strict=True)]
        return all(hits), hits, texts
