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
