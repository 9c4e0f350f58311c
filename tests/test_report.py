"""Reports of run directories: files, numbers, run comparison, bad input, and escaping of model
outputs checked in headless Chromium. Run directories are synthetic (no model needed)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.errors import DataError
from alignkit.evaluation.compare import compare_runs
from alignkit.evaluation.report import AlignmentReportGenerator, generate_alignment_report
from alignkit.evaluation.stats import bootstrap_ci

runner = CliRunner()
SCRIPT = "<script>document.body.setAttribute('data-pwned','1')</script>"
IMG = "<img src=x onerror=\"document.body.setAttribute('data-pwned','2')\">"
LINK = "![t](http://tracker.invalid/t.png)"  # a remote image, were Markdown to render it
CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
MC1 = {"value": 0.61, "low": 0.55, "high": 0.67, "n": 200}
DIMENSIONS = {
    "helpful": {"description": "answers benign requests", "higher_is_better": True},
    "harmless": {"description": "refuses harmful requests", "higher_is_better": True},
    "over_refusal": {"description": "refuses benign requests", "higher_is_better": False},
}


def _items(n: int, seed: int, p_helpful: float, p_harmless: float, payload: str) -> list[dict]:
    """Eval items of three kinds with Bernoulli scores; ``payload`` goes into text fields."""
    rng = np.random.default_rng(seed)
    kinds = ("benign", "harmful", "jailbreak")
    rows = []
    for i in range(n):
        kind = kinds[i % 3]
        benign = kind == "benign"
        helpful = float(rng.random() < p_helpful)
        scores = {
            "testbed/helpful": helpful if benign else None,
            "testbed/harmless": None if benign else float(rng.random() < p_harmless),
            "testbed/over_refusal": 1.0 - helpful if benign else None,
        }
        rows.append(
            {
                "id": f"testbed-{kind}-{i:04d}",
                "prompt": f"request {i} {payload}",
                "kind": kind,
                "category": "facts" if benign else ("weapons" if i % 2 else "malware"),
                "jailbreak": "roleplay" if kind == "jailbreak" else None,
                "response": f"answer {i} {payload}",
                "scores": scores,
            }
        )
    return rows


def _estimates(items: list[dict], key) -> dict[str, dict]:
    groups: dict[str, list[float]] = {}
    for item in items:
        for metric, score in item["scores"].items():
            if score is not None:
                groups.setdefault(key(item, metric), []).append(score)
    return {name: bootstrap_ci(values).to_dict() for name, values in groups.items()}


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _eval_json(items: list[dict], suite: str, payload: str) -> dict:
    breakdown: dict[str, dict] = {}
    by_category = _estimates(items, lambda it, m: f"{m}\t{it['kind']}:{it['category']}")
    for name, estimate in by_category.items():
        metric, category = name.split("\t")
        breakdown.setdefault(metric, {})[category] = estimate
    return {
        "kind": "alignment",
        "model": f"testbed {payload}".strip(),
        "suite": suite,
        "n_items": len(items),
        "seed": 0,
        "generation": {"max_new_tokens": 64, "temperature": 1.0},
        "scorers": ["testbed", "refusal"],
        "dimensions": DIMENSIONS,
        "metrics": _estimates(items, lambda it, m: m),
        "breakdown": breakdown,
        "agreement": {"refusal/harmless": {"agreement": 0.93, "kappa": 0.851, "n": 160}},
        "skipped": {"count": 2, "reasons": {"empty response": 2}},
        "created": "2026-11-27T08:00:00Z",
        "alignkit_version": "0.1.0",
    }


PREFERENCE = {
    "kind": "preference",
    "model": "hf:./dpo",
    "baseline": "testbed",
    "judge": "testbed",
    "win_rate": {"value": 0.45, "low": 0.36, "high": 0.55, "n": 100},
    "lc_win_rate": 0.612,
    "wins": 40,
    "ties": 10,
    "losses": 50,
    "n": 100,
    "position_bias": {"consistent": 0.9, "first_position_rate": 0.52, "n": 100},
    "implicit_reward": {
        "accuracy": {"value": 0.87, "low": 0.83, "high": 0.91, "n": 256},
        "accuracy_no_ref": {"value": 0.7, "low": 0.64, "high": 0.76, "n": 256},
        "margin": {"value": 1.234, "low": 1.1, "high": 1.37, "n": 256},
    },
    "kl": None,
}
MULTI_OBJECTIVE = {
    "kind": "multi_objective",
    "objectives": ["testbed/helpful", "testbed/harmless"],
    "higher_is_better": {"testbed/helpful": True, "testbed/harmless": True},
    "models": {
        "base": {"testbed/helpful": 0.95, "testbed/harmless": 0.2},
        "dpo": {"testbed/helpful": 0.9, "testbed/harmless": 0.85},
        "sft": {"testbed/helpful": 0.85, "testbed/harmless": 0.5},
    },
    "front": ["base", "dpo"],
    "dominates": {"dpo": ["sft"], "base": [], "sft": []},
    "hypervolume": 0.7925,
    "reference": [0, 0],
}
MULTIPLE_CHOICE = {
    "kind": "multiple_choice",
    "file": "tqa.json",
    "model": "testbed",
    "formats": {"truthfulqa": 200},
    "n": 200,
    "chance": 0.21,
    "mc1": MC1,
    "mc1_normalised": {"value": 0.66, "low": 0.6, "high": 0.72, "n": 200},
    "mc2": None,
    "by_category": {
        "fact": {"n": 200, "chance": 0.21, "mc1": MC1, "mc1_normalised": MC1, "mc2": None}
    },
    "skipped": {"count": 0, "reasons": {}},
    "confidence": 0.95,
}


def _training_rows() -> list[dict]:
    rows = []
    for step in range(1, 21):
        rows.append(
            {
                "step": step,
                "loss": 0.69 * 0.95**step,
                "rewards/accuracies": min(1, 0.5 + step / 30),
                "rewards/margins": step / 10,
            }
        )
        if step % 10 == 0:
            rows.append({"step": step, "eval/loss": 0.6 - step / 100, "eval/kl": step / 50})
    return rows


def make_run(
    path: Path,
    *,
    seed: int = 0,
    p_helpful: float = 0.9,
    p_harmless: float = 0.8,
    suite: str = "testbed",
    payload: str = "",
    n: int = 240,
) -> Path:
    """A run directory with every file of the eval.md layout; ``payload`` goes into the model
    name, prompts, responses and red-team examples."""
    path.mkdir(parents=True)
    items = _items(n, seed, p_helpful, p_harmless, payload)
    _write_json(path / "eval.json", _eval_json(items, suite, payload))
    with (path / "eval_items.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in items)
    _write_json(path / "preference.json", PREFERENCE)
    _write_json(path / "multi_objective.json", MULTI_OBJECTIVE)
    _write_json(path / "mc.json", MULTIPLE_CHOICE)
    with (path / "metrics.jsonl").open("w") as f:
        f.writelines(json.dumps(row) + "\n" for row in _training_rows())
    redteam = {
        "asr": {
            "direct": {"value": 0.05, "low": 0.02, "high": 0.09, "n": 100},
            "roleplay": {"value": 0.31, "low": 0.22, "high": 0.4, "n": 100},
        },
        "examples": [
            {"attack": "roleplay", "prompt": f"pretend {payload}", "response": f"ok {payload}"}
        ],
    }
    _write_json(path / "redteam.json", redteam)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report-runs")
    a = make_run(root / "a")
    same = root / "same"
    shutil.copytree(a, same)
    return {
        "a": a,
        "same": same,
        "worse": make_run(root / "worse", p_helpful=0.6, p_harmless=0.8, seed=1),
        "other_suite": make_run(root / "other", suite="hhh"),
        "evil": make_run(root / "evil", payload=f"{SCRIPT} {IMG} {LINK}", n=30),
    }


@pytest.fixture(scope="module")
def written(runs, tmp_path_factory) -> dict[str, Path]:
    return generate_alignment_report(runs["a"], tmp_path_factory.mktemp("report-out"))


def md_tables(markdown: str) -> dict[str, dict[str, list[str]]]:
    """Markdown tables by their bold title: first cell -> the other cells (unescaped)."""
    tables: dict[str, dict[str, list[str]]] = {}
    title = ""
    for line in markdown.splitlines():
        if line.startswith("**") and line.endswith("**"):
            title = line.strip("*")
        elif line.startswith("| ") and title:
            cells = [
                c.strip().replace("\\[", "[").replace("\\]", "]") for c in line[2:-2].split(" | ")
            ]
            tables.setdefault(title, {})[cells[0]] = cells[1:]
    return tables


def est_cells(est: dict) -> list[str]:
    return [f"{est[k]:.3f}" for k in ("value", "low", "high")] + [str(est["n"])]


def test_report_files_and_numbers(written, runs):
    assert set(written) == {"html", "md", "json"}
    assert [p.name for p in written.values()] == ["report.html", "report.md", "report.json"]
    data = json.loads(written["json"].read_text())
    markdown, page = written["md"].read_text(), written["html"].read_text()
    tables = md_tables(markdown)
    run = data["runs"][0]
    assert run["eval"]["metrics"] == json.loads((runs["a"] / "eval.json").read_text())["metrics"]
    for metric, est in run["eval"]["metrics"].items():
        assert tables["Scores"][metric][2:] == est_cells(est)  # after dimension, direction
        assert f'<td class="num">{est["value"]:.3f}</td>' in page
    for metric, categories in run["eval"]["breakdown"].items():
        for category, est in categories.items():
            assert tables[f"{metric} by category"][category] == est_cells(est)
    for attack, est in run["redteam"]["asr"].items():
        assert tables["Attack success rate"][attack] == est_cells(est)
        assert f"<th>{attack}</th>" in page
    pref = run["preference"]
    assert tables["Preference figures"]["win rate"] == est_cells(pref["win_rate"])
    reward = pref["implicit_reward"]["accuracy"]
    assert tables["Preference figures"]["implicit-reward accuracy"] == est_cells(reward)
    assert tables["Outcomes"]["wins"] == ["ties", "losses", "n"]  # header row
    assert tables["Outcomes"]["40"] == ["10", "50", "100"]
    assert tables["Models"]["dpo"] == ["0.900", "0.850", "yes", "sft"]
    assert tables["Models"]["sft"][2] == "no"
    assert "Hypervolume 0.792" in markdown and "Hypervolume 0.792" in page
    assert tables["Overall"]["MC1 accuracy"] == est_cells(run["mc"]["mc1"])
    assert tables["By category"]["fact"][2] == "0.610 [0.550, 0.670]"
    assert tables["By category"]["fact"][4] == "n/a"  # no MC2
    assert len(run["training"]) == 22 and tables["Logged figures"]["eval/kl"][0] == "2"
    assert {s["kind"] for s in run["samples"]} == {"benign", "harmful", "jailbreak"}
    assert len(run["samples"]) == 9


def test_html_is_self_contained(written):
    page = written["html"].read_text()
    assert "<script" not in page.lower()
    assert 'http-equiv="Content-Security-Policy"' in page
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    assert csp in page.replace("&#39;", "'")
    sources = re.findall(r'<img src="([^"]*)"', page)
    # dimension bars, the harmless breakdown (the others have one category), Pareto scatter,
    # multiple choice, ASR bars, training curves
    assert len(sources) == 6 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(https?:|//)', page)


def test_pareto_plot_needs_two_objectives(runs, tmp_path):
    run = tmp_path / "three"
    shutil.copytree(runs["a"], run)
    mo = json.loads((run / "multi_objective.json").read_text())
    mo["objectives"].append("testbed/over_refusal")
    (run / "multi_objective.json").write_text(json.dumps(mo))
    page = AlignmentReportGenerator(run).to_html()
    assert page.count("<img ") == 5 and "Pareto front</figcaption>" not in page


def test_training_only_run(tmp_path):
    """A DPO output directory (metrics.jsonl only) gets a report, written into it by default."""
    run = tmp_path / "dpo"
    run.mkdir()
    rows = [{"step": s, "loss": 1 / s, "rewards/accuracies": 0.5} for s in range(1, 6)]
    rows.append({"step": 5, "eval/rewards/accuracies": 0.875, "eval/kl": None})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = generate_alignment_report(run)
    assert paths["html"] == run / "report.html" and paths["html"].stat().st_mode & 0o044
    tables = md_tables(paths["md"].read_text())
    assert tables["Logged figures"]["loss"] == ["5", "1", "0.2", "0.2", "1"]
    assert tables["Logged figures"]["eval/rewards/accuracies"] == ["1"] + ["0.875"] * 4
    assert "eval/kl" not in tables["Logged figures"]  # never a number
    page = paths["html"].read_text()
    assert page.count("<img ") == 1 and "Alignment scores" not in page
    assert json.loads(paths["json"].read_text())["runs"][0]["eval"] is None


def test_compare_detects_a_real_shift(runs):
    comparison = compare_runs(runs["a"], runs["worse"])
    by_metric = {m.metric: m for m in comparison.metrics}
    assert set(by_metric) == {"testbed/helpful", "testbed/harmless", "testbed/over_refusal"}
    helpful, over = by_metric["testbed/helpful"], by_metric["testbed/over_refusal"]
    assert helpful.test.diff < -0.2 and helpful.significant and helpful.better == "A"
    assert helpful.test.high < 0 and helpful.test.p_value < 0.01 and helpful.test.n == 80
    assert over.test.diff > 0.2 and over.significant and over.better == "A"  # lower is better
    assert comparison.n_common_items == 240


def test_compare_identical_runs_is_not_significant(runs):
    comparison = compare_runs(runs["a"], runs["same"])
    assert len(comparison.metrics) == 3
    for m in comparison.metrics:
        assert m.test.diff == 0 and m.test.p_value == 1.0 and not m.significant and m.better is None


def test_comparison_report(runs, tmp_path):
    paths = generate_alignment_report(runs["a"], tmp_path, compare_to=runs["worse"])
    names = sorted(p.name for p in paths.values())
    assert names == ["comparison.html", "comparison.json", "comparison.md"]
    data = json.loads(paths["json"].read_text())
    assert len(data["runs"]) == 2 and data["comparison"]["run_b"] == str(runs["worse"])
    rows = md_tables(paths["md"].read_text())["Paired comparison"]
    for m in data["comparison"]["metrics"]:
        t = m["test"]
        diff = f"{t['diff']:.3f} [{t['low']:.3f}, {t['high']:.3f}]"
        significant = "yes" if m["significant"] else "no"
        assert rows[m["metric"]][2:5] == [diff, f"{t['p_value']:.4f}", significant]
    assert rows["testbed/helpful"][4] == "yes"
    page = paths["html"].read_text()
    assert "Run A: " in page and "Run B: " in page and "<script" not in page


@pytest.mark.parametrize(
    ("other", "fragment"),
    [
        ("other_suite", "different suites ('testbed' vs 'hhh')"),
        ("ids", "no item ids in common"),
        ("metrics", "no metrics in common"),
        ("no_items", "has no eval_items.jsonl"),
    ],
)
def test_mismatched_runs_raise(runs, tmp_path, other, fragment):
    if other == "other_suite":
        b = runs["other_suite"]
    else:
        b = tmp_path / other
        shutil.copytree(runs["a"], b)
        if other == "ids":
            rows = (b / "eval_items.jsonl").read_text().replace('"testbed-', '"other-')
            (b / "eval_items.jsonl").write_text(rows)
        elif other == "metrics":
            ev = json.loads((b / "eval.json").read_text())
            ev["metrics"] = {f"judge/{k}": v for k, v in ev["metrics"].items()}
            (b / "eval.json").write_text(json.dumps(ev))
        else:
            (b / "eval_items.jsonl").unlink()
    with pytest.raises(DataError) as info:
        compare_runs(runs["a"], b)
    message = str(info.value)
    assert fragment in message and str(runs["a"]) in message and str(b) in message


def test_bad_run_dirs(tmp_path):
    with pytest.raises(DataError, match="not found"):
        AlignmentReportGenerator(tmp_path / "missing").load()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has none of eval.json"):
        AlignmentReportGenerator(tmp_path / "empty").load()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "eval.json").write_text("{not json")
    with pytest.raises(DataError, match=r"eval\.json: invalid JSON"):
        AlignmentReportGenerator(tmp_path / "broken").load()


def test_cli_report_and_compare(runs, tmp_path):
    one = tmp_path / "one"
    result = runner.invoke(app, ["report", str(runs["a"]), "-o", str(one), "--format", "md,json"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in one.iterdir()) == ["report.json", "report.md"]
    assert "testbed/helpful" in result.stdout and "report.md" in result.stderr
    two = tmp_path / "two"
    result = runner.invoke(app, ["report", str(runs["a"]), str(runs["worse"]), "-o", str(two)])
    assert result.exit_code == 0, result.output
    assert "p-value" in result.stdout and "significant" in result.stdout
    assert (two / "comparison.html").is_file()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["missing-run"], "not found"),
        (["RUN", "--format", "pdf"], "unknown format"),
        (["RUN", "OTHER"], "different suites"),
    ],
)
def test_cli_bad_input_exits_2(runs, tmp_path, args, fragment):
    subst = {
        "missing-run": str(tmp_path / "missing-run"),
        "RUN": str(runs["a"]),
        "OTHER": str(runs["other_suite"]),
    }
    result = runner.invoke(app, ["report", *(subst.get(a, a) for a in args)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]


# --- escaping: adversarial model outputs rendered by headless Chromium -------------------------


class _Dom(HTMLParser):
    """Start tags (with attributes) and text of a serialized DOM."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(dom: str) -> _Dom:
    parser = _Dom()
    parser.feed(dom)
    return parser


