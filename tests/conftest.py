"""Shared fixtures and helpers for every tier (unit, property, cli, harness, gpu).

Tiers live in folders; markers say what a test needs: ``slow`` (real TRL bursts, seconds each) and
``gpu`` (a CUDA device; skipped without one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"


def run_refplan(*args: str, cwd: str | Path | None = None, env: dict | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m refplan ARGS`` in a fresh interpreter, offline, output captured as text."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "refplan", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout)


def run_json(*args: str, **kw) -> dict:
    r = run_refplan(*args, "--format", "json", **kw)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


#: a small Llama-shaped config whose terms the unit tests derive by hand
TINY = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024, "tie_word_embeddings": False}


def spec(**kw):
    """A TrainSpec for planner tests: DPO separate, fp32, batch 2 x 128 tokens, CPU, unpadded, unless overridden."""
    from refplan.methods import Method, Strategy
    from refplan.spec import TrainSpec

    base = dict(method=Method.DPO, strategy=Strategy.SEPARATE, dtype="fp32", batch=2, seq=128, device="cpu",
                padded=False)
    base.update(kw)
    return TrainSpec.parse(**base)


@pytest.fixture(scope="session")
def tiny():
    from refplan.families import spec_from_config

    return spec_from_config(dict(TINY), "tiny", "test")


@pytest.fixture(scope="session")
def llama8b():
    from refplan.resolve import resolve_model

    return resolve_model("meta-llama/Llama-3.1-8B", offline=True)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
