"""GPU tier: a real burst on CUDA reports the allocator's and NVML's peaks. Marked ``gpu``: skipped
(by tests/conftest.py) where torch sees no CUDA device, so CI stays green without one."""

from __future__ import annotations

import pytest

from refplan.harness.scenario import Scenario

MICRO = dict(model="random:micro", seq=32, batch=2, steps=2, lora_r=4)


@pytest.mark.gpu
def test_cuda_burst_reports_allocator_and_nvml_peaks():
    from refplan.harness.burst import run_burst

    sc = Scenario.from_dict({"method": "dpo", "strategy": "precompute", **MICRO, "device": "cuda", "dtype": "bf16"})
    rec = run_burst(sc)
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["memory_source"] == "cuda-allocator"
    assert rec["torch_max_allocated_bytes"] >= rec["peak_train_bytes"] > 0
    assert rec["torch_max_reserved_bytes"] >= rec["torch_max_allocated_bytes"]
