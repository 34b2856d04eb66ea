"""Every planning path stays light: what each command imports, checked in a fresh interpreter.

The planner faces (estimate, fit, check in estimate mode, --config) import the standard library, rich
and -- for a YAML config -- PyYAML; the bench's CLI and suites never import torch until a burst runs.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import EXAMPLES, ROOT

#: the heavy stack no planning path may pull
HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "pandas", "numpy", "matplotlib")

CASES = {
    "planner modules": "import refplan.planner, refplan.families, refplan.resolve, refplan.query, refplan.fit",
    "estimate": "main(['estimate', '--model', 'meta-llama/Llama-3.1-8B', '--format', 'json'])",
    "estimate --config": f"main(['estimate', '--config', {str(EXAMPLES / 'axolotl-qlora-dpo.yaml')!r}, '--format', 'json'])",
    "fit": "main(['fit', '--model', 'meta-llama/Llama-3.1-8B', '--gpu', 'A100-40GB', '--format', 'json'])",
    "check (estimate mode)": f"main(['check', '--budgets', {str(ROOT / 'bench' / 'budgets.toml')!r}, '--format', 'json'])",
    "bench parser and suites": ("import refplan.cli.bench, refplan.harness.scenario\n"
                                "from refplan.harness import suites\n"
                                "suites.expand(suites.load_suite('default'))"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_planning_paths_import_no_heavy_stack(name):
    code = ("import sys, io, contextlib\nfrom refplan.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            + "".join(f"    {line}\n" for line in CASES[name].splitlines())
            + f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={"CI": "1", "PATH": "/usr/bin:/bin", "HOME": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1:] in ([], [""]), f"{name} imported {r.stdout.strip()}"
