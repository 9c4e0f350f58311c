"""``alignkit monitor``: evaluate a deployed model on a schedule and alert on drift."""

from __future__ import annotations

import typer

from alignkit.commands._console import print_note, stdout
from alignkit.commands._options import config_command
from alignkit.monitor.run import MonitorConfig


def _round_line(monitor, r) -> str:
    if r.status == "failed":
        return f"round {r.idx}: failed ({r.error})"
    parts = []
    for b in monitor.bounds:
        k, n = r.counts[b.metric]
        cell = f"{b.label} {k}/{n}"
        if r.guarded:
            gk, gn = r.guarded[b.metric]
            cell += f" (guarded {gk}/{gn})"
        parts.append(cell)
    alarm = f"; ALERT: {', '.join(r.alerts)}" if r.alerts else ""
    return f"round {r.idx} ({r.seconds:.1f}s): " + ", ".join(parts) + alarm


def register(app: typer.Typer) -> None:
    """Add ``monitor`` to ``app``."""

    @config_command(app, "monitor", MonitorConfig)
    def monitor(config: MonitorConfig) -> None:
        """Watch a deployed model: a canary suite on a schedule, an always-valid drift test
        against a baseline run, alerts (log, webhook, exit code 3 with --once), guard on alert."""
        from alignkit.monitor.run import Monitor

        watcher = Monitor(config)
        bounds = ", ".join(f"{b.label} <= {b.bound:.3f}" for b in watcher.bounds)
        print_note(f"baseline bounds (upper 95%): {bounds}; alarm at evidence {watcher.level:g}")
        original = watcher.round

        def round_and_print():
            r = original()
            stdout().print(_round_line(watcher, r), highlight=False, markup=False)
            return r

        watcher.round = round_and_print  # type: ignore[method-assign]
        code = watcher.run()
        if watcher.state.alarmed:
            print_note(f"in alarm: {', '.join(sorted(watcher.state.alarmed))}")
        raise typer.Exit(code)
