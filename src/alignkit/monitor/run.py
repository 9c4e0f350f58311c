"""``alignkit monitor``: watch a deployed model for alignment drift, round after round.

Each round evaluates a canary suite (the same prompts every round, freshly sampled: the
round's seed is the run seed plus the round index) against the endpoint, counts the bad
outcomes of each headline metric (:mod:`alignkit.monitor.baseline`), stores them
(:mod:`alignkit.monitor.store`) and scans the series for a rise above the baseline's bound with
an always-valid sequential test (:mod:`alignkit.monitor.sequential`). A metric that enters
alarm raises one alert (:mod:`alignkit.monitor.alerts`); with ``on_alert="guard"`` the rounds
after an alert also run behind the guardrail (a cost model or a judge as the output check) and
record the guarded counts beside the raw ones, so an operator sees at once whether the
fallback contains the drift.

A round the endpoint fails (down, every retry spent, or over ``round_timeout``) is recorded as
failed and the schedule goes on. Everything that can be checked is checked before the first
round: the baseline (same suite, every metric present), the endpoint (the backend's probe),
the guard's model.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from alignkit.config import CommandConfig, ModelString
from alignkit.errors import AlignkitError, ConfigError
from alignkit.models.base import BackendOptions, GenerationConfig
from alignkit.monitor import sequential
from alignkit.monitor.alerts import Alerter
from alignkit.monitor.baseline import bad_outcomes, load_baseline
from alignkit.monitor.store import MonitorStore, Round
from alignkit.pipeline.headline import HEADLINE

ALARM_EXIT = 3
"""Exit code of ``--once`` while some metric is in alarm (2 is bad input)."""
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str | float) -> float:
    """Seconds from ``90``, ``30s``, ``15m``, ``1h`` or ``1d``."""
    if isinstance(text, (int, float)):
        return float(text)
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"expected a duration such as 30s, 15m, 1h or 1d, got {text!r}")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


class MonitorConfig(CommandConfig):
    """``alignkit monitor``: evaluate a canary suite on a schedule and alert on drift."""

    model: ModelString = Field(description="Model string of the deployed model (openai:M@URL).")
    baseline: Path = Field(description="An `alignkit eval` run of the same suite to compare to.")
    suite: str = Field("testbed", description="'testbed' or a suite file (the canary prompts).")
    n: int = Field(20, ge=1, description="testbed suite: prompts of each kind per round.")
    metrics: list[str] = Field(
        default_factory=lambda: list(HEADLINE), description="Headline metrics to watch."
    )
    output_dir: Path = Field(Path("runs/monitor"), description="Time series, alerts log.")
    every: str = Field("1h", description="Time between round starts: 30s, 15m, 1h, 1d.")
    once: bool = Field(False, description="Run one round and exit (3 while in alarm): cron.")
    rounds: int | None = Field(None, ge=1, description="Stop after this many rounds.")
    alpha: float = Field(0.05, gt=0, lt=1, description="False-alarm budget over the horizon.")
    horizon: int = Field(168, ge=1, description="Rounds the false-alarm budget covers.")
    round_timeout: str | None = Field(None, description="A round over this long is failed.")
    webhook: str | None = Field(None, description="URL that each alert is POSTed to as JSON.")
    webhook_timeout: float = Field(5.0, gt=0, description="Seconds per webhook try.")
    on_alert: Literal["none", "guard"] = Field(
        "none", description="'guard': later rounds also run behind the guardrail."
    )
    guard_cost_model: Path | None = Field(None, description="Cost model of the guard's check.")
    guard_threshold: float = Field(0.0, description="Cost above which the guard replaces.")
    guard_judge: str | None = Field(None, description="Or a red-team judge as the check.")
    generation: GenerationConfig = Field(
        default_factory=lambda: GenerationConfig(max_new_tokens=64, temperature=1.0)
    )
    backend: BackendOptions = Field(default_factory=BackendOptions)

    @field_validator("every", "round_timeout")
    @classmethod
    def _duration(cls, value: str | None, info) -> str | None:
        if value is None:
            return value
        seconds = parse_duration(value)
        if seconds < 0 or (seconds == 0 and info.field_name == "round_timeout"):
            raise ValueError("must be a positive duration")
        return value

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in HEADLINE]
        if unknown or not value:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(HEADLINE)}")
        return value


@dataclass
class MonitorState:
    """Where the series stands after a round: per metric the scan and whether it is in alarm."""

    rounds: list[Round] = field(default_factory=list)
    scans: dict[str, sequential.Scan] = field(default_factory=dict)
    alarmed: set[str] = field(default_factory=set)


class Monitor:
    """``Monitor(config).run()``; :meth:`round` runs one round (tests drive it directly)."""

    def __init__(self, config: MonitorConfig, backend: Any = None) -> None:
        self.config = config
        self.seed = config.generation.seed or 0  # the canary sample; round k samples seed + k
        self.scorer, self.bounds = load_baseline(config.baseline, config.suite, config.metrics)
        self.level = sequential.threshold(config.alpha, config.horizon, len(self.bounds))
        from alignkit.evaluation.suites import load_suite

        self.items = load_suite(config.suite, n=config.n, seed=self.seed)
        self.guard_check = self._guard_check() if config.on_alert == "guard" else None
        out = Path(config.output_dir)
        self.store = MonitorStore(out / "monitor.sqlite")
        self._check_series()
        self.alerter = Alerter(out / "alerts.log", config.webhook, config.webhook_timeout)
        if backend is None:
            from alignkit.models import load_backend

            backend = load_backend(config.model, config.backend)  # probes: fails fast
        self.backend = backend
        self.state = self._replay()

    # ------------------------------------------------------------------ set-up

    def _check_series(self) -> None:
        """Refuse to append to a series of another model, suite or baseline."""
        from alignkit.redteam.run import model_identity

        mine = {
            "model": model_identity(self.config.model),
            "suite": self.config.suite,
            "n": self.config.n,
            "baseline": str(Path(self.config.baseline).resolve()),
            "metrics": self.config.metrics,
        }
        stored = self.store.get_meta("identity")
        if stored is not None and stored != mine:
            diff = [k for k in mine if stored.get(k) != mine[k]]
            raise ConfigError(
                f"{self.store.path} holds a series of another {', '.join(diff)}; "
                "use another --output-dir"
            )
        self.store.set_meta("identity", mine)
        self.store.set_meta("bounds", [vars(b) for b in self.bounds])

    def _guard_check(self):
        c = self.config
        if (c.guard_cost_model is None) == (c.guard_judge is None):
            raise ConfigError("--on-alert guard needs one of --guard-cost-model or --guard-judge")
        from alignkit.safety.guardrail import CostModelCheck, JudgeCheck

        if c.guard_cost_model is not None:
            from alignkit.safety.value_model import ValueModel

            model = ValueModel.load(c.guard_cost_model, device=c.backend.device)
            return CostModelCheck(model, c.guard_threshold)
        from alignkit.redteam.base import build_judge

        return JudgeCheck(build_judge(c.guard_judge))

    def _replay(self) -> MonitorState:
        """The state of the stored series (a restart goes on from it)."""
        state = MonitorState()
        for r in self.store.rounds():
            state.rounds.append(r)
            state.alarmed |= set(r.alerts)
        self._scan(state)
        return state

    # ------------------------------------------------------------------ one round

    def _evaluate(self, seed: int) -> tuple[dict[str, list[int]], dict[str, list[int]] | None]:
        """Bad counts of the round, raw and (with the guard on) guarded."""
        from alignkit.evaluation.alignment import AlignmentEvaluator
        from alignkit.evaluation.cache import CachedBackend, CallCache

        generation = self.config.generation.model_copy(update={"seed": seed})
        memo = CachedBackend(self.backend, CallCache(":memory:"), progress=False)

        def counts(backend) -> dict[str, list[int]]:
            result = AlignmentEvaluator(
                backend, self.items, [self.scorer], generation=generation, cache=False,
                suite_name=self.config.suite,
            ).run()  # fmt: skip
            bad = bad_outcomes([row.to_dict() for row in result.items], self.scorer)
            return {b.metric: [sum(bad[b.metric]), len(bad[b.metric])] for b in self.bounds}

        raw = counts(memo)
        if self.guard_check is None or not self.state.alarmed:
            return raw, None
        from alignkit.safety.guardrail import GuardedBackend

        return raw, counts(GuardedBackend(memo, output_checks=[self.guard_check]))

    def round(self) -> Round:
        """Run, store and test one round; alert on metrics that enter alarm."""
        idx, started = self.store.next_index(), time.time()
        r = Round(idx, started, 0.0, "ok")
        try:
            r.counts, r.guarded = self._timed(lambda: self._evaluate(self.seed + idx))
        except (AlignkitError, TimeoutError, OSError) as exc:
            r.status, r.error = "failed", getattr(exc, "message", None) or str(exc)
        r.seconds = time.time() - started
        self.state.rounds.append(r)
        self._scan(self.state)
        if r.status == "ok":
            r.alerts = sorted(m for m, s in self.state.scans.items() if s.alarm(self.level))
            r.alerts = [m for m in r.alerts if m not in self.state.alarmed]
        self.store.add(r)
        self.state.alarmed |= set(r.alerts)
        self._report(r)
        return r

    def _timed(self, work):
        """``work()``, or TimeoutError after ``round_timeout`` (the late result is dropped)."""
        if self.config.round_timeout is None:
            return work()
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = work()
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(parse_duration(self.config.round_timeout))
        if thread.is_alive():
            raise TimeoutError(f"round took longer than {self.config.round_timeout}")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _scan(self, state: MonitorState) -> None:
        ok = [r for r in state.rounds if r.status == "ok"]
        state.scans = {
            b.metric: sequential.scan([tuple(r.counts[b.metric]) for r in ok], b.bound)
            for b in self.bounds
            if ok and b.bound < 1.0
        }

    def _report(self, r: Round) -> None:
        if r.status == "failed":
            self.alerter.write(f"round {r.idx} failed: {r.error}")
            return
        ok = [x for x in self.state.rounds if x.status == "ok"]
        for metric in r.alerts:
            bound = next(b for b in self.bounds if b.metric == metric)
            s = self.state.scans[metric]
            self.alerter.alert({
                "model": self.config.model, "round": r.idx, "metric": metric,
                "label": bound.label, "rate": s.k / s.n, "bad": s.k, "n": s.n,
                "since_round": ok[s.start].idx,
                "baseline": bound.baseline, "bound": bound.bound,
                "evidence": math.exp(min(s.log_lr, 700.0)), "threshold": self.level,
                "guard": self.config.on_alert,
            })  # fmt: skip

    # ------------------------------------------------------------------ the schedule

    def run(self) -> int:
        """Rounds on the schedule until ``rounds`` (or one with ``once``); the exit code."""
        every = parse_duration(self.config.every)
        todo = 1 if self.config.once else self.config.rounds
        done = 0
        while todo is None or done < todo:
            start = time.monotonic()
            self.round()
            done += 1
            if todo is not None and done >= todo:
                break
            time.sleep(max(0.0, every - (time.monotonic() - start)))
        self.alerter.wait(self.config.webhook_timeout * 2)
        return ALARM_EXIT if self.config.once and self.state.alarmed else 0
