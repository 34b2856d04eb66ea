"""A model_type without a formula family, end to end through the CLI: the trace engine plans it (a note
says so and how long it took), a config transformers cannot build is exit 2 with transformers' reason,
and ``fit`` refuses it in one line. Imports torch in the child processes (seconds per run)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: GPT-J has no formula module; transformers 5.24 builds it offline (n_embd / n_layer spellings)
TINY = {"model_type": "gptj", "n_embd": 64, "n_layer": 4, "n_head": 4, "rotary_dim": 8, "vocab_size": 256,
        "n_positions": 128}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "refplan.cli", *args], capture_output=True, text=True)


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    return path


def test_estimate_traces_an_unknown_family_and_says_so(tiny_config):
    r = run_cli("estimate", "--model", str(tiny_config), "--method", "dpo", "--strategy", "precompute",
                "--seq", "32", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert "model_type 'gptj' has no formula family: estimated by the trace engine" in out
    assert "traced at 2 and 3 layers, extrapolated to 4" in out and " s for 1 row" in out


def test_estimate_json_marks_the_model_trace_only_and_adds_cuda_terms(tiny_config):
    r = run_cli("estimate", "--model", str(tiny_config), "--method", "orpo", "--seq", "32", "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["model"]["trace_only"] and doc["model"]["family"] == "gptj"
    assert doc["settings"]["engine"] == "trace"
    assert any("trace engine" in n and "CUDA" in n for n in doc["notes"])
    row = doc["rows"][0]
    assert {"cuda context", "allocator slack", "step tensors"} <= set(row["components"])
    assert row["peak_bytes"] == sum(row["components"].values())


def test_a_config_transformers_cannot_build_is_exit_2_with_its_reason(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**TINY, "n_head": 5}))
    r = run_cli("estimate", "--model", str(path), "--device", "cpu")
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.startswith("refplan:")]
    assert len(lines) == 1, r.stderr
    assert str(path) in lines[0] and "transformers cannot build a causal LM" in lines[0]
    assert "divisible by num_attention_heads" in lines[0]


def test_fit_refuses_a_trace_only_model_in_one_line(tiny_config):
    r = run_cli("fit", "--model", str(tiny_config), "--gpu", "A100-80GB")
    assert r.returncode == 2
    assert "has no formula family" in r.stderr and "refplan estimate" in r.stderr


def test_what_the_trace_engine_cannot_run_is_refused_naming_the_flag(tiny_config):
    r = run_cli("estimate", "--model", str(tiny_config), "--finetune", "qlora")
    assert r.returncode == 2
    assert "--finetune" in r.stderr and "only the trace engine plans it" in r.stderr


def test_dora_rows_are_traced_with_a_note_and_refused_without_lora(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96,
                                "vocab_size": 256}))
    r = run_cli("estimate", "--model", str(path), "--finetune", "lora", "--dora", "--method", "orpo", "--seq", "32",
                "--device", "cpu", "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert not doc["model"]["trace_only"] and any(n.startswith("--dora:") for n in doc["notes"])
    r = run_cli("estimate", "--model", str(path), "--dora")
    assert r.returncode == 2 and "--dora" in r.stderr and "--finetune lora" in r.stderr


def test_modules_to_save_is_traced_and_a_lora_lm_head_is_refused_for_dpo(tiny_config):
    r = run_cli("estimate", "--model", str(tiny_config), "--finetune", "lora", "--modules-to-save", "wte,lm_head",
                "--method", "simpo", "--seq", "32", "--device", "cpu", "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["rows"][0]["components"]["lora weights"] > 0
    r = run_cli("estimate", "--model", str(tiny_config), "--finetune", "lora", "--lora-targets", "q_proj,lm_head",
                "--method", "dpo")
    assert r.returncode == 2 and "Applying a PEFT adapter to `lm_head` is not supported" in r.stderr


def test_rows_only_the_trace_engine_plans_are_sent_there_and_refused_by_the_formula():
    from refplan.errors import PlanError
    from refplan.families import spec_from_config
    from refplan.planner import estimate
    from refplan.query import needs_trace
    from refplan.spec import TrainSpec

    llama = spec_from_config({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96,
                              "vocab_size": 256}, "x", "test")
    lora = dict(method="orpo", strategy="none", finetune="lora")
    assert not needs_trace(llama, TrainSpec.parse(**lora, lora_targets="q_proj,v_proj"))
    for extra in (dict(dora=True), dict(modules_to_save="lm_head"), dict(lora_targets="q_proj,embed_tokens"),
                  dict(lora_targets="q_proj,lm_head")):
        train = TrainSpec.parse(**lora, **extra)
        assert needs_trace(llama, train), extra
        with pytest.raises(PlanError, match="the trace engine plans it"):
            estimate(llama, train)
