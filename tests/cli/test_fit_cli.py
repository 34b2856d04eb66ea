"""`refplan fit` through the CLI: the JSON fields, gradient accumulation, and bad input as exit 2."""

from __future__ import annotations

from conftest import EXAMPLES, run_json, run_refplan


def test_fit_json_rows_and_recommendation():
    doc = run_json("fit", "--model", "meta-llama/Llama-3.1-8B", "--finetune", "lora", "--method", "dpo", "--gpu",
                   "A100-40GB", "--seq", "2048", "--grad-ckpt", "--effective-batch", "64")
    rows = {r["strategy"]: r for r in doc["rows"]}
    assert set(rows) == {"separate", "unwrap", "ref-adapter", "precompute"}
    for r in rows.values():
        assert r["max_batch"] >= 1 and r["max_seq"] > 2048 and r["min_gpus"] is None and r["fits"]
        assert r["grad_accum"] == -(-64 // r["max_batch"])
    assert rows["unwrap"]["max_batch"] > rows["separate"]["max_batch"]
    assert doc["recommendations"]["dpo"].startswith("precompute")
    assert rows["unwrap"]["recommendation"] == doc["recommendations"]["dpo"]


def test_fit_min_gpus_for_a_70b_full_run():
    doc = run_json("fit", "--model", "meta-llama/Llama-3.1-70B", "--method", "dpo", "--strategy", "separate",
                   "--gpu", "H100-80GB", "--seq", "2048", "--grad-ckpt")
    row = doc["rows"][0]
    assert not row["fits"] and row["max_batch"] == 0 and row["min_gpus"] >= 2 and row["sharding"]
    assert row["per_rank_bytes"] <= doc["gpu"]["memory_bytes"]


def test_fit_with_gpu_memory_and_config():
    doc = run_json("fit", "--config", EXAMPLES / "axolotl-qlora-dpo.yaml", "--gpu-memory", "24GiB")
    assert doc["gpu"]["memory_bytes"] == 24 * 2**30
    marked = [r for r in doc["rows"] if r.get("configured")]
    assert [(r["method"], r["strategy"]) for r in marked] == [("dpo", "unwrap")]


def test_a_target_no_gpu_count_reaches_is_said_in_the_row():
    doc = run_json("fit", "--model", "meta-llama/Llama-3.1-70B", "--method", "orpo", "--gpu-memory", "1GiB",
                   "--seq", "4096")
    assert doc["rows"][0]["min_gpus"] == 0 and "no number of GPUs" in doc["recommendations"]["orpo"]


def test_fit_bad_input_is_one_line_exit_2():
    cases = [
        (("--model", "gpt2", "--gpu", "A100-40GB", "--batch", "2", "--seq", "512"), "--batch/--seq"),
        (("--model", "gpt2", "--gpu", "A100-41GB"), "closest"),
        (("--model", "gpt2"), "--gpu"),
        (("--model", "gpt2", "--gpu-memory", "80GB"), "--gpu-memory"),
        (("--model", "gpt2", "--gpu", "A100-40GB", "--gpu-memory", "80GiB"), "--gpu/--gpu-memory"),
        (("--model", "gpt2", "--gpu", "L4", "--effective-batch", "0"), "--effective-batch"),
    ]
    for args, needle in cases:
        r = run_refplan("fit", *args)
        assert r.returncode == 2 and r.stdout == "", args
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, r.stderr)
