"""``alignkit eval``: evaluate a model (scores with CIs, judges, win rates, Pareto, report)."""

from __future__ import annotations

import typer
from rich.table import Table

from alignkit.commands._console import print_note, stdout
from alignkit.commands._options import config_command
from alignkit.evaluation.config import EvalConfig


def _ci(e: dict) -> str:
    """``value [low, high]``; the value alone where there is no interval (one value)."""
    if e.get("value") is None:
        return "n/a"
    if e.get("low") is None or e.get("high") is None:
        return f"{e['value']:.3f}"
    return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def metrics_table(result) -> Table:
    """Every metric of an alignment result with its CI and, for judges, agreement with truth."""
    table = Table(title=f"{result.model} on {result.suite}", title_justify="left")
    for column in ("metric", "value [95% CI]", "n", "agrees with ground truth"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, estimate in result.metrics.items():
        agree = result.agreement.get(name)
        table.add_row(
            name,
            _ci(estimate.to_dict()),
            str(estimate.n),
            f"{agree['agreement']:.1%} (n={agree['n']})" if agree else "",
        )
    return table


def preference_table(pref) -> Table:
    table = Table(title=f"{pref.model} vs {pref.baseline or pref.reference}", title_justify="left")
    table.add_column("measure")
    table.add_column("value [95% CI]", justify="right")
    table.add_column("n", justify="right")
    if pref.win is not None:
        win, n = pref.win, str(pref.win.win_rate.n)
        table.add_row("win rate", _ci(win.win_rate.to_dict()), n)
        table.add_row("length-controlled win rate", f"{win.lc_win_rate:.3f}", n)
        table.add_row("wins / ties / losses", f"{win.wins} / {win.ties} / {win.losses}", n)
        bias = win.position_bias
        table.add_row("judge consistent across orders", f"{bias['consistent']:.1%}", n)
        table.add_row("judge picks first position", f"{bias['first_position_rate']:.1%}", n)
    if pref.implicit_reward:
        for label, key in (("implicit-reward accuracy", "accuracy"),
                           ("  without reference", "accuracy_no_ref")):  # fmt: skip
            figure = pref.implicit_reward[key]
            table.add_row(label, _ci(figure), str(figure["n"]))
    if pref.kl is not None:
        table.add_row("KL(policy || reference), nats", _ci(pref.kl.to_dict()), str(pref.kl.n))
    return table


def mc_table(mc) -> Table:
    """MC1, normalised MC1 and MC2 of a multiple-choice result, overall and per category."""
    table = Table(title=f"{mc.model} multiple choice", title_justify="left")
    for column in ("questions", "n", "chance", "MC1", "MC1 normalised", "MC2"):
        table.add_column(column, justify="left" if column == "questions" else "right")
    by_category = mc.by_category()
    for name, figures in [("all", mc.overall), *by_category.items()]:
        mc2 = figures["mc2"]
        table.add_row(
            name,
            str(figures["n"]),
            f"{figures['chance']:.3f}",
            _ci(figures["mc1"].to_dict()),
            _ci(figures["mc1_normalised"].to_dict()),
            _ci(mc2.to_dict()) + f" (n={mc2.n})" if mc2 is not None else "n/a",
        )
    return table


def register(app: typer.Typer) -> None:
    """Add ``eval`` to ``app``."""

    @config_command(app, "eval", EvalConfig)
    def eval_(config: EvalConfig) -> None:
        """Evaluate a model: helpful / harmless / honest with CIs, judges, win rate, report."""
        from alignkit.evaluation.run import run_evaluation

        run = run_evaluation(config)
        out = stdout()
        if run.alignment is not None:
            out.print(metrics_table(run.alignment))
            if run.alignment.skipped["count"]:
                print_note(f"no verdict: {run.alignment.skipped['reasons']}")
        if run.preference is not None:
            out.print(preference_table(run.preference))
        if run.multi_objective is not None:
            mo = run.multi_objective
            print_note(f"Pareto front: {', '.join(mo.front)}; hypervolume {mo.hypervolume:.4f}")
        if run.multiple_choice is not None:
            mc = run.multiple_choice
            out.print(mc_table(mc))
            print_note(f"multiple choice MC1: {_ci(mc.mc1.to_dict())} (n = {mc.mc1.n})")
            mc2 = f"{_ci(mc.mc2.to_dict())} (n = {mc.mc2.n})" if mc.mc2 is not None else "n/a"
            print_note(f"multiple choice MC2: {mc2}")
        print_note(f"results in {run.output_dir}")
        for kind, path in run.report.items():
            print_note(f"report ({kind}): {path}")
