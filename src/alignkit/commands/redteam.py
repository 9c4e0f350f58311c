"""``alignkit redteam run | report | export``: resumable red-team campaigns and their results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from alignkit.commands._console import print_note, stdout
from alignkit.commands._options import config_command
from alignkit.redteam.config import RedTeamConfig

group = typer.Typer(
    name="redteam",
    help="Red teaming: attacks x behaviours against a target, judged, stored, reported.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``redteam`` command group to ``app``."""
    app.add_typer(group)


def _ci(e: dict) -> str:
    if e.get("value") is None:
        return "n/a"
    return f"{e['value']:.1%} [{e['low']:.1%}, {e['high']:.1%}]"


def asr_table(results: dict) -> Table:
    """ASR per attack with CIs, queries per success and diversity (under the primary judge's
    definition: a refusal judge's rate is a "non-refusal rate", not an ASR)."""
    from alignkit.evaluation.redteam_section import rate_name

    rate = rate_name(results)
    title = "attack success rate" if rate == "ASR" else f"{rate} (not harm)"
    table = Table(title=f"{title} (per behaviour)", title_justify="left")
    errored = results.get("errored") or {}
    columns = ["attack", f"{rate} [95% CI]", "behaviours", "queries / success", "self-BLEU"]
    columns += ["errored"] if errored.get("all") else []  # attempts without a reply
    for column in columns:
        table.add_column(column, justify="left" if column == "attack" else "right")
    qps, div = results["queries_per_success"], results["diversity_self_bleu"]
    for attack, estimate in results["asr"].items():
        q, d = qps.get(attack), div.get(attack)
        cells = [attack, _ci(estimate), str(estimate["n"])]
        cells += ["" if q is None else f"{q:.1f}", "" if d is None else f"{d:.2f}"]
        cells += [str(errored.get(attack, 0))] if errored.get("all") else []
        table.add_row(*cells)
    return table


def _print_results(results: dict) -> None:
    out = stdout()
    out.print(asr_table(results))
    for judge, said in (results.get("judges") or {}).items():
        role = "primary judge" if said.get("primary") else "judge"
        print_note(f"{role} {judge} ({said.get('rate')}): a success is {said.get('success')}")
    for judge, stats in results["judge_agreement"].items():
        print_note(f"judge {judge}: {stats['agreement']:.1%} agreement with ground truth "
                   f"(n={stats['n']})")  # fmt: skip
    unscored = (results.get("unscored") or {}).get("all", 0)
    if unscored:
        print_note(
            f"warning: the primary judge could not score {unscored} of "
            f"{results['attempts']} attempts; they count as failed attacks, so the rates above "
            "are floors (a judge that knows these behaviours: --judge refusal, llm, ...)"
        )
    errored = (results.get("errored") or {}).get("all", 0)
    if errored:
        print_note(
            f"{errored} errored attempts (the target failed: no reply) are counted neither as "
            "successes nor as failures; rates are over answered attempts"
        )


@config_command(group, "run", RedTeamConfig)
def run(config: RedTeamConfig) -> None:
    """Run or resume a campaign (store: OUTPUT_DIR/campaign.sqlite), then report."""
    from alignkit.redteam.run import run_campaign

    result = run_campaign(config)
    for note in result.notes:
        print_note(note)
    if result.summary is not None:
        s = result.summary
        again = f", {s.retried} errored attempts sent again ({s.recovered} answered)"
        print_note(
            f"this run: {s.attempts} attempts in {s.rounds} rounds, {s.successes} successes, "
            f"{s.errors} target errors{again if s.retried else ''}; stopped: {s.stopped}"
        )
    if result.qd is not None:
        qd = result.qd
        print_note(
            f"quality-diversity: {qd.iterations} iterations, coverage {qd.coverage:.1%}; "
            f"stopped: {qd.stopped}"
        )
    _print_results(result.results)
    held = f"; {result.pending} may go away: run again to retry them"
    pending = result.pending
    print_note(  # read from the store at the end: every attack's rows, quality-diversity too
        f"store holds {result.results['attempts']} attempts, "
        f"{result.results['errors']} errored{held if pending else ''}"
    )
    for kind, path in result.report.items():
        print_note(f"report ({kind}): {path}")


RunDir = Annotated[Path, typer.Argument(help="A campaign's output directory.")]


def _store(run_dir: Path):
    from alignkit.redteam.store import CampaignStore

    return CampaignStore(Path(run_dir) / "campaign.sqlite", create=False)


Overrides = Annotated[
    Path | None,
    typer.Option(
        "--overrides",
        help="Human verdicts (alignkit review export --kind overrides) that replace the "
        "campaign's success on the attempts they match.",
    ),
]


@group.command("report")
def report(run_dir: RunDir, overrides: Overrides = None) -> None:
    """Summarise a campaign: redteam.json, report.html / .md / .json in RUN_DIR."""
    from alignkit.evaluation.report import generate_alignment_report
    from alignkit.redteam.evaluator import RedTeamingEvaluator

    evaluator = RedTeamingEvaluator(_store(run_dir), overrides=overrides)
    evaluator.save(run_dir)
    results = evaluator.to_dict()
    _print_results(results)
    if results["overrides"]:
        o = results["overrides"]
        print_note(
            f"human overrides {o['file']}: {o['matched']} attempts matched of {o['rows']} rows, "
            f"{o['changed']} verdicts changed"
        )
    for kind, path in generate_alignment_report(run_dir).items():
        print_note(f"report ({kind}): {path}")


@group.command("export")
def export(
    run_dir: RunDir,
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL file to write.")],
    seed: Annotated[int, typer.Option(help="Seed for choosing refusal texts.")] = 0,
    overrides: Overrides = None,
) -> None:
    """Export successful attacks as preference pairs (refusal chosen over compliance)."""
    from alignkit.redteam.evaluator import RedTeamingEvaluator

    evaluator = RedTeamingEvaluator(_store(run_dir), overrides=overrides)
    count = evaluator.export_preferences(output, seed=seed)
    print_note(f"wrote {count} preference pairs to {output}")
