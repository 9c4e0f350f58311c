"""Red-team campaigns under faults: nothing lost, nothing wrong (issue #19).

The target is the testbed model behind a small OpenAI-compatible server (alignkit's local
backend, one prompt at a time, so an answer never depends on what else was asked) that fails a
seeded fraction of chat requests with HTTP 500, HTTP 429 or a dropped connection. A campaign
through it must end, once its errored attempts have been sent again, with the rows and figures
of a fault-free run; a campaign killed with SIGKILL must have stored its finished chunks and
resume to the rows of an uninterrupted run; answers that arrived in a batch with failures are
kept; a store resumes against the same model at another URL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from fault_server import FaultyTestbed, client
from servers import free_port

from alignkit.errors import BackendError, ConfigError
from alignkit.models.base import Completion, GenerationConfig
from alignkit.models.openai_compat import PartialBatchError
from alignkit.redteam import behaviours
from alignkit.redteam.base import AttackMeta, Behaviour, Candidate
from alignkit.redteam.campaign import ROUND_KEY, RedTeaming
from alignkit.redteam.evaluator import RedTeamingEvaluator
from alignkit.redteam.store import CampaignStore
from alignkit.redteam.target import query_target

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GREEDY = GenerationConfig(max_new_tokens=32, temperature=0.0)


def campaign(target, store, **options) -> RedTeaming:
    """Templates and PAIR (which refines the replies it got, up to four rounds) on five
    behaviours: 34 attempts in four rounds when nothing fails."""
    attacks = [("templates", {"max_candidates": 3}), ("pair", {"n_streams": 1, "n_iterations": 4})]
    goals = behaviours.testbed_behaviours(n=5)
    return RedTeaming(target, attacks, goals, store=store, attacker="rules", generation=GREEDY,
                      max_attempts=8, progress=False, **options)  # fmt: skip


def rows(store: CampaignStore) -> list[tuple]:
    return [(a.attack, a.behaviour_id, a.step, a.index, a.prompt, a.response, a.success,
             a.scores, a.meta, a.error) for a in store.attempts()]  # fmt: skip


def figures(store: CampaignStore) -> dict:
    return {k: v for k, v in RedTeamingEvaluator(store).to_dict().items() if k != "store"}


@pytest.fixture(scope="module")
def served(testbed_backend):
    """One server for the fault-free and the faulty runs (error texts name its URL)."""
    with FaultyTestbed(testbed_backend) as server:
        yield server


@pytest.fixture(scope="module")
def reference(served, tmp_path_factory):
    """A fault-free campaign through the server: its rows, figures and finished pairs. Two
    PAIR prompts outgrow the testbed's context: a 400 each, recorded once as final errors."""
    store = CampaignStore(tmp_path_factory.mktemp("ref") / "c.sqlite")
    served.reset()
    summary = campaign(client(served.url), store).run()
    errors = [row[-1] for row in rows(store) if row[-1]]
    assert summary.stopped == "finished" and summary.errors == summary.errored == len(errors) == 2
    assert summary.pending == summary.retried == 0 and all("HTTP 400" in e for e in errors)
    return rows(store), figures(store), store.done()


@pytest.mark.parametrize("fail", [0.3, 0.7])
def test_faulty_campaign_ends_with_the_fault_free_rows(fail, reference, served, tmp_path):
    ref_rows, ref_figures, ref_done = reference
    store = CampaignStore(tmp_path / "c.sqlite")
    served.reset(fail, seed=7)
    try:
        target = client(served.url)
        # first run: no second tries, so errored attempts are left for the evaluator and reruns
        first = campaign(target, store, max_tries=1).run()
        errored = [a for a in store.attempts() if a.error is not None]
        assert served.failed > 0 and first.errors >= len(errored)
        results = RedTeamingEvaluator(store).to_dict()
        answered = store.count() - len(errored)
        assert results["errored"]["all"] == results["errors"] == len(errored)
        assert results["attempt_success"]["all"]["n"] == answered  # errored: not failures
        assert results["attempt_success"]["all"]["errored"] == len(errored)
        transient = [a for a in errored if "HTTP 400" not in a.error]
        if fail == 0.7:  # pairs wait for their errored attempts: the run stops short
            assert first.stopped == "errored" and first.pending == len(transient) > 0
        runs, last = 1, first
        while store.errored()["transient"] and runs < 8:
            last = campaign(target, store).run()
            runs += 1
        assert store.errored()["transient"] == 0, f"still errored after {runs} runs"
    finally:
        served.reset()
    assert last.stopped == "finished" and (runs == 1 or last.recovered > 0)
    assert rows(store) == ref_rows  # the 400 included, once
    assert figures(store) == ref_figures and store.done() == ref_done
    tries = store.tries()
    assert all(tries[(a.attack, a.behaviour_id, a.step, a.index)] >= 2 for a in transient)


