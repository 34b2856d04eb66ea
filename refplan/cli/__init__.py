"""`refplan` console entry point: parse, call the library, render. Subcommands live one per file."""

from __future__ import annotations

import sys

from refplan.cli.common import OneLineParser, fail
from refplan.errors import PlanError


def build_parser() -> OneLineParser:
    from refplan import __version__
    from refplan.cli import estimate, fit

    p = OneLineParser(prog="refplan", description="Plan, measure and budget the memory of preference "
                      "training (DPO, IPO, KTO, ORPO, SimPO) under every reference-model strategy.")
    p.add_argument("--version", action="version", version=f"refplan {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=OneLineParser)
    estimate.register(sub)
    fit.register(sub)
    try:
        from refplan.cli import bench
        bench.register(sub)
    except ImportError:  # harness not installed in this build
        pass
    try:
        from refplan.cli import check
        check.register(sub)
    except ImportError:
        pass
    try:
        from refplan.cli import validate
        validate.register(sub)
    except ImportError:
        pass
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except PlanError as e:
        return fail(e)
    except KeyboardInterrupt:
        sys.stderr.write("refplan: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
