"""Sections of the standing report (``reports/accuracy.md``) drawn from the other validate matrices: every
formula family's accuracy (the default matrix draws eight; ``--families`` runs draw the rest) and the
mixed-precision matrix (``bench/validate_precision.py``). Each is read from its own ``accuracy.csv``
when it is there, so regenerating the standing report keeps them."""

from __future__ import annotations

from pathlib import Path

#: the ``--families`` runs whose results the standing report gathers, with the command that made each
FAMILY_RUNS = (
    ("validate-families", "refplan validate --n 66 --seed 0 --families qwen2_moe,falcon,gpt_bigcode,bloom,opt,phi,"
                          "granite,cohere,stablelm,smollm3,starcoder2 --out reports/validate-families"),
    ("validate-families-2", "refplan validate --n 36 --seed 0 --families mixtral,qwen3_moe,gemma,gemma3_text,"
                            "deepseek_v2,gpt2 --out reports/validate-families-2"),
)


def _rows(path: Path) -> list[dict]:
    import pandas as pd

    df = pd.read_csv(path, dtype=object)
    df["error_pct"] = pd.to_numeric(df["error_pct"], errors="coerce")
    return df[(df["status"] == "ok") & df["error_pct"].notna()].to_dict("records")


def _table(rows: list[dict], key: str) -> list[str]:
    """Markdown rows: n, median and worst |error| per value of ``key``."""
    import statistics

    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(r[key], []).append(abs(float(r["error_pct"])))
    lines = [f"| {key} | n | median abs err % | worst abs err % |", "|---|---|---|---|"]
    return lines + [f"| {k} | {len(e)} | {statistics.median(e):.3f} | {max(e):.3f} |" for k, e in sorted(by.items())]


def family_sections(reports: Path) -> list[str]:
    """Every formula family outside the default matrix, per family, from the ``--families`` runs."""
    rows, runs = [], []
    for name, cmd in FAMILY_RUNS:
        path = reports / name / "accuracy.csv"
        if path.exists():
            rows += _rows(path)
            runs.append(f"`{cmd}` ([{name}/accuracy.md]({name}/accuracy.md))")
    if not rows:
        return []
    worst = max(abs(float(r["error_pct"])) for r in rows)
    return ["", "## Every other formula family", "",
            f"The default matrix draws eight families; the other {len({r['family'] for r in rows})} are drawn "
            f"by {' and '.join(runs)}: {len(rows)} bursts, worst |error| {worst:.3f} % (targets 3 % median / "
            "8 % worst per family).", "", *_table(rows, "family")]


def precision_section(reports: Path) -> list[str]:
    """The mixed-precision matrix (fp32 + autocast, bf16, bf16 without autocast), per precision setup."""
    import statistics

    path = reports / "validate-precision" / "accuracy.csv"
    if not path.exists():
        return []
    rows = _rows(path)
    if not rows:
        return []
    errs = [abs(float(r["error_pct"])) for r in rows]
    return ["", "## Mixed precision: the same shapes in 16 bits", "",
            "`python bench/validate_precision.py --n 125 --seed 0 --out reports/validate-precision` "
            "([validate-precision/accuracy.md](validate-precision/accuracy.md)): every formula family once per "
            f"method, each in one of TRL's three 16-bit setups; {len(rows)} bursts, median |error| "
            f"{statistics.median(errs):.3f} %, worst {max(errs):.3f} %.", "", *_table(rows, "precision")]
