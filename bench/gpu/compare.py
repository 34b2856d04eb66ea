"""Planner vs a GPU bench CSV: allocator peak, reserved and NVML, per scenario.

    python bench/gpu/compare.py reports/gpu/bench.csv [--out reports/gpu/compare.md]

For each measured row: the planner's allocated bytes (its peak phase without the CUDA-only terms)
against ``torch.cuda.max_memory_allocated``; its full estimate (with context and allocator slack)
against the NVML device peak; and the measured reserved/allocated slack.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

CUDA_ONLY = ("cuda context", "allocator slack")  # not in max_memory_allocated


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("csv")
    p.add_argument("--out", default=None)
    p.add_argument("--optim", default=None, help="override the optimizer of every row (e.g. adamw-torch for "
                                                  "CSVs recorded when the bench's adamw meant adamw_torch)")
    a = p.parse_args(argv)
    from refplan.harness.scenario import Scenario
    from refplan.planner import estimate
    from refplan.resolve import resolve_model

    rows = list(csv.DictReader(open(a.csv)))
    lines = ["| scenario | torch max alloc GiB | planner alloc GiB | err % | NVML peak GiB | planner total GiB | "
             "err % | reserved/alloc |", "|---|---|---|---|---|---|---|---|"]
    errs_alloc, errs_nvml, slack = [], [], []
    for r in rows:
        if r.get("status") != "ok" or not r.get("torch_max_allocated_bytes"):
            lines.append(f"| {r.get('key')} | {r.get('status')}: {r.get('error', '')[:80]} | | | | | | |")
            continue
        d = {k: r[k] for k in ("method", "strategy", "finetune", "model", "dtype", "attn", "device", "optim")
             if r.get(k)}
        for k in ("batch", "seq", "steps", "lora_r"):
            d[k] = int(r[k])
        d["grad_ckpt"] = r["grad_ckpt"] in ("True", "true", "1")
        if a.optim:
            d["optim"] = a.optim
        if r.get("ref_dtype"):
            d["ref_dtype"] = r["ref_dtype"]
        sc = Scenario.from_dict(d)
        model_dir = r.get("model_dir") or d["model"]
        try:
            spec = resolve_model(model_dir)
        except Exception:
            from refplan.harness.tiny import resolve_model_dir
            spec = resolve_model(str(resolve_model_dir(d["model"])))
        est = estimate(spec, sc.train)
        alloc_est = sum(v for k, v in est.components.items() if k not in CUDA_ONLY)
        alloc = int(r["torch_max_allocated_bytes"])
        reserved = int(r["torch_max_reserved_bytes"] or 0)
        nvml = int(r["nvml_peak_bytes"] or 0)
        e1 = 100 * (alloc_est - alloc) / alloc
        e2 = 100 * (est.peak_bytes - nvml) / nvml if nvml else float("nan")
        errs_alloc.append(abs(e1))
        if nvml:
            errs_nvml.append(abs(e2))
        if reserved:
            slack.append(reserved / alloc)
        g = 2**30
        lines.append(f"| {r['key']} | {alloc / g:.3f} | {alloc_est / g:.3f} | {e1:+.2f} | {nvml / g:.3f} | "
                     f"{est.peak_bytes / g:.3f} | {e2:+.2f} | {reserved / alloc:.3f} |")
    if errs_alloc:
        lines += ["", f"median |error| vs allocator: {statistics.median(errs_alloc):.2f} % (worst "
                      f"{max(errs_alloc):.2f} %); vs NVML: {statistics.median(errs_nvml):.2f} % "
                      f"(worst {max(errs_nvml):.2f} %); reserved/allocated median {statistics.median(slack):.3f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
