"""`refplan estimate` through the CLI: the JSON contract, bad input as one line and exit 2, fuzzed flags."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refplan.methods import Method, Strategy
from refplan.spec import TrainSpec

def spec(**kw):
    base = dict(method=Method.DPO, strategy=Strategy.SEPARATE, dtype="fp32", batch=2, seq=128, device="cpu",
                padded=False)
    base.update(kw)
    return TrainSpec.parse(**base)

# ---------------------------------------------------------------- CLI

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "refplan.cli", *args], capture_output=True, text=True)


def test_cli_json_contract():
    r = run_cli("estimate", "--model", "meta-llama/Llama-3.1-8B", "--format", "json", "--gpu", "H100-80GB",
                "--batch", "2")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["model"]["params"] == 8_030_261_248 and doc["model"]["family"] == "llama"
    row = doc["rows"][0]
    assert {"method", "strategy", "finetune", "peak_bytes", "peak_phase", "components", "fits"} <= set(row)
    assert row["peak_bytes"] == sum(row["components"].values())
    assert isinstance(row["fits"], bool)
    assert {r["method"] for r in doc["rows"]} == {"dpo", "ipo", "kto", "orpo", "simpo"}


@pytest.mark.parametrize("args,flag", [
    (["--model", "no-such/model-xyz", "--offline"], "--model"),
    (["--model", "meta-llama/Llama-3.1-8B", "--seq", "0"], "--seq"),
    (["--model", "meta-llama/Llama-3.1-8B", "--gpu", "H9000"], "--gpu"),
    (["--model", "meta-llama/Llama-3.1-8B", "--method", "orpo", "--strategy", "separate"], "--strategy"),
    (["--model", "meta-llama/Llama-3.1-8B", "--strategy", "sync", "--finetune", "lora"], "--strategy"),
    (["--model", "meta-llama/Llama-3.1-8B", "--batch", "abc"], "--batch"),
    (["--model", "meta-llama/Llama-3.1-8B", "--format", "xml"], "--format"),
    (["--model", "meta-llama/Llama-3.1-8B", "--finetune", "qlora", "--quant-bits", "3"], "--quant-bits"),
    (["--model", "meta-llama/Llama-3.1-8B", "--finetune", "qlora", "--quant-type", "nf5"], "--quant-type"),
    (["--model", "meta-llama/Llama-3.1-8B", "--finetune", "qlora", "--quant-compute-dtype", "int4"],
     "--quant-compute-dtype"),
    (["--model", "meta-llama/Llama-3.1-8B", "--finetune", "lora", "--prepare-kbit"], "--prepare-kbit"),
    (["--model", "meta-llama/Llama-3.1-8B", "--ref-quant", "2bit"], "--ref-quant"),
])
def test_cli_bad_input_is_one_line_exit_2(args, flag):
    r = run_cli("estimate", *args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and flag in r.stderr


def test_cli_malformed_config_names_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    r = run_cli("estimate", "--model", str(tmp_path))
    assert r.returncode == 2 and "config.json" in r.stderr and "Traceback" not in r.stderr


_FLAGS = ["--method", "--strategy", "--finetune", "--dtype", "--batch", "--seq", "--gpu", "--zero", "--gpus",
          "--optim", "--ref-quant", "--lora-r", "--format", "--device"]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_FLAGS), st.one_of(st.text(max_size=6), st.integers(-5, 10**7).map(str))),
                max_size=3))
def test_cli_never_tracebacks_on_fuzzed_arguments(pairs):
    from refplan.cli import main

    argv = ["estimate", "--model", "meta-llama/Llama-3.1-8B", "--offline", "--format", "json"]
    for flag, val in pairs:
        argv += [flag, val]
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    assert code in (0, 2), err.getvalue()


def test_cli_check_defaults_match_check_module():
    # refplan/cli/check.py repeats the defaults so building the parser stays import-light
    from refplan import check
    from refplan.cli import check as cli_check

    assert (cli_check.DEFAULT_BUDGETS, cli_check.DEFAULT_BASELINE) == (check.DEFAULT_BUDGETS, check.DEFAULT_BASELINE)
