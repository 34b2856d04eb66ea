"""Shared CLI pieces: a parser whose errors are one line + exit 2, and list/enum option parsing."""

from __future__ import annotations

import argparse
import sys

from refplan.errors import PlanError


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage + message and exits 2; we print one line naming the flag."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"refplan {self.prog.split()[-1]}: {message}\n")
        raise SystemExit(2)


def split_list(value: str | None, enum_cls, flag: str):
    from refplan.methods import parse_enum

    if value is None:
        return None
    items = [v for v in (x.strip() for x in value.split(",")) if v]
    if not items:
        raise PlanError(flag, "expects a comma-separated list")
    return [parse_enum(enum_cls, v, flag) for v in items]


def fail(err: PlanError) -> int:
    sys.stderr.write(f"refplan: {err.where}: {err.message}\n")
    return 2
