"""`refplan check`: memory budgets that fail CI. Exit 0 all pass, 1 a budget or tolerance exceeded, 2 bad input.

Parse the flags, call :mod:`refplan.check`, render its rows. Estimate mode imports the standard
library only (rich for the table); ``--measured`` runs bursts.
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


def run(args) -> int:
    from refplan import check as chk

    fmt = chk.parse_format(args.format)
    if args.out and not args.measured:
        raise PlanError("--out", "applies to --measured only")
    every = chk.load_budgets(args.budgets, offline=True if args.offline else None)
    scenarios = chk.select(every, args.scenario)
    baseline = chk.read_baseline(args.baseline)

    measurements = None
    if args.from_csv:
        measurements = chk.measurements_from_csv(args.from_csv, scenarios)
    elif args.measured:
        measurements = chk.measure(scenarios, args.out or None, progress=sys.stderr.isatty())

    rows = chk.check(scenarios, baseline, measurements)
    chk.render(rows, fmt, sys.stdout, budgets=args.budgets, baseline=args.baseline)
    if args.junit:
        chk.write_junit(args.junit, rows, f"refplan check {args.budgets}")
    if args.update_baseline:
        new = chk.updated_baseline(baseline, rows, [s.name for s in every])
        chk.write_baseline(args.baseline, new)
        sys.stderr.write(f"refplan check: wrote {args.baseline} ({len(new)} scenarios)\n")
    return chk.exit_code(rows, baseline_updated=args.update_baseline)
