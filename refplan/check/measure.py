"""Each scenario's peak now: the planner's estimate, a harness burst, or a row of a bench CSV.

A CSV row matches a measured scenario when every scenario field the CSV has equals the scenario's;
the newest (last) matching row wins. torch is imported only when :func:`measure` runs bursts.
"""

from __future__ import annotations

import csv
import tempfile
from dataclasses import dataclass
from pathlib import Path

from refplan.check.budgets import BudgetScenario
from refplan.errors import PlanError

#: CSV / runner fields that do not change a burst's peak, so a row matches whatever they are.
UNMATCHED_FIELDS = ("steps", "seed")


@dataclass(frozen=True)
class Measurement:
    """One scenario's peak from a burst or a CSV row; ``peak_bytes`` None when the burst failed."""

    peak_bytes: int | None
    status: str  # the harness's status: "ok", "oom", "error"
    error: str
    source: str  # "burst", "csv:FILE row N"


def estimate_peak(sc: BudgetScenario) -> int:
    """The planner's peak for an estimate-mode scenario, bytes per device (the trace engine's for a
    model without a formula family)."""
    from refplan.query import estimate_one

    return estimate_one(sc.model_spec, sc.train, sc.gpu).peak_bytes


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip().lower()


def _match_fields(bench) -> dict[str, str]:
    return {k: _cell(v) for k, v in bench.as_dict().items() if k not in UNMATCHED_FIELDS}


def match_rows(rows: list[dict], sc: BudgetScenario, source: str) -> Measurement | None:
    """The newest row (last) whose every shared scenario field equals ``sc``'s; None when none does."""
    want = _match_fields(sc.bench)
    found = None
    for i, row in enumerate(rows):
        shared = [k for k in want if k in row]
        if "method" not in shared or any(_cell(row[k]) != want[k] for k in shared):
            continue
        found = (i, row)
    if found is None:
        return None
    i, row = found
    return _measurement(row, f"{source} row {i + 1}")


def _measurement(row: dict, source: str) -> Measurement:
    status = str(row.get("status") or "ok").strip()
    peak = row.get("peak_bytes")
    try:
        peak = int(float(peak)) if peak not in (None, "") else None
    except ValueError:
        peak = None
    error = str(row.get("error") or "").strip()
    if status == "ok" and peak is None:
        status, error = "error", error or "no peak_bytes recorded"
    return Measurement(peak if status == "ok" else None, status, error, source)


def read_csv_rows(path: str | Path) -> list[dict]:
    file = str(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = reader.fieldnames or []
    except FileNotFoundError:
        raise PlanError(f"--from-csv {file}", "no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PlanError(f"--from-csv {file}", f"cannot read: {e}") from None
    missing = [c for c in ("method", "strategy", "peak_bytes") if c not in header]
    if missing:
        raise PlanError(f"--from-csv {file}", f"not a bench CSV: no column {missing[0]!r}")
    return rows


def measurements_from_csv(path: str | Path, scenarios: list[BudgetScenario]) -> dict[str, Measurement]:
    """Match each measured scenario to a row of a bench CSV; a scenario with no row is bad input."""
    rows = read_csv_rows(path)
    out = {}
    for sc in scenarios:
        if sc.mode != "measured":
            continue
        m = match_rows(rows, sc, f"csv:{path}")
        if m is None:
            raise PlanError(f"--from-csv {path}", f"no row matches scenario [{sc.name}] ({sc.bench.key}); "
                                                  f"run `refplan check --measured` or bench it")
        out[sc.name] = m
    return out


def measure(scenarios: list[BudgetScenario], out_dir: str | Path | None = None, progress: bool = False
            ) -> dict[str, Measurement]:
    """Run one burst per measured scenario with the bench harness (each in its own process).

    ``out_dir`` receives the harness's ``bench.csv`` and logs, so CI can keep them as an artifact;
    None runs in a temporary directory removed afterwards.
    """
    if out_dir is None:
        with tempfile.TemporaryDirectory(prefix="refplan-check-") as tmp:
            return measure(scenarios, tmp, progress)
    from refplan.harness.runner import RunOptions, run_matrix

    measured = [sc for sc in scenarios if sc.mode == "measured"]
    if not measured:
        return {}
    rows = run_matrix([sc.bench for sc in measured],
                      RunOptions(out_dir=Path(out_dir), suite="check", progress=progress, report=False))
    by_key = {row.get("key"): row for row in rows}
    out = {}
    for sc in measured:
        row = by_key.get(sc.bench.key)
        out[sc.name] = (_measurement(row, "burst") if row is not None
                        else Measurement(None, "error", "the harness returned no row", "burst"))
    return out
