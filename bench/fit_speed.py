"""``refplan fit`` speed, side by side with ``refplan estimate`` (the anchor the issue names).

1. Cold start: ``refplan fit --model meta-llama/Llama-3.1-8B --gpu A100-40GB --format json`` (every
   method x strategy, max batch, max length, fewest GPUs) as a fresh process, against ``refplan
   estimate`` for the same model; target <= 0.3 s.
2. In-process: a 70B fit of every method x strategy including min_gpus; target <= 50 ms.

    python bench/fit_speed.py [--runs 9]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from estimate_speed import _time  # noqa: E402  -- the same cold-process timer as the anchor's


def _cold(cmd: list[str], runs: int) -> float:
    return _time(cmd, runs)[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=9)
    a = p.parse_args(argv)
    exe = shutil.which("refplan") or str(Path(sys.executable).with_name("refplan"))
    common = ["--model", "meta-llama/Llama-3.1-8B", "--format", "json"]
    est = _cold([exe, "estimate", *common, "--batch", "2"], a.runs)
    fit = _cold([exe, "fit", *common, "--gpu", "A100-40GB", "--batch", "2"], a.runs)

    from refplan.fit import fit as fit_fn
    from refplan.query import EstimateQuery, train_specs
    from refplan.resolve import resolve_model

    m70 = resolve_model("meta-llama/Llama-3.1-70B", offline=True)
    specs, _ = train_specs(EstimateQuery(m70, {"seq": 2048, "grad_ckpt": True, "batch": 2}))
    times = []
    for _ in range(max(9, a.runs)):
        t0 = time.perf_counter()
        answer = fit_fn(m70, specs, 80 * 2**30)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"{'measurement':60s} {'median':>9s} {'target':>8s}")
    print(f"{'refplan estimate 8B --format json (cold process)':60s} {est:8.3f}s {'':>8s}")
    print(f"{'refplan fit 8B --gpu A100-40GB --format json (cold process)':60s} {fit:8.3f}s {'0.3s':>8s}")
    print(f"{'ratio fit / estimate':60s} {fit / est:8.2f}x")
    print(f"{f'70B fit in-process, {len(specs)} rows incl. min_gpus':60s} {med * 1e3:7.1f}ms {'50ms':>8s}")
    print(f"  (70B rows: fewest GPUs {sorted({r.min_gpus for r in answer.rows})})")
    return 0 if fit <= 0.3 and med <= 0.050 else 1


if __name__ == "__main__":
    raise SystemExit(main())
