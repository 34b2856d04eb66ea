"""Do two runs of the same bench agree on each strategy's speed relative to ``separate``?

Issue 10 asks that two runs of one bench agree on those ratios within 15 %. The ratio
(``speed_vs_separate`` in bench.csv: the ``separate`` row's median step time over the row's, both
measured in the same run, process CPU time on CPU) is what a user compares strategies by; absolute
tokens/s on a shared machine is not. This script reads two run directories, pairs rows by key and
prints both ratios side by side with their relative difference, the median and worst difference, and
whether every pair not flagged ``noisy`` in either run is within the bound.

    python bench/throughput_agreement.py RUN_A RUN_B [--bound 15] [--out FILE.md]

Exit 0 when the bound holds, 1 otherwise (2 on unreadable input).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path


def _rows(run: Path) -> dict[str, dict]:
    path = run / "bench.csv"
    if not path.exists():
        print(f"throughput_agreement: {path}: no bench.csv", file=sys.stderr)
        raise SystemExit(2)
    with open(path, newline="") as f:
        return {r["key"]: r for r in csv.DictReader(f) if r.get("status") == "ok" and r.get("speed_vs_separate")}


def compare(a: dict[str, dict], b: dict[str, dict]) -> list[dict]:
    """One entry per key timed in both runs: both ratios, |b/a - 1| in %, and whether either is noisy."""
    out = []
    for key in sorted(set(a) & set(b)):
        ra, rb = float(a[key]["speed_vs_separate"]), float(b[key]["speed_vs_separate"])
        if ra == 1.0 and rb == 1.0 and a[key]["strategy"] == "separate":
            continue  # the baselines themselves
        noisy = "noisy" in (a[key].get("speed_flag"), b[key].get("speed_flag"))
        ref = a[key].get("ref_dtype") or next((q for q in ("4bit", "8bit") if f"-ref{q}-" in key), "")
        label = f"{a[key]['method']} {a[key]['strategy']}{' ref ' + ref if ref else ''} ({a[key]['finetune']})"
        out.append({"key": key, "label": label, "a": ra, "b": rb, "diff_pct": 100 * abs(rb / ra - 1), "noisy": noisy})
    return out


def report(pairs: list[dict], bound: float, names: tuple[str, str]) -> tuple[str, bool]:
    read = [p for p in pairs if not p["noisy"]]
    ok = bool(read) and all(p["diff_pct"] <= bound for p in read)
    lines = [f"| scenario | × separate ({names[0]}) | × separate ({names[1]}) | |Δ| % | |",
             "|---|---:|---:|---:|---|"]
    for p in sorted(pairs, key=lambda p: -p["diff_pct"]):
        lines.append(f"| {p['label']} | {p['a']:.2f} | {p['b']:.2f} | {p['diff_pct']:.1f} | "
                     f"{'noisy' if p['noisy'] else ''} |")
    diffs = [p["diff_pct"] for p in read]
    verdict = (f"{len(read)} ratios read in both runs ({len(pairs) - len(read)} flagged noisy and left out): "
               f"median |Δ| {statistics.median(diffs):.1f} %, worst {max(diffs):.1f} % -> "
               f"{'within' if ok else 'NOT within'} {bound:.0f} %") if diffs else "no ratio read in both runs"
    return "\n".join([verdict, "", *lines]), ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--bound", type=float, default=15.0, help="largest |Δ| of a ratio, percent (default 15)")
    p.add_argument("--out", type=Path, help="also write the table as Markdown here")
    a = p.parse_args()
    text, ok = report(compare(_rows(a.run_a), _rows(a.run_b)), a.bound, (a.run_a.name, a.run_b.name))
    print(text)
    if a.out:
        a.out.write_text(f"# Speed relative to separate: two runs\n\n`python bench/throughput_agreement.py "
                         f"{a.run_a} {a.run_b}`\n\n{text}\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
