"""Sizes as a budgets file writes them: ``"40 GiB"``, ``"90%"``, a tolerance; integer bytes inside.

GiB is 2^30 bytes. Decimal units (GB) are refused rather than guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from refplan.errors import PlanError
from refplan.units import GIB, KIB, MIB

_UNITS = {"b": 1, "kib": KIB, "mib": MIB, "gib": GIB, "tib": 1024 * GIB}
_DECIMAL = {"kb", "mb", "gb", "tb"}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z%]*)\s*$")


def parse_size(value, where: str) -> int:
    """``"40 GiB"`` / ``"512 MiB"`` / ``"1024 B"`` -> bytes. A bare number or a decimal unit is refused."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PlanError(where, f"expected a size such as \"40 GiB\" (got {value!r})")
    if not isinstance(value, str):
        raise PlanError(where, f"{value!r} has no unit; write \"{value} GiB\" (or MiB, KiB, B)")
    m = _SIZE.match(value)
    if not m:
        raise PlanError(where, f"cannot read {value!r}; write a number and a unit, e.g. \"40 GiB\"")
    number, unit = float(m.group(1)), m.group(2).lower()
    if not unit:
        raise PlanError(where, f"{value!r} has no unit; write \"{value.strip()} GiB\" (or MiB, KiB, B)")
    if unit in _DECIMAL:
        raise PlanError(where, f"{value!r}: decimal units are ambiguous here; write {unit[0].upper()}iB "
                               "(2^10 multiples: GiB = 2^30 bytes)")
    if unit not in _UNITS:
        raise PlanError(where, f"{value!r}: unknown unit {m.group(2)!r}; use B, KiB, MiB, GiB or TiB")
    return int(round(number * _UNITS[unit]))


def percent(value) -> float | None:
    """``"90%"`` -> 0.9; None when ``value`` is not a percentage."""
    m = _SIZE.match(value) if isinstance(value, str) else None
    return float(m.group(1)) / 100 if m and m.group(2) == "%" else None


@dataclass(frozen=True)
class Tolerance:
    """How much a peak may grow over its baseline: a fraction of the baseline, or bytes."""

    text: str  # as written in the budgets file: "5%", "0.5 GiB"
    fraction: float | None = None
    bytes: int | None = None

    def allowed_bytes(self, baseline_bytes: int) -> int:
        if self.fraction is not None:
            return int(baseline_bytes * self.fraction)
        return self.bytes or 0

    @classmethod
    def parse(cls, value, where: str) -> Tolerance:
        frac = percent(value)
        if frac is not None:
            return cls(value.strip(), fraction=frac)
        nbytes = parse_size(value, where)
        return cls(value.strip(), bytes=nbytes)


def fmt_size(n_bytes: int, signed: bool = False) -> str:
    """GiB for GiB-sized numbers, MiB below (tiny measured scenarios), with the unit."""
    sign = "+" if signed else ""
    if abs(n_bytes) >= GIB // 2:
        return f"{n_bytes / GIB:{sign}.2f} GiB"
    return f"{n_bytes / MIB:{sign}.1f} MiB"
