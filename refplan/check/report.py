"""Render check rows: a rich table with one line per failed condition, or a JSON document.

Both read the same :class:`~refplan.check.verdicts.CheckRow` records. rich is imported only when a
table is rendered, so ``--format json`` stays at standard-library import cost.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from refplan.check.verdicts import CheckRow, exit_code, row_record
from refplan.errors import PlanError
from refplan.units import GIB

FORMATS = ("table", "json")


def parse_format(value: str) -> str:
    """``--format``'s value, refused unless the check can render it."""
    if value not in FORMATS:
        raise PlanError("--format", f"unknown format {value!r}; choose table or json")
    return value


def document(rows: list[CheckRow], budgets: str, baseline: str) -> dict:
    """The JSON document: the inputs, the overall verdict and one record per row."""
    return {"budgets": budgets, "baseline": baseline, "passed": exit_code(rows) == 0,
            "rows": [row_record(r) for r in rows]}


def render(rows: list[CheckRow], fmt: str, out: TextIO | None = None, *, budgets: str, baseline: str) -> None:
    """Write ``rows`` to ``out`` (default: stdout) as ``fmt``; ``budgets`` and ``baseline`` name the inputs."""
    out = sys.stdout if out is None else out
    if parse_format(fmt) == "json":
        json.dump(document(rows, budgets, baseline), out, indent=2)
        out.write("\n")
        return
    from rich.console import Console
    from rich.markup import escape

    con = Console(file=out, width=140)
    con.print(f"refplan check: {escape(budgets)} (baseline {escape(baseline)}): peak memory per device, "
              "GiB = 2^30 bytes", highlight=False)
    con.print(_table(rows))
    _print_notes(con, rows)


def _gib(n: int | None, digits: int = 2) -> str:
    return "—" if n is None else f"{n / GIB:.{digits}f}"


def _table(rows: list[CheckRow]):
    from rich.markup import escape
    from rich.table import Table

    t = Table()
    t.add_column("scenario")
    t.add_column("mode")
    t.add_column("budget", justify="right")
    t.add_column("baseline", justify="right")
    t.add_column("now", justify="right", style="bold")
    t.add_column("delta", justify="right")
    t.add_column("verdict")
    for r in rows:
        sc = r.scenario
        digits = 3 if sc.budget_bytes < GIB else 2  # tiny measured scenarios: MiB-sized peaks
        budget = _gib(r.budget_bytes, digits) + ("" if sc.budget_text.endswith("GiB") else f" ({sc.budget_text})")
        delta = "—"
        if r.delta_bytes is not None:
            delta = f"{r.delta_bytes / GIB:+.{digits}f} ({r.delta_pct:+.1f}%)"
            if sc.tolerance is not None:
                delta += f" ≤{sc.tolerance.text}"
        style = "green" if r.passed and not r.skipped else "yellow" if r.skipped else "red"
        verdict = f"[{style}]{r.verdict}[/]"
        t.add_row(escape(sc.name), sc.mode, budget, _gib(r.baseline_bytes, digits), _gib(r.now_bytes, digits), delta,
                  verdict, style=None if r.passed else "bold")
    return t


def _print_notes(con, rows: list[CheckRow]) -> None:
    """Reasons, baseline notes, improvements to accept, skipped scenarios, then the summary line."""
    from rich.markup import escape

    for r in rows:
        tag = escape(f"[{r.scenario.name}]")
        for reason in r.reasons:
            con.print(f"[red]✗[/] {tag} {escape(reason)}", markup=True, highlight=False)
        if r.baseline_note:
            con.print(f"[yellow]•[/] {tag} {escape(r.baseline_note)}", highlight=False)
        if r.passed and r.allowed_growth_bytes is not None and r.delta_bytes is not None \
                and -r.delta_bytes > r.allowed_growth_bytes:
            con.print(f"[cyan]↓[/] {tag} peak fell beyond the tolerance; accept it with "
                      "--update-baseline", highlight=False)
    skipped = [r.scenario.name for r in rows if r.skipped]
    if skipped:
        con.print("[yellow]•[/] skipped (mode = \"measured\"; run with --measured or --from-csv FILE): "
                  + escape(", ".join(skipped)), highlight=False)
    checked = [r for r in rows if not r.skipped]
    bad = [r for r in checked if not r.passed]
    summary = f"{len(checked) - len(bad)} of {len(checked)} checked scenarios pass"
    con.print(f"[green]{summary}[/]" if not bad else f"[red]{summary}[/]")
