"""Verdicts: each scenario's peak against its budget and, with a tolerance, its baseline.

``now > budget`` fails; ``now - baseline > tolerance`` fails when the scenario has a tolerance and
the baseline has an entry of the same mode. A measured scenario without a measurement is skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from refplan.check.baseline import BaselineEntry
from refplan.check.budgets import BudgetScenario
from refplan.check.measure import Measurement, estimate_peak
from refplan.check.sizes import fmt_size
from refplan.units import GIB


@dataclass(frozen=True)
class CheckRow:
    """One scenario's check. ``now_bytes`` None: skipped (``skipped``) or the burst failed (``error``).

    ``baseline`` is the comparable entry (same mode) or None; ``baseline_note`` says why one was not
    compared.
    """

    scenario: BudgetScenario
    now_bytes: int | None
    source: str  # "planner", "burst", "csv:FILE row N", "" when skipped
    baseline: BaselineEntry | None = None
    baseline_note: str = ""
    skipped: bool = False
    error: str = ""

    @property
    def budget_bytes(self) -> int:
        return self.scenario.budget_bytes

    @property
    def baseline_bytes(self) -> int | None:
        return None if self.baseline is None else self.baseline.peak_bytes

    @property
    def delta_bytes(self) -> int | None:
        if self.now_bytes is None or self.baseline is None:
            return None
        return self.now_bytes - self.baseline.peak_bytes

    @property
    def delta_pct(self) -> float | None:
        if self.delta_bytes is None or not self.baseline.peak_bytes:
            return None
        return 100.0 * self.delta_bytes / self.baseline.peak_bytes

    @property
    def allowed_growth_bytes(self) -> int | None:
        tol = self.scenario.tolerance
        return None if tol is None or self.baseline is None else tol.allowed_bytes(self.baseline.peak_bytes)

    @property
    def over_budget(self) -> bool:
        return self.now_bytes is not None and self.now_bytes > self.budget_bytes

    @property
    def regressed(self) -> bool:
        allowed = self.allowed_growth_bytes
        return allowed is not None and self.delta_bytes is not None and self.delta_bytes > allowed

    @property
    def failed(self) -> bool:
        """The measurement itself failed (OOM or crash)."""
        return self.now_bytes is None and not self.skipped

    @property
    def passed(self) -> bool:
        return not (self.over_budget or self.regressed or self.failed)

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "skipped"
        if self.failed:
            return "oom" if "oom" in self.error[:4] else "failed"
        bad = [w for w, b in (("over budget", self.over_budget), ("regressed", self.regressed)) if b]
        return " + ".join(bad) if bad else "pass"

    @property
    def reasons(self) -> tuple[str, ...]:
        """One sentence per failed condition, in GiB."""
        out = []
        if self.failed:
            out.append(self.error)
        if self.over_budget:
            out.append(f"peak {fmt_size(self.now_bytes)} exceeds the budget {fmt_size(self.budget_bytes)} "
                       f"({self.scenario.budget_text}) by {fmt_size(self.now_bytes - self.budget_bytes)}")
        if self.regressed:
            out.append(f"peak grew {fmt_size(self.delta_bytes, signed=True)} ({self.delta_pct:+.1f}%) over the "
                       f"baseline {fmt_size(self.baseline_bytes)}; tolerance {self.scenario.tolerance.text} "
                       f"= {fmt_size(self.allowed_growth_bytes)}")
        return tuple(out)


def check(scenarios: list[BudgetScenario], baseline: dict[str, BaselineEntry],
          measurements: dict[str, Measurement] | None = None) -> list[CheckRow]:
    """Check every scenario. Measured scenarios without a measurement are skipped (no verdict)."""
    rows = []
    for sc in scenarios:
        entry = baseline.get(sc.name)
        note = ""
        if entry is not None and entry.mode != sc.mode:
            entry, note = None, f"baseline is {baseline[sc.name].mode}; not compared with a {sc.mode} peak"
        if sc.mode == "estimate":
            rows.append(CheckRow(sc, estimate_peak(sc), "planner", entry, note))
            continue
        m = (measurements or {}).get(sc.name)
        if m is None:
            rows.append(CheckRow(sc, None, "", entry, note, skipped=True,
                                 error="measured scenario; run with --measured or --from-csv FILE"))
        else:
            rows.append(CheckRow(sc, m.peak_bytes, m.source, entry, note,
                                 error="" if m.peak_bytes is not None else f"{m.status}: {m.error}"))
    return rows


def exit_code(rows: list[CheckRow], baseline_updated: bool = False) -> int:
    """0 when every checked scenario passes, 1 when a budget or tolerance is exceeded or a burst failed.

    With ``baseline_updated`` the peaks just written are the baseline, so only budgets and failed
    bursts count.
    """
    if baseline_updated:
        return 0 if not any(r.over_budget or r.failed for r in rows) else 1
    return 0 if all(r.passed for r in rows) else 1


def _round(x: float | None, nd: int) -> float | None:
    return None if x is None or math.isnan(x) else round(x, nd)


def row_record(r: CheckRow) -> dict:
    """The JSON view of one row (integer bytes, with GiB copies for reading)."""
    sc, t = r.scenario, r.scenario.train
    return {
        "scenario": sc.name,
        "mode": sc.mode,
        "model": sc.model,
        "method": t.method.value,
        "strategy": t.strategy.value,
        "finetune": t.finetune.value,
        "batch": t.batch,
        "seq": t.seq,
        "gpu": sc.gpu.name if sc.gpu else None,
        "budget": sc.budget_text,
        "budget_bytes": r.budget_bytes,
        "baseline_bytes": r.baseline_bytes,
        "now_bytes": r.now_bytes,
        "now_gib": _round(r.now_bytes / GIB if r.now_bytes is not None else None, 3),
        "delta_bytes": r.delta_bytes,
        "delta_pct": _round(r.delta_pct, 2),
        "tolerance": sc.tolerance.text if sc.tolerance else None,
        "allowed_growth_bytes": r.allowed_growth_bytes,
        "source": r.source,
        "verdict": r.verdict,
        "passed": r.passed,
        "over_budget": r.over_budget,
        "regressed": r.regressed,
        "skipped": r.skipped,
        "reasons": list(r.reasons),
        "note": r.baseline_note or (r.error if r.skipped else ""),
    }