def test_answers_in_a_failing_batch_are_kept(testbed_backend, tmp_path):
    prompts = [b.goal for b in behaviours.testbed_behaviours(n=12)]
    with FaultyTestbed(testbed_backend, fail=0.7, seed=3) as server:
        target = client(server.url)
        with pytest.raises(PartialBatchError) as info:
            target.generate(prompts[:8], GREEDY)
        kept = [c for c in info.value.completions if c is not None]
        assert kept and all(isinstance(c, Completion) for c in kept)
        assert info.value.transient  # 500 / 429 / dropped connections may go away
        outcomes = target.generate_each(prompts[8:], GREEDY)  # every prompt: answer or error
        assert {type(o).__name__ for o in outcomes} == {"Completion", "TransientBackendError"}
        before = server.ok
        replies = query_target(target, prompts, GREEDY)
        assert sum(r.text is not None for r in replies) == server.ok - before  # none thrown away
        assert all(r.transient for r in replies if r.error is not None)
        store = CampaignStore(tmp_path / "c.sqlite")
        before = server.ok
        campaign(target, store, max_tries=1).run()
        stored = sum(a.response is not None for a in store.attempts())
        assert stored == server.ok - before, (stored, server.ok - before, server.failed)


def test_store_resumes_against_the_same_model_at_another_url(testbed_backend, tmp_path):
    from alignkit.redteam.config import RedTeamConfig
    from alignkit.redteam.run import run_campaign

    def config(url: str, model: str = "testbed") -> RedTeamConfig:
        return RedTeamConfig(target=f"openai:{model}@{url}", n_behaviours=2, output_dir=tmp_path,
                             attack_options={"templates": {"max_candidates": 2}},
                             generation=GREEDY, report=False)  # fmt: skip

    closed = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError, match="could not connect"):
        run_campaign(config(closed))  # stamps the store before the target is reached
    with FaultyTestbed(testbed_backend) as first:
        done = run_campaign(config(first.url))
    assert done.summary.attempts == 6 and done.results["attempts"] == 6
    with FaultyTestbed(testbed_backend) as moved:
        again = run_campaign(config(moved.url))  # same model, new address: resumes
        assert again.summary.attempts == 0 and again.results["attempts"] == 6
        with pytest.raises(ConfigError, match="different target"):
            run_campaign(config(moved.url, model="another-model"))


# ----- kill -9 mid-round -----

GCG_MODULE = """
import sys
import torch
from alignkit.models.base import GenerationConfig
from alignkit.redteam.behaviours import testbed_behaviours
from alignkit.redteam.campaign import RedTeaming

GCG = {"num_steps": 10, "search_width": 16, "topk": 8}


def campaign(store, target):
    attacks = [("templates", {"max_candidates": 2}), ("gcg", GCG)]
    return RedTeaming(target, attacks, testbed_behaviours(n=3), store=store, progress=False,
                      generation=GenerationConfig(max_new_tokens=24, temperature=0.0))


if __name__ == "__main__":
    from alignkit.models import load_backend

    torch.set_num_threads(1)
    campaign(sys.argv[1], load_backend("testbed")).run()
"""


