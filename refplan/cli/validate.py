"""`refplan validate`: the planner against a seeded random matrix of real CPU bursts."""

from __future__ import annotations

from refplan.errors import PlanError


def register(sub) -> None:
    p = sub.add_parser("validate", help="check the planner against real TRL bursts (seeded random matrix, CPU)",
                       description="Run a seeded random matrix of real TRL bursts on CPU and compare each "
                                   "measured peak with the planner; writes accuracy.md/.csv/.png.")
    p.add_argument("--n", type=int, default=None, help="scenarios (default 160; 48 --quantized; 24 --sharded)")
    p.add_argument("--seed", type=int, default=0, help="matrix seed (default 0)")
    p.add_argument("--out", default=None, help="output directory (default reports/; reports/validate-sharded "
                                               "with --sharded)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per scenario")
    p.add_argument("--fresh", action="store_true", help="re-run scenarios already in the run CSV")
    p.add_argument("--families", default=None, help="comma list of model families to draw from "
                                                    "(default: the eight of the standing matrix)")
    p.add_argument("--quantized", action="store_true", help="the QLoRA / k-bit-reference matrix instead "
                                                            "(bitsandbytes on CPU; its own seeded draws)")
    p.add_argument("--sharded", action="store_true", help="the sharded matrix instead: ZeRO-2/3 and FSDP2 bursts "
                   "launched as 2-3 ranks (gloo on CPU), one row per rank (default --n 24, --out "
                   "reports/validate-sharded)")
    p.add_argument("--format", default="table", help="table | json: the summary on stdout")
    p.add_argument("--no-progress", action="store_true", help="no live progress display")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from refplan.validate import run as run_validation

    from refplan.output import Output, emit, parse_format

    parse_format(args.format, ("table", "json"))
    if args.sharded and (args.quantized or args.families):
        raise PlanError("--sharded", "draws its own families and full-precision weights; drop "
                        + ("--quantized" if args.quantized else "--families"))
    if args.n is None:
        args.n = 24 if args.sharded else 48 if args.quantized else 160
    if args.out is None:
        args.out = "reports/validate-sharded" if args.sharded else "reports"
    if args.sharded:
        return _run_sharded(args)
    if args.n < 1 or args.n > 5000:
        raise PlanError("--n", f"scenarios must be between 1 and 5000 (got {args.n})")
    if args.timeout <= 0:
        raise PlanError("--timeout", "must be positive")
    summary = run_validation(n=args.n, seed=args.seed, out=Path(args.out), timeout_s=args.timeout,
                             resume=not args.fresh, progress=not args.no_progress,
                             families=tuple(f.strip() for f in args.families.split(",") if f.strip())
                             if args.families else None, quantized=args.quantized)
    med, worst = summary["median_abs_error_pct"], summary["worst_abs_error_pct"]
    report = Path(args.out) / "accuracy.md"
    line = (f"{summary['measured']}/{summary['scenarios']} scenarios measured; median |error| "
            f"{med:.3f} %, worst {worst:.3f} % -> {'PASS' if summary['passes'] else 'FAIL'} "
            f"(targets 3 % / 8 %); report: {report}") if med is not None else "no scenario measured"
    emit(Output(document={**summary, "report": str(report)}, header_lines=(line,), formats=("table", "json")),
         args.format)
    return 0 if summary["passes"] else 1


def _run_sharded(args) -> int:
    from pathlib import Path

    from refplan.output import Output, emit
    from refplan.validate_sharded import run as run_sharded

    if args.n < 1 or args.n > 500:
        raise PlanError("--n", f"sharded scenarios must be between 1 and 500 (got {args.n})")
    if args.timeout <= 0:
        raise PlanError("--timeout", "must be positive")
    summary = run_sharded(n=args.n, seed=args.seed, out=Path(args.out), timeout_s=max(args.timeout, 600.0),
                          resume=not args.fresh, progress=not args.no_progress)
    med, worst = summary["median_abs_error_pct"], summary["worst_abs_error_pct"]
    report = Path(args.out) / "accuracy.md"
    line = (f"{summary['measured']}/{summary['rank_rows']} rank rows measured; median |error| {med:.2f} %, worst "
            f"{worst:.2f} % -> {'PASS' if summary['passes'] else 'FAIL'} (targets 3 % / 8 %); report: {report}"
            ) if med is not None else "no rank measured"
    emit(Output(document={**summary, "report": str(report)}, header_lines=(line,), formats=("table", "json")),
         args.format)
    return 0 if summary["passes"] else 1
