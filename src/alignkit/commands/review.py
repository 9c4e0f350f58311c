"""``alignkit review``: people check, correct and label what the automated loop decided."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from alignkit.commands._console import print_note, stdout
from alignkit.errors import DataError

group = typer.Typer(
    name="review",
    help="Human review: label red-team findings, preference pairs and eval samples.",
    no_args_is_help=True,
)

RunDir = Annotated[Path, typer.Argument(help="A run directory (pipeline, demo, redteam, eval).")]


def register(app: typer.Typer) -> None:
    """Add the ``review`` command group to ``app``."""
    app.add_typer(group)


def _run_dir(path: Path) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: not a directory")
    return path


@group.command("add-reviewer")
def add_reviewer(name: Annotated[str, typer.Argument(help="Reviewer name.")], run_dir: RunDir):
    """Register a reviewer of RUN_DIR and print their login token (shown once, stored hashed)."""
    from alignkit.review.items import load_run
    from alignkit.review.store import LabelStore

    load_run(_run_dir(run_dir))
    store = LabelStore(run_dir)
    try:
        token = store.add_reviewer(name)
    finally:
        store.close()
    stdout().print(token, highlight=False, soft_wrap=True)
    print_note(
        f"reviewer {name!r} added to {run_dir}; this token is not stored (only its hash): "
        "keep it, it cannot be shown again"
    )


@group.command("simulate")
def simulate_cmd(
    run_dir: RunDir,
    labels: Annotated[int, typer.Option("--labels", help="Items per kind to label.")] = 100,
    error_rate: Annotated[
        float, typer.Option("--error-rate", help="Chance of a wrong answer.")
    ] = 0.0,
    reviewer: Annotated[str, typer.Option("--reviewer", help="Simulated reviewer name.")] = "sim",
    seed: Annotated[int, typer.Option("--seed", help="Queue and error seed.")] = 0,
):
    """Label the stratified sample of a testbed run with ground truth (a fraction flipped)."""
    from alignkit.review.simulate import simulate

    out = simulate(_run_dir(run_dir), labels, error_rate, reviewer, seed=seed)
    kinds = ", ".join(f"{n} {k}s" for k, n in out["labels"].items()) or "nothing"
    stdout().print(
        f"{escape(reviewer)}: labelled {kinds} ({out['answers']} answers, {out['flipped']} "
        f"flipped, {out['stored']} new rows)",
        highlight=False,
    )


@group.command("serve")
def serve_cmd(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories to review.")],
    host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8765,
):
    """Serve the review web app (and its JSON API) for RUN_DIRs."""
    for run in run_dirs:
        _run_dir(run)
    if not 0 < port < 65536:
        raise DataError(f"--port: {port} is not a TCP port")
    from alignkit.review.server import serve  # loads the items (DataError: nothing to review)

    serve(run_dirs, host=host, port=port)


@group.command("list")
def list_cmd(run_dir: RunDir, seed: Annotated[int, typer.Option("--seed")] = 0):
    """Queues of RUN_DIR (items per kind and stratum) and labels per reviewer."""
    from alignkit.review.items import LoadReport, load_run
    from alignkit.review.store import LabelStore

    report = LoadReport()
    items = load_run(_run_dir(run_dir), report)
    table = Table(title=f"Review queues of {escape(str(run_dir))}", title_justify="left")
    for col in ("kind", "items", "strata", "labelled"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    has_db = (Path(run_dir) / "review" / "labels.sqlite").is_file()
    current, reviewers = [], []
    if has_db:
        store = LabelStore(run_dir, create=False)
        try:
            current, reviewers = store.labels(), store.reviewers()
        finally:
            store.close()
    done = {}
    for lab in current:
        done.setdefault(lab["kind"], set()).add(lab["item_id"])
    for kind in ("finding", "pair", "sample"):
        of_kind = [i for i in items if i.kind == kind]
        if of_kind:
            strata = len({i.stratum for i in of_kind})
            table.add_row(kind, str(len(of_kind)), str(strata), str(len(done.get(kind, ()))))
    out = stdout()
    out.print(table)
    per = Counter(lab["reviewer"] for lab in current)
    for name in reviewers or sorted(per):
        out.print(f"{escape(name)}: {per.get(name, 0)} current labels", highlight=False)
    for source, reasons in sorted(report.skipped.items()):
        what = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        print_note(f"{source}: skipped {what}")


@group.command("export")
def export_cmd(
    run_dir: RunDir,
    kind: Annotated[
        str, typer.Option("--kind", help="preferences, overrides or cost.")
    ] = "preferences",
    output: Annotated[Path, typer.Option("--output", help="JSON-lines file to write.")] = Path(
        "review-export.jsonl"
    ),
):
    """Export human labels (JSON lines): DPO preference pairs, finding overrides for
    `alignkit redteam report --overrides`, or cost-model pairs for `alignkit safety train-rm`."""
    from alignkit.review.export import export

    out = export(_run_dir(run_dir), kind, output)
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(out["skipped"].items())) or "none"
    stdout().print(
        f"wrote {out['rows']} {kind} rows to {escape(str(output))} (skipped: {skipped})",
        highlight=False,
    )


@group.command("stats")
def stats_cmd(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories with human labels.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
):
    """Judges against the people (accuracy, kappa, confusion), reviewer agreement
    (Krippendorff's alpha) and the human-calibrated ASR (prediction-powered inference)."""
    import json

    from alignkit.review.stats import render_stats, run_stats

    for run in run_dirs:
        _run_dir(run)
    stats = run_stats(run_dirs)
    if as_json:
        stdout().print_json(json.dumps(stats))
    else:
        render_stats(stats, stdout())