def test_kill_9_mid_round_keeps_finished_chunks_and_resumes_exactly(testbed_backend, tmp_path):
    (tmp_path / "gcg_campaign.py").write_text(textwrap.dedent(GCG_MODULE))
    sys.path.insert(0, str(tmp_path))
    try:
        import gcg_campaign
    finally:
        sys.path.remove(str(tmp_path))
    path = tmp_path / "killed.sqlite"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))  # fmt: skip
    proc = subprocess.Popen([sys.executable, str(tmp_path / "gcg_campaign.py"), str(path)], env=env)
    try:
        deadline, watch = time.time() + 90, None
        while time.time() < deadline and proc.poll() is None:
            watch = watch or (CampaignStore(path) if path.exists() else None)
            if watch is not None and watch.attempts("gcg"):
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store = CampaignStore(path)
    gcg, templates = store.attempts("gcg"), store.attempts("templates")
    # round 0 (templates, then three GCG runs) had not ended, yet its finished part is stored
    assert len(templates) == 9 and 1 <= len(gcg) < 3, (len(templates), len(gcg))
    assert store.get_meta(ROUND_KEY)
    gcg_campaign.campaign(store, testbed_backend).run()
    fresh = CampaignStore(tmp_path / "fresh.sqlite")
    gcg_campaign.campaign(fresh, testbed_backend).run()
    assert rows(store) == rows(fresh) and store.done() == fresh.done()
    assert store.get_meta(ROUND_KEY) == []


class Steps:
    """Three rounds of two candidates per behaviour, each depending on the step."""

    meta = AttackMeta("steps", "iterative", "test attack")

    def propose(self, behaviour, history, rng):
        step = 1 + max((a.step for a in history), default=-1)
        if step >= 3:
            return []
        return [Candidate(f"{behaviour.goal} {step}.{i} {rng.random():.3f}") for i in range(2)]


class Echo:
    """A target that answers every prompt, and is killed (an interrupt) on call ``die``."""

    name, supports_logprobs = "echo", False

    def __init__(self, die: int | None = None) -> None:
        self.calls, self.die = 0, die

    def generate(self, prompts, config=None):
        self.calls += 1
        if self.calls == self.die:
            raise KeyboardInterrupt
        return [Completion(f"Sure: {p}" if "1." in p else "No.") for p in prompts]


def test_interrupted_capped_round_resumes_as_if_uninterrupted(tmp_path):
    """Chunks of one pair: an interrupt mid-round leaves part of the round stored; the rerun
    finishes that round first, so the query cap cuts where an uninterrupted run cuts."""
    goals = [Behaviour(f"b{i}", f"goal {i}") for i in range(5)]

    def run(store, target):
        return RedTeaming(target, [Steps()], goals, store=store, judge="refusal",
                          max_queries=17, chunk_size=2, early_stop=False).run()  # fmt: skip

    whole = CampaignStore(tmp_path / "whole.sqlite")
    assert run(whole, Echo()).stopped == "max_queries"
    store = CampaignStore(tmp_path / "cut.sqlite")
    with pytest.raises(KeyboardInterrupt):
        run(store, Echo(die=8))  # round 0: five chunks, round 1: two stored, then killed
    assert store.count() == 14 and len(store.get_meta(ROUND_KEY)) == 2
    run(store, Echo())
    assert rows(store) == rows(whole) and store.count() == 16


# ----- what reports say -----


