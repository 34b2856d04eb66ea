"""The report side (pandas): Markdown tables, the bench summary and the accuracy breakdowns, on
hand-written rows whose numbers are worked out by hand. No torch, no bursts."""

from __future__ import annotations

import csv

import pytest

pd = pytest.importorskip("pandas")

from refplan.harness import report  # noqa: E402
from refplan.harness.rows import COLUMNS  # noqa: E402


def test_markdown_table_without_tabulate():
    df = pd.DataFrame({"name": ["a", "b"], "n": [1, 22], "note": ["", "x"]})
    assert report.markdown_table(df, right=("n",)) == "\n".join([
        "| name | n | note |",
        "|---|---:|---|",
        "| a | 1 |  |",
        "| b | 22 | x |",
    ])
    assert report.markdown_table(pd.DataFrame([("k", None)], columns=["", ""], dtype=object)).splitlines()[0] == "| | |"


def _write_bench(path, rows):
    with open(path / "bench.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in COLUMNS} for r in rows)


def test_bench_summary_reads_cells_as_written(tmp_path):
    mib = 2**20
    _write_bench(tmp_path, [
        dict(key="a", method="dpo", strategy="separate", finetune="full", status="ok", loaded_bytes=54 * mib,
             peak_train_bytes=int(388.25 * mib), est_peak_bytes=388 * mib, est_error_pct="-0.0644",
             median_step_s="0.6984", step_spread_pct="7.9", speed_vs_separate="1", tokens_per_s="1467.6",
             parity_ok="baseline"),
        dict(key="b", method="dpo", strategy="precompute", ref_dtype="", finetune="full", status="ok",
             speed_vs_separate="1.42", speed_flag="noisy", parity_max_abs_diff="0", ref_logp_max_abs_diff="1.5e-05",
             parity_ok="pass"),
        dict(key="c", method="dpo", strategy="separate", ref_dtype="bf16", finetune="lora", status="crash",
             error="process ended without a result (exit 1)"),
        dict(key="d", method="dpo", strategy="sync", finetune="lora", status="unsupported", error="TRL refuses"),
    ])
    md = report.markdown(report.read_bench(tmp_path), {"torch": "2.13.0", "driver": None}).splitlines()
    assert "| torch | 2.13.0 |" in md and "| driver | None |" in md
    assert any(line.startswith("3 scenarios run, 2 ok.") for line in md)
    assert ("| dpo separate (full) | ok | 54.0 |  | 388.2 | 388.0 | -0.1 | 0.698 | 8 | 1.00 | 1468 |  |  | baseline |"
            in md)
    assert ("| dpo precompute (full) | ok |  |  |  |  |  |  |  | 1.42 (noisy) |  | 0 | 1.5e-05 | pass |"
            in md)  # as written
    assert "| dpo separate ref bf16 (lora) | crash |  |  |  |  |  |  |  |  |  |  |  |  |" in md
    assert "- `c`: crash -- process ended without a result (exit 1)" in md
    assert "- dpo sync (lora): TRL refuses" in md


def test_empty_bench_directory_renders(tmp_path):
    md = report.markdown(report.read_bench(tmp_path), None)
    assert "0 scenarios run, 0 ok." in md


def test_accuracy_breakdown_numbers():
    from refplan.validate import _breakdown, _frame, summarize

    base = dict(case="c", family="llama", strategy="separate", finetune="full", batch=2, seq=32,
                measured_bytes=100, estimated_bytes=101, est_peak_phase="backward")
    results = [
        {**base, "key": "1", "method": "dpo", "grad_ckpt": True, "status": "ok", "error_pct": 1.0},
        {**base, "key": "2", "method": "dpo", "grad_ckpt": False, "status": "ok", "error_pct": -3.0},
        {**base, "key": "3", "method": "dpo", "grad_ckpt": False, "status": "ok", "error_pct": 2.0},
        {**base, "key": "4", "method": "kto", "grad_ckpt": False, "status": "ok", "error_pct": -9.0},
        {**base, "key": "5", "method": "kto", "grad_ckpt": False, "status": "crash", "error_pct": None,
         "measured_bytes": None},
    ]
    df = _frame(results)
    assert _breakdown(df, "method") == [
        "| method | n | median abs err % | worst abs err % | mean signed err % |",
        "|---|---|---|---|---|",
        "| dpo | 3 | 2.000 | 3.000 | +0.000 |",
        "| kto | 1 | 9.000 | 9.000 | -9.000 |",
    ]
    assert _breakdown(df, "grad_ckpt")[2].startswith("| False | 3 | 3.000 | 9.000 |")
    s = summarize(results)
    assert (s["scenarios"], s["measured"], s["failed"]) == (5, 4, 1)
    assert s["median_abs_error_pct"] == 2.5 and s["worst_abs_error_pct"] == 9.0
    assert (s["within_3pct"], s["within_8pct"], s["passes"]) == (3, 3, False)
    assert s["families"] == ["llama"]
