"""`--config` through the CLI: provenance in the table and JSON, the configured row marked, flags
overriding the file, warnings on stderr, bad files as one line and exit 2."""

from __future__ import annotations

from conftest import EXAMPLES, run_json, run_refplan


def test_estimate_config_json_has_settings_provenance_and_the_marked_row():
    doc = run_json("estimate", "--config", EXAMPLES / "trl-kto-full-precompute.yaml", "--gpu", "A100-80GB")
    assert doc["config"]["framework"] == "trl" and doc["config"]["strategy"] == "precompute"
    assert doc["settings"]["batch"] == 8 and doc["provenance"]["batch"]["origin"] == "file"
    assert doc["provenance"]["batch"]["detail"].endswith("per_device_train_batch_size")
    assert doc["provenance"]["optim"]["origin"] == "framework default"
    marked = [r for r in doc["rows"] if r["configured"]]
    assert [(r["method"], r["strategy"]) for r in marked] == [("kto", "precompute")]
    assert len(doc["rows"]) > 1  # the alternatives stay visible


def test_flags_override_the_file():
    doc = run_json("estimate", "--config", EXAMPLES / "trl-kto-full-precompute.yaml", "--batch", "2",
                   "--no-grad-ckpt")
    assert doc["settings"]["batch"] == 2 and doc["provenance"]["batch"] == {"origin": "flag", "detail": "--batch"}
    assert doc["settings"]["grad_ckpt"] is False


def test_table_header_names_origins_and_marks_the_row():
    r = run_refplan("estimate", "--config", EXAMPLES / "axolotl-orpo-lora.yaml")
    assert r.returncode == 0, r.stderr
    assert "config:" in r.stdout and "(axolotl)" in r.stdout and "●" in r.stdout
    assert "axolotl-orpo-lora.yaml:12 sequence_len" in r.stdout


def test_accelerate_config_sets_gpus_and_sharding():
    doc = run_json("estimate", "--config", EXAMPLES / "trl-dpo-fsdp.yaml", "--accelerate-config",
                   EXAMPLES / "accelerate-fsdp.yaml", "--method", "dpo")
    assert doc["settings"]["gpus"] == 8 and doc["settings"]["fsdp"] is True


def test_unmodelled_key_warns_on_stderr(tmp_path):
    cfg = tmp_path / "w.yaml"
    cfg.write_text("model_name_or_path: meta-llama/Llama-3.1-8B\nactivation_offloading: true\nfoo: bar\n")
    r = run_refplan("estimate", "--config", cfg, "--method", "dpo", "--format", "json")
    assert r.returncode == 0
    warnings = [l for l in r.stderr.splitlines() if l.startswith("refplan: warning:")]
    assert len(warnings) == 1 and "activation_offloading" in warnings[0] and "w.yaml:2" in warnings[0]


def test_bad_config_files_are_one_line_and_exit_2(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model_name_or_path: x\nbatch: [1,\n")
    refused = tmp_path / "refused.yaml"
    refused.write_text("model_name_or_path: meta-llama/Llama-3.1-8B\nuse_peft: true\nsync_ref_model: true\n")
    for args, needle in ((("--config", broken), "broken.yaml:"), (("--config", tmp_path / "none.yaml"), "no such"),
                         (("--config", refused), "sync_ref_model"),
                         (("--config", EXAMPLES / "trl-dpo-lora.yaml", "--deepspeed", tmp_path / "x.json"), "x.json")):
        r = run_refplan("estimate", *args)
        assert r.returncode == 2 and r.stdout == "", (args, r.stdout)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr


def test_check_budget_scenario_can_name_a_config(tmp_path):
    import shutil

    for name in ("trl-kto-full-precompute.yaml", "axolotl-qlora-dpo.yaml"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    budgets = tmp_path / "budgets.toml"
    budgets.write_text('[kto]\nconfig = "trl-kto-full-precompute.yaml"\nbudget = "20 GiB"\n\n'
                       '[qlora]\nconfig = "axolotl-qlora-dpo.yaml"\nbatch = 4\nbudget = "10 GiB"\n')
    r = run_refplan("check", "--budgets", budgets, "--baseline", tmp_path / "b.json", "--format", "json")
    import json

    doc = json.loads(r.stdout)
    verdicts = {row["scenario"]: row["verdict"] for row in doc["rows"]}
    assert verdicts == {"kto": "pass", "qlora": "over budget"} and r.returncode == 1
    bad = tmp_path / "bad.toml"
    bad.write_text('[x]\nconfig = "missing.yaml"\nbudget = "1 GiB"\n')
    r = run_refplan("check", "--budgets", bad)
    assert r.returncode == 2 and "[x] config" in r.stderr and "missing.yaml" in r.stderr