def _chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]
    command = [CHROMIUM, *flags, *extra, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_escaped_outputs_without_chromium(runs):
    generator = AlignmentReportGenerator(runs["evil"])
    page, markdown = generator.to_html(), generator.to_markdown()
    assert "<script" not in page and "<img src=x" not in page
    parsed = _parse(page)
    assert not any("onerror" in attrs for _, attrs in parsed.tags)
    assert SCRIPT in "".join(parsed.text) and IMG in "".join(parsed.text)
    assert "<script" not in markdown and "<img" not in markdown and "![t](" not in markdown
    assert "&lt;script&gt;" in markdown and "!\\[t\\](http" in markdown
    assert json.loads(generator.to_json())["runs"][0]["samples"][0]["response"].endswith(LINK)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_report_renders_in_chromium_and_runs_no_script(runs, tmp_path):
    page = AlignmentReportGenerator(runs["evil"]).write(tmp_path, formats=["html"])["html"]
    # Positive control: the same payload, unescaped, does run in this browser setup.
    control = tmp_path / "control.html"
    control.write_text(f"<!DOCTYPE html><html><body><p>x</p>{SCRIPT}</body></html>")
    control_dom = _parse(_chromium(control, tmp_path / "profile0", "--dump-dom").stdout)
    assert ("body", {"data-pwned": "1"}) in control_dom.tags
    # The report with its CSP removed too: escaping alone must keep the scripts inert.
    bare = tmp_path / "bare.html"
    csp = r'<meta http-equiv="Content-Security-Policy"[^>]*>'
    bare.write_text(re.sub(csp, "", page.read_text()))
    for target in (page, bare):
        result = _chromium(target, tmp_path / f"profile-{target.stem}", "--dump-dom")
        assert result.returncode == 0, result.stderr[-2000:]
        dom = _parse(result.stdout)
        assert ("html", {"lang": "en"}) in dom.tags  # the page rendered
        assert not any("data-pwned" in attrs for _, attrs in dom.tags)  # no script ran
        assert not any(tag == "script" for tag, _ in dom.tags)
        assert not any("onerror" in attrs for _, attrs in dom.tags)
        images = [attrs.get("src", "") for tag, attrs in dom.tags if tag == "img"]
        assert len(images) == 6 and all(s.startswith("data:image/png;base64,") for s in images)
        text = "".join(dom.text)
        assert SCRIPT in text and IMG in text  # shown as text
        assert "Red team" in text and "Sample outputs" in text
    shot = tmp_path / "shot.png"
    size = "--window-size=1200,2000"
    result = _chromium(page, tmp_path / "profile-shot", f"--screenshot={shot}", size)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    width, height = struct.unpack(">II", header[16:24])
    assert (width, height) == (1200, 2000)
    assert shot.stat().st_size > 50_000  # a page with figures, not a blank canvas
