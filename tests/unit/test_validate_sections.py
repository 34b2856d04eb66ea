"""The standing report gathers the other validate matrices (refplan.validate_sections): per family, per precision."""

from __future__ import annotations

import csv

from refplan.validate_sections import family_sections, precision_section


def _csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_families_from_both_runs_per_family_and_failed_bursts_left_out(tmp_path):
    _csv(tmp_path / "validate-families" / "accuracy.csv", [
        {"family": "bloom", "status": "ok", "error_pct": "0.5"},
        {"family": "bloom", "status": "ok", "error_pct": "-1.5"},
        {"family": "opt", "status": "error", "error_pct": ""}])
    _csv(tmp_path / "validate-families-2" / "accuracy.csv", [
        {"family": "gpt2", "status": "ok", "error_pct": "-0.25"}])
    text = "\n".join(family_sections(tmp_path))
    assert "| bloom | 2 | 1.000 | 1.500 |" in text and "| gpt2 | 1 | 0.250 | 0.250 |" in text
    assert "opt" not in text.split("| family |")[1] and "3 bursts, worst |error| 1.500 %" in text
    assert family_sections(tmp_path / "nothing") == []


def test_precision_section_per_setup(tmp_path):
    _csv(tmp_path / "validate-precision" / "accuracy.csv", [
        {"precision": "bf16", "status": "ok", "error_pct": "0.2"},
        {"precision": "fp32+autocast", "status": "ok", "error_pct": "-3.0"},
        {"precision": "fp32+autocast", "status": "ok", "error_pct": "1.0"}])
    text = "\n".join(precision_section(tmp_path))
    assert "| fp32+autocast | 2 | 2.000 | 3.000 |" in text and "3 bursts, median |error| 1.000 %, worst 3.000 %" in text
