"""The committed baseline (``reports/baseline.json``): each scenario's accepted peak, and its mode.

An entry changes only when its peak or mode does, so re-accepting unchanged peaks leaves the file
(and the review) untouched.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from refplan.errors import PlanError

if TYPE_CHECKING:
    from refplan.check.verdicts import CheckRow

DEFAULT_BASELINE = "reports/baseline.json"


@dataclass(frozen=True)
class BaselineEntry:
    peak_bytes: int
    mode: str
    refplan_version: str
    updated: str  # ISO 8601, UTC


def read_baseline(path: str | Path) -> dict[str, BaselineEntry]:
    """Scenario name -> entry; an absent file is an empty baseline."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(file, f"cannot read: {e}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise PlanError(file, f"not valid JSON (line {e.lineno}: {e.msg}); regenerate it with "
                              "refplan check --update-baseline") from None
    if not isinstance(doc, dict):
        raise PlanError(file, "expected an object of scenario name -> entry")
    out = {}
    for name, entry in doc.items():
        try:
            out[name] = BaselineEntry(int(entry["peak_bytes"]), str(entry["mode"]), str(entry["refplan_version"]),
                                      str(entry["updated"]))
        except (TypeError, KeyError, ValueError):
            raise PlanError(f"{file}: {name}", "expected peak_bytes, mode, refplan_version and updated") from None
    return out


def updated_baseline(old: dict[str, BaselineEntry], rows: list[CheckRow], names: list[str] | None = None,
                     now: str | None = None) -> dict[str, BaselineEntry]:
    """The baseline after accepting ``rows``' peaks.

    Unchanged peaks keep their entry (no churn in review); scenarios without a peak now (skipped,
    failed, or not selected) keep theirs; entries for names not in ``names`` (the budgets file's
    scenarios; default: the rows') are dropped.
    """
    from refplan import __version__

    stamp = now or datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    keep = set(names) if names is not None else {r.scenario.name for r in rows}
    out = {name: entry for name, entry in old.items() if name in keep}
    for r in rows:
        if r.now_bytes is None:
            continue
        prev = old.get(r.scenario.name)
        if prev is None or prev.peak_bytes != r.now_bytes or prev.mode != r.scenario.mode:
            out[r.scenario.name] = BaselineEntry(r.now_bytes, r.scenario.mode, __version__, stamp)
    return dict(sorted(out.items()))


def write_baseline(path: str | Path, entries: dict[str, BaselineEntry]) -> None:
    doc = {name: {"peak_bytes": e.peak_bytes, "mode": e.mode, "refplan_version": e.refplan_version,
                  "updated": e.updated} for name, e in sorted(entries.items())}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
