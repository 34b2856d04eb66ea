"""What ``refplan check`` shows: a table with one line per failed condition, or a JSON document,
both built from the same :class:`~refplan.check.verdicts.CheckRow` records and rendered by the one
output sink (:mod:`refplan.output`)."""

from __future__ import annotations

from typing import TextIO

from refplan.check.verdicts import CheckRow, exit_code, row_record
from refplan.output import Column, Output, emit
from refplan.output import parse_format as _parse_format
from refplan.units import GIB

FORMATS = ("table", "json")


def parse_format(value: str) -> str:
    """``--format``'s value, refused unless the check can render it."""
    return _parse_format(value, FORMATS)


def document(rows: list[CheckRow], budgets: str, baseline: str) -> dict:
    """The JSON document: the inputs, the overall verdict and one record per row."""
    return {"budgets": budgets, "baseline": baseline, "passed": exit_code(rows) == 0,
            "rows": [row_record(r) for r in rows]}


def render(rows: list[CheckRow], fmt: str, out: TextIO | None = None, *, budgets: str, baseline: str) -> None:
    """Write ``rows`` to ``out`` (default: stdout) as ``fmt``; ``budgets`` and ``baseline`` name the inputs."""
    emit(check_output(rows, budgets, baseline), parse_format(fmt), out)


def check_output(rows: list[CheckRow], budgets: str, baseline: str) -> Output:
    """The check's table and JSON document, from the same :class:`CheckRow` records."""
    header = (f"refplan check: {_esc(budgets)} (baseline {_esc(baseline)}): peak memory per device, "
              "GiB = 2^30 bytes",)
    columns = (Column("scenario", no_wrap=False), Column("mode", no_wrap=False),
               Column("budget", "right", no_wrap=False), Column("baseline", "right", no_wrap=False),
               Column("now", "right", "bold", no_wrap=False), Column("delta", "right", no_wrap=False),
               Column("verdict", no_wrap=False))
    return Output(document=document(rows, budgets, baseline), header_lines=header, columns=columns,
                  cells=tuple(_cells(r) for r in rows), row_styles=tuple(None if r.passed else "bold" for r in rows),
                  notes=tuple(_notes(rows)), width=140, formats=FORMATS)


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _gib(n: int | None, digits: int = 2) -> str:
    return "—" if n is None else f"{n / GIB:.{digits}f}"


def _cells(r: CheckRow) -> tuple[str, ...]:
    sc = r.scenario
    digits = 3 if sc.budget_bytes < GIB else 2  # tiny measured scenarios: MiB-sized peaks
    budget = _gib(r.budget_bytes, digits) + ("" if sc.budget_text.endswith("GiB") else f" ({sc.budget_text})")
    delta = "—"
    if r.delta_bytes is not None:
        delta = f"{r.delta_bytes / GIB:+.{digits}f} ({r.delta_pct:+.1f}%)"
        if sc.tolerance is not None:
            delta += f" ≤{sc.tolerance.text}"
    style = "green" if r.passed and not r.skipped else "yellow" if r.skipped else "red"
    return (_esc(sc.name), sc.mode, budget, _gib(r.baseline_bytes, digits), _gib(r.now_bytes, digits), delta,
            f"[{style}]{r.verdict}[/]")


def _notes(rows: list[CheckRow]) -> list[str]:
    """Reasons, baseline notes, improvements to accept, skipped scenarios, then the summary line."""
    out = []
    for r in rows:
        tag = _esc(f"[{r.scenario.name}]")
        out += [f"[red]✗[/] {tag} {_esc(reason)}" for reason in r.reasons]
        if r.baseline_note:
            out.append(f"[yellow]•[/] {tag} {_esc(r.baseline_note)}")
        if r.passed and r.allowed_growth_bytes is not None and r.delta_bytes is not None \
                and -r.delta_bytes > r.allowed_growth_bytes:
            out.append(f"[cyan]↓[/] {tag} peak fell beyond the tolerance; accept it with --update-baseline")
    skipped = [r.scenario.name for r in rows if r.skipped]
    if skipped:
        out.append("[yellow]•[/] skipped (mode = \"measured\"; run with --measured or --from-csv FILE): "
                   + _esc(", ".join(skipped)))
    checked = [r for r in rows if not r.skipped]
    bad = [r for r in checked if not r.passed]
    summary = f"{len(checked) - len(bad)} of {len(checked)} checked scenarios pass"
    out.append(f"[green]{summary}[/]" if not bad else f"[red]{summary}[/]")
    return out
