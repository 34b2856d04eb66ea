"""`refplan check`: memory budgets that fail CI. Exit 0 all pass, 1 a budget or tolerance exceeded, 2 bad input.

Estimate mode imports the standard library only (rich for the table); ``--measured`` runs bursts.
"""

from __future__ import annotations

import sys

from refplan.errors import PlanError


# duplicated from refplan.check so that building the parser does not import the check logic
DEFAULT_BUDGETS = "bench/budgets.toml"
DEFAULT_BASELINE = "reports/baseline.json"


def register(sub) -> None:
    p = sub.add_parser("check", help="check peak memory against budgets and a baseline (for CI)",
                       description="Check each scenario of a budgets file against its memory budget and, "
                                   "with a tolerance, against the committed baseline. Exit 0 when all pass, "
                                   "1 when a budget or tolerance is exceeded, 2 on bad input.")
    p.add_argument("--budgets", default=DEFAULT_BUDGETS, metavar="FILE",
                   help=f"budgets TOML (default {DEFAULT_BUDGETS})")
    p.add_argument("--baseline", default=DEFAULT_BASELINE, metavar="FILE",
                   help=f"baseline JSON (default {DEFAULT_BASELINE})")
    p.add_argument("--update-baseline", action="store_true",
                   help="write the peaks checked now to --baseline (budgets still apply)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--measured", action="store_true",
                     help="run a TRL burst for each mode = \"measured\" scenario (imports torch)")
    src.add_argument("--from-csv", metavar="FILE", help="read measured peaks from a `refplan bench` CSV")
    p.add_argument("--out", metavar="DIR", default=None, help="burst working directory for --measured "
                                                              "(default: a temporary directory)")
    p.add_argument("--scenario", metavar="NAMES", default=None, help="comma list of scenarios to check (default: all)")
    p.add_argument("--format", default="table", help="table | json (default table)")
    p.add_argument("--junit", metavar="FILE", default=None, help="also write JUnit XML for CI test reports")
    p.add_argument("--offline", action="store_true", help="never touch the network to resolve a model "
                                                          "(implied when CI is set)")
    p.set_defaults(run=run)


def _select(scenarios, names: str | None):
    if names is None:
        return scenarios
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {s.name for s in scenarios}
    for n in wanted:
        if n not in known:
            raise PlanError("--scenario", f"no scenario {n!r} in the budgets file; known: {', '.join(sorted(known))}")
    return [s for s in scenarios if s.name in wanted]


def run(args) -> int:
    from refplan import check as chk

    if args.format not in ("table", "json"):
        raise PlanError("--format", f"unknown format {args.format!r}; choose table or json")
    if args.out and not args.measured:
        raise PlanError("--out", "applies to --measured only")
    every = chk.load_budgets(args.budgets, offline=True if args.offline else None)
    scenarios = _select(every, args.scenario)
    baseline = chk.read_baseline(args.baseline)

    measurements = None
    if args.from_csv:
        measurements = chk.measurements_from_csv(args.from_csv, scenarios)
    elif args.measured:
        measurements = _measure(chk, scenarios, args.out)

    rows = chk.check(scenarios, baseline, measurements)
    if args.format == "json":
        _render_json(chk, rows, args)
    else:
        _render_table(rows, args)
    if args.junit:
        from pathlib import Path

        Path(args.junit).parent.mkdir(parents=True, exist_ok=True)
        Path(args.junit).write_text(chk.junit_xml(rows, f"refplan check {args.budgets}"), encoding="utf-8")
    if args.update_baseline:
        new = chk.updated_baseline(baseline, rows, [s.name for s in every])
        chk.write_baseline(args.baseline, new)
        sys.stderr.write(f"refplan check: wrote {args.baseline} ({len(new)} scenarios)\n")
        # the new baseline is accepted by definition: only the budgets can fail now
        return 0 if not any(r.over_budget or r.failed for r in rows) else 1
    return chk.exit_code(rows)


def _measure(chk, scenarios, out: str | None):
    import tempfile

    progress = sys.stderr.isatty()
    if out:
        return chk.measure(scenarios, out, progress)
    with tempfile.TemporaryDirectory(prefix="refplan-check-") as tmp:
        return chk.measure(scenarios, tmp, progress)


def _render_json(chk, rows, args) -> None:
    import json

    doc = {"budgets": args.budgets, "baseline": args.baseline, "passed": chk.exit_code(rows) == 0,
           "rows": [chk.row_record(r) for r in rows]}
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _gib(n: int | None, digits: int = 2) -> str:
    from refplan.units import GIB

    return "—" if n is None else f"{n / GIB:.{digits}f}"


def _render_table(rows, args) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from refplan.units import GIB

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
    con = Console(width=140)
    con.print(f"refplan check: {escape(args.budgets)} (baseline {escape(args.baseline)}): peak memory per device, "
              "GiB = 2^30 bytes", highlight=False)
    con.print(t)
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
