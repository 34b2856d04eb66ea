"""The one output sink every command renders through: table (rich), JSON or CSV.

A command builds one :class:`Output` from its typed result records -- the JSON document, the CSV
rows and the table's cells all come from the same fields -- and calls :func:`emit`. rich is imported
only when a table is rendered, so ``--format json`` and ``--format csv`` stay at standard-library
import cost.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass, field
from typing import TextIO

from refplan.errors import PlanError

FORMATS = ("table", "json", "csv")


def parse_format(value: str, allowed: tuple[str, ...] = FORMATS) -> str:
    """``--format``'s value, refused unless the command can render it."""
    if value not in allowed:
        raise PlanError("--format", f"unknown format {value!r}; choose {', '.join(allowed[:-1])} or {allowed[-1]}")
    return value


@dataclass(frozen=True)
class Column:
    header: str
    justify: str = "left"  # "left" | "right" | "center"
    style: str | None = None
    no_wrap: bool = True


@dataclass(frozen=True)
class Output:
    """What one command shows, in every format.

    - ``document``: the JSON document (``--format json``);
    - ``csv_columns`` + ``csv_rows``: the CSV table (``--format csv``; absent: the command has none);
    - ``title``, ``columns``, ``cells``: the rich table, cells pre-formatted (rich markup allowed),
      with ``header_lines`` printed before it and ``notes`` after it.
    """

    document: dict
    title: str = ""
    columns: tuple[Column, ...] = ()
    cells: tuple[tuple[str, ...], ...] = ()
    row_styles: tuple[str | None, ...] = ()
    header_lines: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    csv_columns: tuple[str, ...] = ()
    csv_rows: tuple[dict, ...] = ()
    width: int | None = None
    formats: tuple[str, ...] = field(default=FORMATS)


def emit(output: Output, fmt: str, out: TextIO | None = None) -> None:
    """Write ``output`` to ``out`` (default stdout) as ``fmt``."""
    out = sys.stdout if out is None else out
    fmt = parse_format(fmt, output.formats)
    if fmt == "json":
        json.dump(output.document, out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(output.csv_columns), extrasaction="ignore", lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(output.csv_rows)
        out.write(buf.getvalue())
    else:
        _table(output, out)


def _table(output: Output, out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(file=out, width=output.width)
    for line in output.header_lines:
        con.print(line, highlight=False)
    if output.columns:
        t = Table(title=output.title or None, title_justify="left", show_lines=False)
        for c in output.columns:
            t.add_column(c.header, justify=c.justify, style=c.style, no_wrap=c.no_wrap)
        styles = output.row_styles or (None,) * len(output.cells)
        for cells, style in zip(output.cells, styles):
            t.add_row(*cells, style=style)
        con.print(t)
    for line in output.notes:
        con.print(line, highlight=False)
