"""Per-rank planner error and speed ratios of a sharded bench, re-scored with today's planner.

    python bench/sharded_summary.py reports/bench-sharded [--md]

Reads ``bench.csv`` (one row per rank) and each scenario's ``sharded/<key>/request.json``; prints, per
engine, the rows, median and worst |error|, and each strategy's speed relative to ``separate`` of the
same method, fine-tune and engine (median step CPU seconds of rank 0), with rows whose step spread
exceeds 20 % flagged.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refplan.harness.scenario import Scenario  # noqa: E402
from refplan.harness.tiny import resolve_model_dir  # noqa: E402
from refplan.planner import estimate  # noqa: E402
from refplan.resolve import resolve_model  # noqa: E402

SPREAD_LIMIT_PCT = 20.0


def rescore(out: Path) -> list[dict]:
    rows = list(csv.DictReader(open(out / "bench.csv")))
    cache: dict = {}
    for r in rows:
        key = r["key"].rsplit("-rank", 1)[0]
        if key not in cache:
            req = json.loads((out / "sharded" / key / "request.json").read_text())
            sc = Scenario.from_dict(req["scenario"])
            cache[key] = (sc, estimate(resolve_model(str(resolve_model_dir(sc.model))), sc.train).peak_bytes)
        sc, est = cache[key]
        r["scenario_key"], r["est_now"] = key, est
        r["err_now"] = 100.0 * (est - float(r["peak_bytes"])) / float(r["peak_bytes"]) if r["peak_bytes"] else None
    return rows


def speed_ratios(rows: list[dict]) -> dict:
    rank0 = {(r["method"], r["finetune"], r["sharding"], r["strategy"]): r for r in rows
             if r["rank"] == "0" and r["status"] == "ok" and r["median_step_s"]}
    out = {}
    for (m, ft, sh, st), r in rank0.items():
        base = rank0.get((m, ft, sh, "separate"))
        if base is not None:
            noisy = max(float(r["step_spread_pct"] or 0), float(base["step_spread_pct"] or 0)) > SPREAD_LIMIT_PCT
            out[(m, ft, sh, st)] = (float(base["median_step_s"]) / float(r["median_step_s"]), noisy)
    return out


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "reports/bench-sharded")
    rows = rescore(out)
    print("| scenario | rank | status | measured MiB | planner MiB | error % | step CPU s | spread % |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        err = f"{r['err_now']:+.2f}" if r["err_now"] is not None else ""
        peak = f"{float(r['peak_bytes']) / 2**20:.1f}" if r["peak_bytes"] else ""
        print(f"| {r['scenario_key']} | {r['rank']} | {r['status']} | {peak} | {r['est_now'] / 2**20:.1f} | {err} "
              f"| {r['median_step_s']} | {r['step_spread_pct']} |")
    print()
    for sh in ("zero2", "zero3", "fsdp"):
        errs = [abs(r["err_now"]) for r in rows if r["sharding"] == sh and r["err_now"] is not None]
        if errs:
            print(f"{sh}: {len(errs)} rank rows, median |error| {statistics.median(errs):.2f} %, worst {max(errs):.2f} %")
    print()
    for (m, ft, sh, st), (ratio, noisy) in sorted(speed_ratios(rows).items()):
        print(f"speed vs separate: {m} {ft} {sh} {st}: {ratio:.2f}x" + (" (noisy)" if noisy else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
