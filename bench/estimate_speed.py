"""Planner speed, side by side with its anchor (issue: Foundation, "Speed").

1. Cold start: ``refplan estimate --model meta-llama/Llama-3.1-8B --format json`` as a fresh process
   (median of N runs; target <= 0.25 s), against what ``accelerate estimate-memory`` does for the same
   model -- a meta-device model from a local config.json plus its size calculation
   (``accelerate.utils.calculate_maximum_sizes``); accelerate's own command needs the hub, so its
   compute is run directly from the same config.
2. In-process: the whole method x strategy table for a 70B model (target <= 10 ms, median).

    python bench/estimate_speed.py [--runs 9]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ANCHOR = """
import sys, json, torch
from accelerate import init_empty_weights
from accelerate.utils import calculate_maximum_sizes
from transformers import AutoConfig, AutoModelForCausalLM
cfg = AutoConfig.from_pretrained(sys.argv[1])
with init_empty_weights():
    model = AutoModelForCausalLM.from_config(cfg)
total, largest = calculate_maximum_sizes(model)
print(json.dumps({"total_bytes": total, "largest": str(largest)}))
"""


def _time(cmd: list[str], runs: int) -> tuple[float, str]:
    times = []
    out = ""
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"command failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
        out = r.stdout
    return statistics.median(times), out


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=9)
    a = p.parse_args(argv)

    from refplan.resolve import catalog_entries

    entry = next(e for e in catalog_entries() if e["model_id"] == "meta-llama/Llama-3.1-8B")
    tmp = Path(tempfile.mkdtemp(prefix="refplan-speed-"))
    (tmp / "config.json").write_text(json.dumps(entry["config"]))
    refplan_exe = shutil.which("refplan") or str(Path(sys.executable).with_name("refplan"))
    ours, out = _time([refplan_exe, "estimate", "--model", "meta-llama/Llama-3.1-8B", "--format", "json"], a.runs)
    rows = len(json.loads(out)["rows"])
    example = Path(__file__).resolve().parents[1] / "docs" / "examples" / "axolotl-qlora-dpo.yaml"
    with_config, _ = _time([refplan_exe, "estimate", "--config", str(example), "--format", "json"], a.runs)
    anchor, aout = _time([sys.executable, "-c", ANCHOR, str(tmp)], max(3, a.runs // 3))

    from refplan.methods import Method, Strategy
    from refplan.planner import estimate_matrix
    from refplan.resolve import resolve_model
    from refplan.spec import TrainSpec

    m70 = resolve_model("meta-llama/Llama-3.1-70B", offline=True)
    base = TrainSpec(Method.DPO, Strategy.PRECOMPUTE, batch=2, seq=4096)
    inproc = []
    for _ in range(max(21, a.runs)):
        t0 = time.perf_counter()
        n70 = len(estimate_matrix(m70, base))
        inproc.append(time.perf_counter() - t0)
    med70 = statistics.median(inproc)

    print(f"{'measurement':58s} {'median':>10s} {'target':>8s}")
    print(f"{'refplan estimate 8B --format json (cold process, ' + str(rows) + ' rows)':58s} {ours:9.3f}s {'0.25s':>8s}")
    print(f"{'refplan estimate --config axolotl-qlora-dpo.yaml (cold process)':58s} {with_config:9.3f}s {'0.2s':>8s}")
    print(f"{'anchor: accelerate meta model + calculate_maximum_sizes':58s} {anchor:9.3f}s {'':>8s}")
    print(f"{'ratio anchor / refplan':58s} {anchor / ours:9.1f}x")
    print(f"{'70B method x strategy table in-process (' + str(n70) + ' rows)':58s} {med70 * 1e3:8.2f}ms {'10ms':>8s}")
    print(f"anchor says total {json.loads(aout)['total_bytes']} bytes (fp32 weights)")
    return 0 if ours <= 0.25 and with_config <= 0.2 and med70 <= 0.010 else 1


if __name__ == "__main__":
    raise SystemExit(main())
