"""``alignkit runs list|show|trend``: run discovery, figures, the paired trend and its page."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.runs import find_runs, read_dir, render_trend_html, trend

CHROMIUM = "/usr/bin/chromium"
HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"
HOSTILE_DIR = "x<img src=x onerror=alert(3)>"
runner = CliRunner()


def _eval(out: Path, seed: int) -> None:
    args = ["eval", "--model", "testbed", "--n", "10", "--no-report", "--max-new-tokens", "16",
            "--seed", str(seed), "--output-dir", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output


def _edit_eval(path: Path, **fields) -> None:
    data = json.loads((path / "eval.json").read_text())
    data.update(fields)
    (path / "eval.json").write_text(json.dumps(data))


def _safe_items(path: Path) -> None:
    """Every harmful and jailbreak item answered harmlessly (a run that cut its harms)."""
    rows = [json.loads(line) for line in (path / "eval_items.jsonl").read_text().splitlines()]
    for row in rows:
        if row["kind"] in ("harmful", "jailbreak"):
            row["scores"] = {k: 1.0 for k in row["scores"]}
    (path / "eval_items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def root(tmp_path_factory, testbed_path) -> Path:
    """Two real eval runs, a run that cut its harms, a hostile model name, a fake red-team run,
    a campaign store, a DPO run, a pipeline with baseline/ and evaluate/, a corrupt eval.json."""
    root = tmp_path_factory.mktemp("runs")
    _eval(root / "e1", 1)
    _eval(root / "e2", 2)
    _edit_eval(root / "e1", created="2026-01-01T10:00:00Z")
    _edit_eval(root / "e2", created="2026-01-02T10:00:00Z")
    shutil.copytree(root / "e2", root / "later" / "e3")
    _edit_eval(root / "later" / "e3", created="2026-01-03T10:00:00Z")
    _safe_items(root / "later" / "e3")
    shutil.copytree(root / "e1", root / HOSTILE_DIR)
    _edit_eval(root / HOSTILE_DIR, model=HOSTILE, created="2026-01-04T10:00:00Z")
    rt = root / "redteam"
    rt.mkdir()
    est = {"value": 0.25, "low": 0.1, "high": 0.45, "n": 20, "method": "clopper-pearson"}
    (rt / "redteam.json").write_text(json.dumps({
        "kind": "redteam", "config": {"target": "testbed"}, "asr": {"all": est},
        "attempt_success": {"all": {**est, "value": 0.125, "n": 80}},
    }))  # fmt: skip
    store = root / "campaign"
    store.mkdir()
    db = sqlite3.connect(store / "campaign.sqlite")
    db.execute("CREATE TABLE attempts (response TEXT, error TEXT, success INTEGER)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.executemany(
        "INSERT INTO attempts VALUES (?, ?, ?)",
        [("a", None, 1), ("b", None, 0), ("c", None, 0), (None, "down", 0)],
    )
    db.execute("INSERT INTO meta VALUES ('config', ?)", (json.dumps({"target": "testbed"}),))
    db.commit()
    db.close()
    dpo = root / "dpo"
    (dpo / "final").mkdir(parents=True)
    (dpo / "run.json").write_text(json.dumps({"settings": {"model": "testbed"}}))
    (dpo / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 0.69, "rewards/accuracies": 0.5}\n'
        '{"step": 2, "loss": 0.41, "rewards/accuracies": 0.8, "eval/rewards/accuracies": 0.75}\n'
    )
    demo = root / "demo"
    demo.mkdir()
    (demo / "pipeline.json").write_text(json.dumps({"model": "testbed"}))
    shutil.copytree(root / "e1", demo / "baseline")
    shutil.copytree(root / "later" / "e3", demo / "evaluate")
    _edit_eval(demo / "baseline", created="2026-01-05T10:00:00Z")
    _edit_eval(demo / "evaluate", model="hf:demo/train/round-1/final",
               created="2026-01-05T11:00:00Z")  # fmt: skip
    from alignkit.pipeline.headline import compare

    change = compare(demo / "baseline", demo / "evaluate", "testbed")
    (demo / "evaluate" / "change.json").write_text(json.dumps(change))
    bad = root / "corrupt"
    shutil.copytree(root / "e1", bad)
    (bad / "eval.json").write_text("{not json")
    return root


def test_find_runs(root: Path) -> None:
    runs = {(r.path.relative_to(root).as_posix(), r.kind): r for r in find_runs(root)}
    assert set(runs) == {
        ("e1", "eval"), ("e2", "eval"), ("later/e3", "eval"), (HOSTILE_DIR, "eval"),
        ("redteam", "redteam"), ("campaign", "redteam"), ("dpo", "dpo"), ("demo", "pipeline"),
        ("demo/baseline", "eval"), ("demo/evaluate", "eval"), ("corrupt", "eval"),
    }  # fmt: skip
    e1 = runs["e1", "eval"]
    assert e1.model == "testbed" and e1.time_source == "created"
    assert e1.time.isoformat() == "2026-01-01T10:00:00+00:00"
    figure = e1.figures["jailbreak_asr"]
    assert figure["n"] == 10 and figure["low"] <= figure["value"] <= figure["high"]
    assert runs["redteam", "redteam"].figures["redteam_asr"]["value"] == 0.25
    campaign = runs["campaign", "redteam"].figures["redteam_attempt_success"]
    assert (campaign["value"], campaign["n"]) == (pytest.approx(1 / 3), 3)
    dpo = runs["dpo", "dpo"]
    assert dpo.figures["dpo_loss"]["value"] == 0.41
    assert dpo.figures["reward_accuracy"]["value"] == 0.75 and dpo.model == "testbed"
    assert runs["demo/baseline", "eval"].role == "pipeline baseline"
    assert runs["demo/evaluate", "eval"].role == "pipeline trained"
    assert runs["demo", "pipeline"].change["jailbreak_asr"]["after"] == 0.0
    corrupt = runs["corrupt", "eval"]
    assert not corrupt.readable and "invalid JSON" in corrupt.error
    assert sum(not r.readable for r in runs.values()) == 1


def test_list_and_show(root: Path) -> None:
    result = runner.invoke(app, ["runs", "list", str(root)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "unreadable" in out and "invalid JSON" in out and "11 runs, 1 unreadable" in out
    for text in ("jailbreak ASR", "red-team ASR 0.250 [0.100, 0.450] n=20", "DPO final loss",
                 "2026-01-01 10:00:00", HOSTILE, "pipeline", "->"):  # fmt: skip
        assert text in out, text
    assert "Traceback" not in out
    result = runner.invoke(app, ["runs", "show", str(root / "e1")], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "harmful compliance" in result.output and "95% CI" in result.output
    assert " 10 " in result.output  # n
    result = runner.invoke(app, ["runs", "show", str(root / "demo")], env={"COLUMNS": "300"})
    assert result.exit_code == 0 and "before and after" in result.output
    result = runner.invoke(app, ["runs", "show", str(root / "corrupt")])
    assert result.exit_code == 2 and "invalid JSON" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["runs", "list", str(root / "nowhere")])
    assert result.exit_code == 2 and "not a directory" in result.output


def test_trend(root: Path) -> None:
    result = trend(find_runs(root), ["jailbreak_asr,harmful_compliance", "dpo_loss"])
    runs = result["runs"]
    times = [r["time"] for r in runs]
    assert times == sorted(times)
    assert [r["path"] for r in runs[:3]] == [str(root / p) for p in ("e1", "e2", "later/e3")]
    assert len(result["unreadable"]) == 1
    jail = result["metrics"]["jailbreak_asr"]
    assert all(p["low"] is not None and p["high"] is not None for p in jail["points"])
    by_ends = {(runs[c["from"]]["path"], runs[c["to"]]["path"]): c for c in jail["changes"]}
    seeds = by_ends[str(root / "e1"), str(root / "e2")]
    assert seeds["paired"] and seeds["method"] == "mcnemar-exact/newcombe" and seeds["n"] == 10
    cut = by_ends[str(root / "e2"), str(root / "later/e3")]
    assert cut["paired"] and cut["diff"] == -1.0 and cut["p_value"] < 0.01
    assert cut["significant"] and cut["direction"] == "better"
    recorded = by_ends[str(root / "demo/baseline"), str(root / "demo/evaluate")]
    assert recorded["source"] == "pipeline change.json" and recorded["significant"]
    assert not any(HOSTILE in (runs[c["to"]]["model"] or "") for c in jail["changes"])
    with pytest.raises(Exception, match="unknown metric"):
        trend(find_runs(root), ["nope"])


def test_trend_page(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "trend.html"
    args = ["runs", "trend", str(root), "--metrics", "jailbreak_asr", "--metrics", "helpful",
            "--output", str(out)]  # fmt: skip
    result = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert '<meta http-equiv="Content-Security-Policy" content="default-src &#39;none&#39;' in page
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(3)&gt;" in page  # the hostile directory name
    assert page.count("data:image/png;base64,") == 2
    assert "mcnemar-exact/newcombe" in page and "significant, better" in page
    assert "[0." in page and "Unreadable (1)" in page and "invalid JSON" in page
    assert page.index(str(root / "e1")) < page.index(str(root / "e2"))
    assert "pipeline baseline" in page and "pipeline trained" in page
    assert render_trend_html(trend(read_dir(root / "e1"))).count("<section") >= 2


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="/usr/bin/chromium absent")
def test_trend_page_in_browser(root: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    out = tmp_path / "trend.html"
    result = runner.invoke(app, ["runs", "trend", str(root), "--output", str(out)])
    assert result.exit_code == 0, result.output
    dialogs, console = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page()
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("console", lambda m: console.append(m.text))
        page.goto(out.as_uri())
        page.wait_for_load_state("load")
        assert page.evaluate("typeof window.__pwned") == "undefined"
        text = page.inner_text("body")
        assert HOSTILE in text and HOSTILE_DIR in text  # shown as text, not markup
        widths = page.evaluate(
            "Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)"
        )
        assert widths and all(w > 0 for w in widths)  # data: PNGs load under the CSP
        page.screenshot(path=str(tmp_path / "trend.png"), full_page=True)
        browser.close()
    assert dialogs == []
    assert not [m for m in console if "Content Security Policy" in m], console
