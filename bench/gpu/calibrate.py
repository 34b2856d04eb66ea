"""CUDA-only planner terms, measured on one GPU (issue: planner accuracy, "CUDA-only terms").

Writes one CSV (``--out``, default reports/gpu/cuda_terms.csv) with:
- context_bytes: NVML device memory used after CUDA init + a cuBLAS matmul + an SDPA call, minus
  the used memory before init, minus torch's reserved bytes (what the planner calls the CUDA context);
- allocator rounding: bytes reserved for a 1-byte and a 1 MiB + 1 byte request (512 B blocks,
  2 MiB / 20 MiB segments, PyTorch CUDACachingAllocator);
- reserved/allocated ratio after a transformer-like allocation pattern.

    python bench/gpu/calibrate.py [--out reports/gpu/cuda_terms.csv]
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "reports/gpu"), "cuda_terms.csv"))
    a = p.parse_args(argv)
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    used0 = pynvml.nvmlDeviceGetMemoryInfo(h).used
    import torch
    import torch.nn.functional as F

    torch.cuda.init()
    x = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
    (x @ x).sum().item()
    q = torch.randn(1, 8, 256, 64, device="cuda", dtype=torch.bfloat16)
    F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().item()
    torch.cuda.synchronize()
    used1 = pynvml.nvmlDeviceGetMemoryInfo(h).used
    reserved = torch.cuda.memory_reserved()
    context = used1 - used0 - reserved
    del x, q
    torch.cuda.empty_cache()

    rows = {"device": torch.cuda.get_device_name(0), "driver": pynvml.nvmlSystemGetDriverVersion(),
            "torch": torch.__version__, "context_bytes": context, "nvml_used_before_init": used0}
    for label, n in (("1B", 1), ("1MiB+1B", 2**20 + 1), ("16MiB+1B", 2**24 + 1)):
        torch.cuda.empty_cache()
        r0 = torch.cuda.memory_reserved()
        t = torch.empty(n, dtype=torch.uint8, device="cuda")
        rows[f"alloc_{label}_allocated"] = torch.cuda.memory_allocated()
        rows[f"alloc_{label}_reserved_delta"] = torch.cuda.memory_reserved() - r0
        del t
    # a transformer-like pattern: many activations of mixed sizes, freed in reverse, then a bigger one
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    keep = []
    for i in range(64):
        keep.append(torch.empty((2048 + 37 * i) * 4096, dtype=torch.bfloat16, device="cuda"))
    for t in keep[::2]:
        del t
    keep = keep[1::2]
    big = torch.empty(3 * 2048 * 4096, dtype=torch.bfloat16, device="cuda")
    rows["pattern_max_allocated"] = torch.cuda.max_memory_allocated()
    rows["pattern_max_reserved"] = torch.cuda.max_memory_reserved()
    rows["pattern_slack_pct"] = round(100 * (rows["pattern_max_reserved"] / rows["pattern_max_allocated"] - 1), 2)
    del keep, big
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows))
        w.writeheader()
        w.writerow(rows)
    for k, v in rows.items():
        print(f"{k:34s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
