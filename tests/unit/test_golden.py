"""Behaviour does not change by accident: the formula engine against committed golden estimates.

``bench/golden_estimates.py --write`` rewrites the file; only a change meant to move numbers may do so,
and its commit says which mechanism moved them.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_estimates_equal_golden_byte_for_byte():
    spec = importlib.util.spec_from_file_location("golden_estimates", ROOT / "bench" / "golden_estimates.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    golden = json.loads(mod.GOLDEN.read_text())
    now = mod.compute()
    assert len(now) > 4000
    diffs = mod.compare(now, golden)
    assert not diffs, f"{len(diffs)} estimates moved, e.g. " + "; ".join(diffs[:5])