def test_report_counts_errored_attempts_apart(tmp_path):
    from typer.testing import CliRunner

    from alignkit.cli import app
    from alignkit.redteam.base import Attempt

    store = CampaignStore(tmp_path / "campaign.sqlite")
    store.add_round([
        Attempt("t", "b0", 0, 0, "p0", "sure", {"sure": 1.0}, success=True),
        Attempt("t", "b0", 0, 1, "p1", "no", {"sure": 0.0}),
        Attempt("t", "b1", 0, 0, "p2", None, {"sure": None}, error="HTTP 500"),
        Attempt("t", "b2", 0, 0, "p3", "no", {"sure": 0.0}),
        Attempt("t", "b2", 0, 1, "p4", None, {"sure": None}, error="HTTP 500"),
    ], transient=[False, False, True, False, True])  # fmt: skip
    results = RedTeamingEvaluator(store).to_dict()
    asr, per_attempt = results["asr"]["t"], results["attempt_success"]["t"]
    assert (asr["value"], asr["n"], asr["errored"]) == (0.5, 2, 2)  # b1: no answer, not failed
    assert (per_attempt["n"], per_attempt["errored"]) == (3, 2)
    assert per_attempt["value"] == pytest.approx(1 / 3)
    assert results["errored"] == {"t": 2, "all": 2}
    assert store.errored() == {"errored": 2, "transient": 2, "retried": 0}
    done = CliRunner().invoke(app, ["redteam", "report", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert "errored" in done.output and "2 errored attempts" in " ".join(done.output.split())
    saved = json.loads((tmp_path / "redteam.json").read_text())
    assert saved["errored"] == {"t": 2, "all": 2} and saved["asr"]["t"]["errored"] == 2


def test_stores_from_before_retries_get_their_transient_errors_marked(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the schema without tries / transient
        db.execute(
            "CREATE TABLE attempts (attack TEXT NOT NULL, behaviour_id TEXT NOT NULL, step "
            "INTEGER NOT NULL, idx INTEGER NOT NULL, category TEXT, prompt TEXT NOT NULL, "
            "response TEXT, scores TEXT NOT NULL, success INTEGER NOT NULL, style TEXT, parent "
            "INTEGER, meta TEXT NOT NULL, error TEXT, latency_s REAL NOT NULL, created REAL "
            "DEFAULT (julianday('now')), PRIMARY KEY (attack, behaviour_id, step, idx))"
        )
        for i, error in enumerate(["chat request failed: HTTP 503: busy after 5 retries",
                                   "chat request failed: HTTP 400: too long", None]):  # fmt: skip
            db.execute(
                "INSERT INTO attempts VALUES (?, 'b', 0, ?, NULL, ?, ?, '{}', 0, '', NULL, "
                "'{}', ?, 0.1, 0)",
                ("t", i, f"p{i}", None if error else "ok", error),
            )
    store = CampaignStore(path)
    assert [a.index for a in store.retryable("t", "b")] == [0]  # the 503, not the 400
    assert store.errored() == {"errored": 2, "transient": 1, "retried": 0}


def test_cli_counts_come_from_the_store_at_the_end(tmp_path):
    from typer.testing import CliRunner

    from alignkit.cli import app

    out = tmp_path / "rt"
    args = ["redteam", "run", "--n-behaviours", "2", "--output-dir", str(out), "--no-report",
            "--attacks", "templates", "--attacks", "quality-diversity",
            "--qd-iterations", "1", "--qd-batch-size", "4"]  # fmt: skip
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    total = CampaignStore(out / "campaign.sqlite").count()
    qd = len(CampaignStore(out / "campaign.sqlite").attempts("quality-diversity"))
    assert qd == 4 and f"store holds {total} attempts" in " ".join(done.output.split())


# ----- quality-diversity through faults -----


def _qd(target, store, **options):
    from alignkit.redteam.quality_diversity import MultiObjectiveRedTeaming

    return MultiObjectiveRedTeaming(target, behaviours.testbed_behaviours(n=12), judge="testbed",
                                    mutator="rules", store=store, generation=GREEDY, seed=0,
                                    progress=False, **options)  # fmt: skip


@pytest.mark.parametrize("fail", [0.3, 0.7])
def test_faulty_quality_diversity_ends_with_the_fault_free_archive(fail, served, tmp_path):
    """An iteration waits for its errored candidates (sent again on the next run) before the
    next one is planned: the archive, and every stored row, are those of a fault-free run."""
    served.reset()
    reference = CampaignStore(tmp_path / "ref.sqlite")
    expected = _qd(client(served.url), reference).run(iterations=4, batch_size=8)
    store, runs, stops = CampaignStore(tmp_path / "c.sqlite"), 0, []
    served.reset(fail, seed=5)
    try:
        while runs < 12:
            runs += 1
            result = _qd(client(served.url), store, max_tries=1).run(iterations=4, batch_size=8)
            stops.append((result.stopped, result.pending, result.iterations))
            if result.stopped == "errored":  # errored candidates count nowhere meanwhile
                assert result.pending == store.errored()["transient"] > 0
                answered = sum(a.error is None for a in store.attempts())
                assert sum(result.attempts.values()) == answered
            elif result.iterations == 4:
                break
        failed = served.failed
    finally:
        served.reset()
    assert failed > 0 and runs > 1 and stops[-1] == ("finished", 0, 4), stops
    assert rows(store) == rows(reference)
    assert result.to_dict() == expected.to_dict()
