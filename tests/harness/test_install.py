"""refplan installed from its wheel, as a user installs it, and run outside the repository.

The wheel is built from a copy of the source tree (so no stale ``build/`` folder of the checkout can
leak into it) and installed with pip into a fresh virtual environment; every command runs from an
empty temporary directory with that venv's ``refplan`` script. The heavy dependencies (torch, trl,
...) are not installed again: a ``.pth`` file points the new venv at this interpreter's
site-packages as a plain path, so the checkout's editable-install finder there is never activated,
and the test checks that ``refplan`` really is the installed copy. Slow: a wheel build and one real
TRL burst.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    ".hypothesis", ".whl", ".cache", "reports")


def _setuptools_builds_offline() -> bool:
    """setuptools >= 70.1 builds wheels without the ``wheel`` package; else pip's isolated build
    (which fetches setuptools from PyPI) is the way."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    import setuptools

    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(refplan console script, environment, working directory) of refplan installed from its wheel."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=NOT_SOURCE)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(src)]
    if _setuptools_builds_offline():
        build.insert(4, "--no-build-isolation")
    subprocess.run(build, check=True, cwd=root)
    (wheel,) = (root / "dist").glob("refplan-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    deps = sysconfig.get_paths()["purelib"]  # this interpreter's packages: torch, trl, transformers, ...
    (site / "_refplan_test_deps.pth").write_text(deps + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, cwd=root)

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    env.update(REFPLAN_CACHE=str(root / "cache"), HF_HUB_CACHE=str(root / "empty-hub"), HF_HUB_OFFLINE="1", CI="true",
               PATH=f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}")
    work = root / "work"
    work.mkdir()
    return venv / "bin" / "refplan", env, work


def _run(installed, *argv, timeout=120) -> subprocess.CompletedProcess:
    script, env, work = installed
    return subprocess.run([str(script), *argv], cwd=work, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_wheel_is_what_runs(installed):
    script, env, work = installed
    python = script.parent / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True, env=env).stdout.strip())
    code = "import refplan, refplan.harness.runner as r; print(refplan.__file__); print(r.__file__)"
    out = subprocess.run([str(python), "-c", code], cwd=work, env=env, capture_output=True, text=True, check=True)
    for line in out.stdout.split():
        assert Path(line).resolve().is_relative_to(site.resolve()), out.stdout
    assert sorted(p.name for p in (site / "refplan" / "suites").glob("*.toml")) == ["ci.toml", "default.toml",
                                                                                    "gpu.toml", "sharded.toml"]


def test_estimate(installed):
    res = _run(installed, "estimate", "--model", "meta-llama/Llama-3.1-8B", "--format", "json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["model"]["id"] == "meta-llama/Llama-3.1-8B"


def test_bench_list_finds_the_shipped_suites(installed):
    res = _run(installed, "bench", "--list")
    assert res.returncode == 0, res.stderr
    assert any(line.startswith("dpo-separate-full-") for line in res.stdout.splitlines())
    res = _run(installed, "bench", "--suite", "ci", "--list")
    assert res.returncode == 0, res.stderr


def test_bench_one_scenario_on_the_default_model(installed):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("trl")
    out = installed[2] / "bench-out"
    res = _run(installed, "bench", "--method", "orpo", "--finetune", "full", "--steps", "2", "--seq", "64",
               "--out", str(out), "--no-progress", timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr + (out / "bench.log").read_text(errors="replace")
    rows = pd.read_csv(out / "bench.csv")
    assert len(rows) == 1 and rows.loc[0, "status"] == "ok" and rows.loc[0, "model"] == "random:tiny"
    assert (out / "summary.md").is_file()


def test_check_estimate_mode(installed):
    budgets = installed[2] / "budgets.toml"
    budgets.write_text(textwrap.dedent("""\
        [defaults]
        tolerance = "2%"

        [llama1b-dpo-lora]
        model = "meta-llama/Llama-3.2-1B"
        method = "dpo"
        strategy = "separate"
        finetune = "lora"
        batch = 2
        seq = 1024
        gpu = "H100-80GB"
        budget = "40 GiB"
        """))
    res = _run(installed, "check", "--budgets", str(budgets), "--format", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "llama1b-dpo-lora" in res.stdout
