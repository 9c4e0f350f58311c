"""Red-team campaigns: the round loop, caps, error isolation, kill -9 and resume, the evaluator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from alignkit.errors import BackendError, ConfigError, DataError
from alignkit.models.base import Completion
from alignkit.redteam.base import AttackMeta, Behaviour, Candidate, register_judge
from alignkit.redteam.campaign import RedTeaming
from alignkit.redteam.evaluator import RedTeamingEvaluator
from alignkit.redteam.store import CampaignStore

ATTACK_MODULE = '''
import time
from alignkit.redteam.base import AttackMeta, Candidate, register_attack


@register_attack
class Stepwise:
    """Three rounds of two candidates per behaviour; the third round asks nicely."""

    meta = AttackMeta("stepwise", "iterative", "test attack: fixed rounds")

    def __init__(self, context, rounds=3):
        self.rounds = rounds

    def propose(self, behaviour, history, rng):
        step = 1 + max((a.step for a in history), default=-1)
        if step >= self.rounds:
            return []
        words = ["please", "now", "kindly", "quickly"]
        return [Candidate(f"{behaviour.goal} ({rng.choice(words)} {step}.{i})") for i in range(2)]


class Slow:
    """A target that answers after a pause (so a test can kill the campaign mid-way)."""

    def __init__(self, backend, pause):
        self.backend, self.pause = backend, pause
        self.name, self.supports_logprobs = backend.name, False

    def generate(self, prompts, config=None):
        time.sleep(self.pause)
        return self.backend.generate(prompts, config)

    def close(self):
        pass


def campaign(store, target, pause=0.0):
    from alignkit.redteam.behaviours import testbed_behaviours
    from alignkit.redteam.campaign import RedTeaming

    return RedTeaming(
        Slow(target, pause), ["stepwise"], testbed_behaviours(n=6), store=store,
        early_stop=False, progress=False,
    )


if __name__ == "__main__":
    import sys
    from alignkit.models import load_backend

    campaign(sys.argv[1], load_backend("testbed"), pause=0.6).run()
'''


class Fake:
    """A scripted target: complies when the prompt says "please", fails on "boom"."""

    name = "fake"
    supports_logprobs = False

    def __init__(self, transient_failures: int = 0) -> None:
        self.calls = 0
        self.transient = transient_failures

    def generate(self, prompts, config=None):
        self.calls += 1
        if any("boom" in p for p in prompts):
            raise BackendError("HTTP 500 from the server (after retries)")
        return [Completion("Sure, here is how." if "please" in p else "I can't.") for p in prompts]

    def close(self):
        pass


@register_judge("sure")
class SureJudge:
    name = "sure"

    def __init__(self, **_):
        pass

    def judge(self, behaviours, prompts, responses):
        return [1.0 if r.startswith("Sure") else 0.0 for r in responses]


class Scripted:
    """Proposes given prompts in round 0 only."""

    meta = AttackMeta("scripted", "template", "test attack: fixed prompts")

    def __init__(self, prompts):
        self.prompts = prompts

    def propose(self, behaviour, history, rng):
        return (
            []
            if history
            else [Candidate(f"{p} {behaviour.goal}", p.split()[0]) for p in self.prompts]
        )


BEHAVIOURS = [Behaviour(f"b{i}", f"goal {i}", category="cat" + str(i % 2)) for i in range(4)]


def test_round_loop_isolates_errors_and_records_every_attempt(tmp_path):
    store = CampaignStore(tmp_path / "c.sqlite")
    target = Fake()
    attack = Scripted(["plain ask", "please ask", "boom ask"])
    summary = RedTeaming(
        target, [attack], BEHAVIOURS, store=store, judge="sure", early_stop=False
    ).run()
    assert summary.attempts == 12 and summary.successes == 4 and summary.errors == 4
    rows = store.attempts()
    failed = [a for a in rows if a.error]
    assert len(failed) == 4 and all("HTTP 500" in a.error and a.response is None for a in failed)
    assert all(a.success == (a.prompt.startswith("please")) for a in rows)
    assert summary.done == {"exhausted": 4}
    results = RedTeamingEvaluator(store).to_dict()
    assert results["asr"]["scripted"]["value"] == 1.0  # every behaviour broken by "please"
    assert results["queries_per_success"]["scripted"] == 2.0
    assert results["errors"] == 4


def test_early_stop_budget_and_query_caps(tmp_path):
    attack = Scripted(["please a", "please b", "please c"])
    store = CampaignStore(tmp_path / "a.sqlite")
    RedTeaming(Fake(), [attack], BEHAVIOURS, store=store, judge="sure", max_attempts=2).run()
    assert len(store.attempts()) == 8  # the budget cuts each behaviour's round to 2
    capped = CampaignStore(tmp_path / "b.sqlite")
    summary = RedTeaming(
        Fake(), [attack], BEHAVIOURS, store=capped, judge="sure", max_queries=5
    ).run()
    # rounds are never cut: one whole round of 3 fits in 5 queries, a second does not
    assert capped.count() == 3 and summary.stopped == "max_queries"


def test_attack_behaviours_limits_an_attack_to_the_first_n(tmp_path):
    store = CampaignStore(tmp_path / "a.sqlite")
    limited = {"scripted": 2}
    attack = Scripted(["please a"])
    RedTeaming(
        Fake(), [attack], BEHAVIOURS, store=store, judge="sure", attack_behaviours=limited
    ).run()
    assert sorted({a.behaviour_id for a in store.attempts()}) == ["b0", "b1"]
    with pytest.raises(ConfigError, match="attack_behaviours: \\['gcg'\\] are not attacks"):
        RedTeaming(Fake(), [attack], BEHAVIOURS, store=tmp_path / "b.sqlite", judge="sure",
                   attack_behaviours={"gcg": 1})  # fmt: skip


def test_export_writes_refusal_over_compliance(tmp_path):
    store = CampaignStore(tmp_path / "c.sqlite")
    RedTeaming(Fake(), [Scripted(["please x"])], BEHAVIOURS, store=store, judge="sure").run()
    count = RedTeamingEvaluator(store).export_preferences(tmp_path / "prefs.jsonl")
    assert count == 4
    from alignkit.data import load_preferences

    examples, _ = load_preferences(tmp_path / "prefs.jsonl")
    assert examples[0].completions[1] == "Sure, here is how."
    assert "can" in examples[0].completions[0]


@pytest.fixture()
def attack_module(tmp_path, monkeypatch):
    path = tmp_path / "stepwise_attack.py"
    path.write_text(textwrap.dedent(ATTACK_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    return importlib.import_module("stepwise_attack"), path


def test_kill_9_then_resume_loses_and_duplicates_nothing(attack_module, tmp_path, testbed_backend):
    module, script = attack_module
    store_path = tmp_path / "killed.sqlite"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    proc = subprocess.Popen([sys.executable, str(script), str(store_path)], env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if store_path.exists() and CampaignStore(store_path).count() >= 12:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the campaign never stored a round")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partial = CampaignStore(store_path).count()
    assert 12 <= partial < 36, partial  # killed between rounds 1 and 3
    module.campaign(store_path, testbed_backend).run()
    resumed = CampaignStore(store_path).attempts()
    fresh_store = tmp_path / "fresh.sqlite"
    module.campaign(fresh_store, testbed_backend).run()
    fresh = CampaignStore(fresh_store).attempts()
    key = lambda a: (a.attack, a.behaviour_id, a.step, a.index, a.prompt)  # noqa: E731
    assert len(resumed) == 36 and sorted(map(key, resumed)) == sorted(map(key, fresh))


def test_bad_campaign_inputs(tmp_path):
    with pytest.raises(ConfigError, match="unknown attack"):
        RedTeaming(Fake(), ["nope"], BEHAVIOURS, store=tmp_path / "x.sqlite", judge="sure")
    with pytest.raises(ConfigError, match="unknown judge"):
        RedTeaming(Fake(), [Scripted(["a"])], BEHAVIOURS, store=tmp_path / "y.sqlite", judge="zz")
    with pytest.raises(DataError, match="not found"):
        RedTeamingEvaluator(tmp_path / "missing.sqlite")
    (tmp_path / "junk.sqlite").write_text("not a database at all, sorry" * 100)
    with pytest.raises(DataError, match="not a campaign store"):
        CampaignStore(tmp_path / "junk.sqlite")


def test_asr_of_12_of_12_has_an_honest_interval_in_the_report(tmp_path):
    """Every one of 12 behaviours broken: ASR 1.000 with a lower bound near 0.74 (Clopper-
    Pearson), not the [1.000, 1.000] a percentile bootstrap gave; every rate table shows n."""
    from pathlib import Path

    from alignkit.evaluation.redteam_section import redteam_section
    from alignkit.evaluation.rundir import RunData
    from alignkit.redteam.base import Attempt

    store = CampaignStore(tmp_path / "c.sqlite")
    store.add_round([
        Attempt("templates", f"b{i}", 0, j, f"ask {i}.{j}", "sure", {"sure": float(j == 1)},
                success=j == 1, category="cat")
        for i in range(12) for j in range(2)
    ])  # fmt: skip
    results = RedTeamingEvaluator(store).to_dict()
    asr = results["asr"]["templates"]
    assert (asr["value"], asr["high"], asr["n"]) == (1.0, 1.0, 12)
    assert asr["low"] == pytest.approx(0.74, abs=0.01) and asr["method"] == "clopper-pearson"
    per_attempt = results["attempt_success"]["templates"]
    assert per_attempt["n"] == 24 and per_attempt["low"] < 0.5 < per_attempt["high"]
    section = redteam_section(RunData(Path(tmp_path), redteam=results))
    tables = {t.title: t for t in section.tables}
    rate = next(t for title, t in tables.items() if "rate" in title and "attempt" not in title)
    assert rate.rows[0][1:] == ["1.000", f"{asr['low']:.3f}", "1.000", "12"]
    by_judge = next(t for title, t in tables.items() if "each judge" in title)
    assert by_judge.columns[-1] == "n" and by_judge.rows[0][-1] == "12"
    assert any("Clopper-Pearson" in note for note in section.notes)
