"""Config import: the frameworks' hidden defaults, resolved as the frameworks resolve them.

The first tests tie every TRL / PEFT default refplan relies on to the installed packages, so an upgrade
that moves one turns CI red.
"""

from __future__ import annotations

import dataclasses
import os
import textwrap
from pathlib import Path

import pytest

from refplan import configs
from refplan.configs.defaults import PEFT_DEFAULT_TARGETS, TRL_CONFIG_CLASS, TRL_DEFAULTS
from refplan.configs.source import Origin
from refplan.errors import PlanError
from refplan.methods import Method, Strategy

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def _installed_trl_classes():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import DPOConfig, KTOConfig, ModelConfig
    from trl.experimental.cpo import CPOConfig
    from trl.experimental.orpo import ORPOConfig

    return {"DPOConfig": DPOConfig, "KTOConfig": KTOConfig, "ORPOConfig": ORPOConfig, "CPOConfig": CPOConfig,
            "ModelConfig": ModelConfig}


@pytest.mark.parametrize("key", sorted(TRL_DEFAULTS, key=str), ids=lambda k: f"{k[0]}.{k[1]}")
def test_trl_default_matches_installed_trl(key, tmp_path):
    cls_name, field = key
    cls = _installed_trl_classes()[cls_name]
    obj = cls() if cls_name == "ModelConfig" else cls(output_dir=str(tmp_path), use_cpu=True)
    value = getattr(obj, field)
    value = getattr(value, "value", value)  # OptimizerNames
    assert value == TRL_DEFAULTS[key], f"TRL's {cls_name}.{field} is {value!r}, refplan assumes {TRL_DEFAULTS[key]!r}"


def test_trl_config_classes_are_the_trainers_own():
    classes = _installed_trl_classes()
    for method, name in TRL_CONFIG_CLASS.items():
        assert name in classes, method


def test_trainingarguments_default_batch_is_what_trl_inherits():
    from transformers import TrainingArguments

    field = {f.name: f for f in dataclasses.fields(TrainingArguments)}["per_device_train_batch_size"]
    assert field.default == TRL_DEFAULTS[("DPOConfig", "per_device_train_batch_size")]


def test_peft_default_targets_match_installed_peft():
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as installed

    for model_type, targets in PEFT_DEFAULT_TARGETS.items():
        assert tuple(installed[model_type]) == targets, model_type
    for model_type in ("phi3", "olmo2", "qwen3_moe", "deepseek_v2", "starcoder2"):
        assert model_type not in installed or model_type in PEFT_DEFAULT_TARGETS


def _write(tmp_path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_trl_hidden_defaults_fp32_autocast_checkpointing(tmp_path):
    path = _write(tmp_path, "dpo.yaml", """\
        model_name_or_path: meta-llama/Llama-3.1-8B
        per_device_train_batch_size: 2
        """)
    run = configs.read_config(path, method=Method.DPO, model_type="llama")
    s, p = run.settings, run.provenance
    assert (s["dtype"], s["autocast"], s["grad_ckpt"], s["seq"], s["optim"]) == ("fp32", "bf16", True, 1024, "adamw")
    assert s["batch"] == 2 and p["batch"].origin is Origin.FILE and p["batch"].detail == "dpo.yaml:2 per_device_train_batch_size"
    assert p["dtype"].origin is Origin.FRAMEWORK and "ModelConfig.dtype" in p["dtype"].detail
    assert p["autocast"].origin is Origin.DERIVED
    assert run.strategy is Strategy.SEPARATE and s["finetune"] == "full"


def test_trl_use_peft_without_targets_takes_peft_architecture_default(tmp_path):
    path = _write(tmp_path, "dpo.yaml", "model_name_or_path: x\nuse_peft: true\n")
    run = configs.read_config(path, method=Method.DPO, model_type="llama")
    assert run.settings["lora_targets"] == "q_proj,v_proj" and run.provenance["lora_targets"].origin is Origin.FRAMEWORK
    assert run.strategy is Strategy.UNWRAP and run.settings["lora_r"] == 16
    with pytest.raises(PlanError, match="Please specify `target_modules`"):
        configs.read_config(path, method=Method.DPO, model_type="phi3")


def test_trl_use_dora_sets_dora_without_a_warning(tmp_path):
    path = _write(tmp_path, "dpo.yaml", "model_name_or_path: x\nuse_peft: true\nuse_dora: true\n"
                                        "lora_target_modules: all-linear\n")
    run = configs.read_config(path, method=Method.DPO, model_type="llama")
    assert run.settings["dora"] is True and "use_dora" in str(run.provenance["dora"])
    assert not any("dora" in w.lower() for w in run.warnings)


def test_trl_lora_modules_to_save_is_a_setting(tmp_path):
    path = _write(tmp_path, "dpo.yaml", "model_name_or_path: x\nuse_peft: true\nlora_target_modules: all-linear\n"
                                        "lora_modules_to_save: [embed_tokens, lm_head]\n")
    run = configs.read_config(path, method=Method.DPO, model_type="llama")
    assert run.settings["modules_to_save"] == "embed_tokens,lm_head"
    assert not any("modules" in w for w in run.warnings)


def test_trl_qlora_keys(tmp_path):
    path = _write(tmp_path, "q.yaml", "model_name_or_path: x\nuse_peft: true\nload_in_4bit: true\n"
                                      "lora_target_modules: [q_proj, k_proj]\n")
    run = configs.read_config(path, method=Method.DPO, model_type="llama")
    assert run.settings["finetune"] == "qlora" and run.settings["quant_bits"] == 4
    assert run.settings["double_quant"] is False  # use_bnb_nested_quant defaults to False
    assert run.settings["quant_type"] == "nf4"  # ModelConfig.bnb_4bit_quant_type
    assert run.settings["lora_targets"] == "q_proj,k_proj"
    fp4 = configs.read_config(_write(tmp_path, "f.yaml", "model_name_or_path: x\nuse_peft: true\nload_in_4bit: true\n"
                                                       "bnb_4bit_quant_type: fp4\nlora_target_modules: [q_proj]\n"),
                              method=Method.DPO, model_type="llama")
    assert fp4.settings["quant_type"] == "fp4"


@pytest.mark.parametrize("text, key, phrase", [
    ("use_peft: true\nsync_ref_model: true\n", "sync_ref_model", "PEFT model"),
    ("sync_ref_model: true\nprecompute_ref_log_probs: true\n", "sync_ref_model", "together with"),
    ("precompute_ref_log_probs: true\ndataset_streaming: true\n", "precompute_ref_log_probs", "IterableDataset"),
    ("load_in_4bit: true\n", "load_in_4bit", "purely quantized"),
    ("use_peft: true\nload_in_4bit: true\nload_in_8bit: true\n", "load_in_4bit", "8 bit and 4 bit"),
    ("bf16: true\nfp16: true\n", "bf16", "both"),
    ("dtype: float8\n", "dtype", "unknown dtype"),
    ("rpo_alpha: 1.0\n", "rpo_alpha", "Unknown arguments from config file"),
])
def test_combinations_trl_refuses_are_refused_quoting_the_rule(tmp_path, text, key, phrase):
    path = _write(tmp_path, "bad.yaml", "model_name_or_path: x\n" + text)
    with pytest.raises(PlanError) as e:
        configs.read_config(path, method=Method.DPO, model_type="llama")
    assert e.value.where.startswith(path) and key in e.value.message and phrase in e.value.message


def test_unmodelled_memory_keys_warn_and_unknown_keys_are_quiet(tmp_path):
    path = _write(tmp_path, "w.yaml", "model_name_or_path: x\nactivation_offloading: true\nwandb_project: demo\n"
                                      "optim: lion_32bit\n")
    run = configs.read_config(path, method=Method.DPO, model_type="llama")
    assert any("activation_offloading" in w for w in run.warnings)
    assert any("lion_32bit" in w for w in run.warnings)
    assert not any("wandb" in w for w in run.warnings)


def test_empty_cache_steps_is_said_to_change_reserved_memory_only(tmp_path):
    """torch_empty_cache_steps calls the allocator's empty_cache between steps (transformers' Trainer): the
    allocated peak is the same with or without it, so the estimate does not move and the note says why."""
    import transformers

    src = Path(transformers.__file__).with_name("trainer.py").read_text()
    assert "torch_empty_cache_steps" in src and "clear_device_cache()" in src
    path = _write(tmp_path, "e.yaml", "model_name_or_path: x\ntorch_empty_cache_steps: 4\n")
    plain = _write(tmp_path, "p0.yaml", "model_name_or_path: x\n")
    run = configs.read_config(path, method=Method.DPO, model_type="llama")
    note = [w for w in run.warnings if "torch_empty_cache_steps" in w]
    assert note and "allocated peak refplan plans is unchanged" in note[0] and "does not model" not in note[0]
    assert run.settings == configs.read_config(plain, method=Method.DPO, model_type="llama").settings


def test_trl_method_from_keys_else_every_method(tmp_path):
    kto = _write(tmp_path, "k.yaml", "model_name_or_path: x\ndesirable_weight: 1.0\n")
    assert configs.read_config(kto, model_type="llama").methods == (Method.KTO,)
    simpo = _write(tmp_path, "s.yaml", "model_name_or_path: x\nloss_type: simpo\n")
    assert configs.read_config(simpo, model_type="llama").methods == (Method.SIMPO,)
    ipo = _write(tmp_path, "i.yaml", "model_name_or_path: x\nloss_type: [ipo]\n")
    assert configs.read_config(ipo, model_type="llama").methods == (Method.IPO,)
    plain = _write(tmp_path, "p.yaml", "model_name_or_path: x\n")
    run = configs.read_config(plain, model_type="llama")
    assert set(run.methods) == set(Method)
    assert run.strategy_for(Method.ORPO) is Strategy.NONE and run.strategy_for(Method.DPO) is Strategy.SEPARATE


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = _write(tmp_path, "broken.yaml", "model_name_or_path: x\nper_device_train_batch_size: [1, 2\n")
    with pytest.raises(PlanError) as e:
        configs.read_config(path)
    assert e.value.where.startswith(path + ":") and "YAML" in e.value.message
    js = tmp_path / "ds.json"
    js.write_text('{"zero_optimization": {"stage": 3,}}')
    with pytest.raises(PlanError) as e:
        configs.sharding.from_deepspeed(str(js), None)
    assert e.value.where == f"{js}:1" and "JSON" in e.value.message


def test_unknown_format_is_refused(tmp_path):
    path = _write(tmp_path, "x.yaml", "hello: world\n")
    with pytest.raises(PlanError, match="cannot tell which framework"):
        configs.read_config(path)


def test_llamafactory_is_recognised_and_refused_with_its_reason(tmp_path):
    path = _write(tmp_path, "lf.yaml", "model_name_or_path: x\nstage: dpo\nfinetuning_type: lora\npref_loss: sigmoid\n")
    with pytest.raises(PlanError, match="log-softmax"):
        configs.read_config(path)


def test_axolotl_defaults_differ_from_trl(tmp_path):
    path = _write(tmp_path, "a.yaml", "base_model: meta-llama/Llama-3.1-8B\nrl: dpo\n")
    run = configs.read_config(path, model_type="llama")
    s = run.settings
    assert (s["dtype"], s["autocast"], s["batch"], s["seq"], s["grad_ckpt"]) == ("bf16", None, 1, 512, False)
    assert run.methods == (Method.DPO,) and run.strategy is Strategy.SEPARATE


def test_axolotl_full_kto_reference_is_reloaded_in_fp32(tmp_path):
    path = _write(tmp_path, "k.yaml", "base_model: m\nrl: kto\nmicro_batch_size: 2\n")
    run = configs.read_config(path, model_type="llama")
    assert run.settings["ref_dtype"] == "fp32" and run.strategy is Strategy.SEPARATE


def test_axolotl_qlora_and_bundled_deepspeed(tmp_path):
    path = _write(tmp_path, "q.yaml", """\
        base_model: m
        rl: dpo
        adapter: qlora
        load_in_4bit: true
        lora_r: 8
        lora_target_linear: true
        deepspeed: deepspeed_configs/zero2.json
        """)
    run = configs.read_config(path, model_type="llama")
    s = run.settings
    assert (s["finetune"], s["quant_bits"], s["double_quant"], s["lora_targets"]) == ("qlora", 4, True, "all-linear")
    assert (s["zero"], s["offload"]) == (2, "optimizer") and run.strategy is Strategy.UNWRAP
    with pytest.raises(PlanError, match="load_in_4bit"):
        configs.read_config(_write(tmp_path, "b.yaml", "base_model: m\nrl: dpo\nadapter: qlora\nlora_r: 8\n"))
    with pytest.raises(PlanError, match="sample packing"):
        configs.read_config(_write(tmp_path, "c.yaml", "base_model: m\nrl: dpo\nsample_packing: true\n"))
    with pytest.raises(PlanError, match="not a preference-training"):
        configs.read_config(_write(tmp_path, "d.yaml", "base_model: m\nmicro_batch_size: 2\n"))


@pytest.mark.parametrize("name, framework, methods, strategy", [
    ("trl-dpo-lora.yaml", "trl", set(Method), Strategy.UNWRAP),
    ("trl-kto-full-precompute.yaml", "trl", {Method.KTO}, Strategy.PRECOMPUTE),
    ("axolotl-qlora-dpo.yaml", "axolotl", {Method.DPO}, Strategy.UNWRAP),
    ("axolotl-kto-full-zero3.yaml", "axolotl", {Method.KTO}, Strategy.SEPARATE),
    ("axolotl-orpo-lora.yaml", "axolotl", {Method.ORPO}, Strategy.NONE),
    ("trl-dpo-fsdp.yaml", "trl", set(Method), Strategy.SEPARATE),
])
def test_every_example_config_resolves(name, framework, methods, strategy):
    run = configs.read_config(str(EXAMPLES / name), model_type="llama")
    assert run.framework == framework and set(run.methods) == methods and run.strategy is strategy
    assert not run.warnings or all(isinstance(w, str) for w in run.warnings)


def test_sharding_files(tmp_path):
    from refplan.configs import sharding

    ds = sharding.from_deepspeed(str(EXAMPLES / "zero3-bf16.json"), None)
    assert (ds.zero, ds.offload) == (3, "none")
    acc = sharding.from_accelerate(str(EXAMPLES / "accelerate-fsdp.yaml"))
    assert acc.gpus == 8 and acc.sharding.fsdp and acc.sharding.offload == "none"
    off = _write(tmp_path, "ds.json", '{"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}, '
                                      '"offload_param": {"device": "cpu"}}}')
    assert sharding.from_deepspeed(off, None).offload == "all"
    f = sharding.from_fsdp("full_shard offload auto_wrap", None, None)
    assert f.fsdp and f.offload == "all"
    z2 = sharding.from_fsdp("shard_grad_op", None, None)
    assert z2.zero == 2 and z2.warnings


def test_flags_win_over_the_file_and_zero_fsdp_decide_together(tmp_path):
    path = _write(tmp_path, "f.yaml", "model_name_or_path: x\nper_device_train_batch_size: 4\nfsdp: full_shard\n")
    run = configs.read_config(path, method=Method.DPO, model_type="llama")
    settings, prov = configs.merge(run, {"batch": 2, "zero": 3})
    assert settings["batch"] == 2 and prov["batch"].origin is Origin.FLAG
    assert settings["sharding"] == "zero3" and prov["sharding"].origin is Origin.FLAG
    settings, prov = configs.merge(run, {})
    assert settings["sharding"] == "fsdp" and prov["sharding"].origin is Origin.FILE
    assert prov["lora_r"].origin is Origin.REFPLAN


def test_trl_bf16_false_on_a_bf16_load_is_a_run_without_autocast(tmp_path):
    """``bf16: false`` (and no fp16) on a bfloat16 load: the Trainer runs no autocast, so PEFT's fp32
    adapters get fp32 copies of their inputs -- not the bf16-autocast run the default gives."""
    from refplan.act_dtypes import act_mode
    from refplan.settings import train_spec_from_strings

    path = _write(tmp_path, "dpo.yaml", "model_name_or_path: x\ndtype: bfloat16\nbf16: false\nuse_peft: true\n")
    run = configs.read_config(path, method=Method.DPO, model_type="llama")
    assert (run.settings["dtype"], run.settings["autocast"]) == ("bf16", "none")
    pure = train_spec_from_strings("dpo", "unwrap", finetune="lora", dtype="bf16", autocast="none")
    default = train_spec_from_strings("dpo", "unwrap", finetune="lora", dtype="bf16")
    assert pure.no_autocast and pure.autocast is None and not default.no_autocast
    assert not act_mode(pure).autocast and act_mode(default).autocast
    # fp32 weights without autocast are the default already; a dtype and none together are refused
    assert not train_spec_from_strings("dpo", "separate", dtype="fp32", autocast="none").no_autocast
    with pytest.raises(PlanError, match="autocast"):
        train_spec_from_strings("dpo", "separate", dtype="bf16", autocast="fp16", no_autocast=True)


def test_padding_fields_exist_only_where_refplan_reads_them(tmp_path):
    """truncation_mode is DPOConfig's alone; pad_to_multiple_of DPOConfig's and KTOConfig's ("auto" -> None off
    Neuron); ORPOConfig / CPOConfig have neither (their trainers truncate the completion only)."""
    classes = _installed_trl_classes()
    names = {n: {f.name for f in dataclasses.fields(c)} for n, c in classes.items()}
    assert "truncation_mode" in names["DPOConfig"]
    assert not {"truncation_mode"} & (names["KTOConfig"] | names["ORPOConfig"] | names["CPOConfig"])
    assert "pad_to_multiple_of" in names["DPOConfig"] and "pad_to_multiple_of" in names["KTOConfig"]
    assert not {"pad_to_multiple_of"} & (names["ORPOConfig"] | names["CPOConfig"])
    fields = {f.name: f for f in dataclasses.fields(classes["DPOConfig"])}
    assert fields["pad_to_multiple_of"].default == "auto"  # resolved to None off Neuron (the TRL_DEFAULTS test)
    assert classes["DPOConfig"](output_dir=str(tmp_path), use_cpu=True, pad_to_multiple_of="64").pad_to_multiple_of == 64


def test_trl_pad_to_multiple_of_rounds_the_planned_seq_up(tmp_path):
    path = _write(tmp_path, "dpo.yaml", """\
        model_name_or_path: x
        max_length: 1000
        pad_to_multiple_of: 64
        truncation_mode: keep_end
        """)
    run = configs.read_config(path, method=Method.DPO)
    assert run.settings["seq"] == 1024 and run.provenance["seq"].origin is Origin.DERIVED
    assert "max_length 1000" in run.provenance["seq"].detail and "pad_to_multiple_of 64" in run.provenance["seq"].detail
    assert run.padding["max_length"][0] == 1000 and run.padding["truncation_mode"][0] == "keep_end"
    assert run.padding["pad_to_multiple_of"] == (64, run.padding["pad_to_multiple_of"][1])
    assert str(run.padding["pad_to_multiple_of"][1]) == "dpo.yaml:3 pad_to_multiple_of"
    plain = configs.read_config(_write(tmp_path, "d2.yaml", "model_name_or_path: x\n"), method=Method.KTO)
    assert plain.settings["seq"] == 1024 and plain.padding["pad_to_multiple_of"][0] is None
    assert "auto" in str(plain.padding["pad_to_multiple_of"][1])
    assert plain.padding["truncation_mode"][0] == "keep_start"


def test_trl_padding_keys_refused_where_trl_refuses_them(tmp_path):
    with pytest.raises(PlanError, match="keep_start or keep_end"):
        configs.read_config(_write(tmp_path, "a.yaml", "model_name_or_path: x\ntruncation_mode: middle\n"),
                            method=Method.DPO)
    with pytest.raises(PlanError, match="no such field"):
        configs.read_config(_write(tmp_path, "b.yaml", "model_name_or_path: x\npad_to_multiple_of: 8\n"),
                            method=Method.ORPO)


def test_axolotl_passes_no_padding_keys_trl_defaults_hold(tmp_path):
    path = _write(tmp_path, "axo.yaml", "base_model: x\nrl: dpo\nsequence_len: 700\n")
    run = configs.read_config(path)
    assert run.padding["max_length"][0] == 700 and run.padding["pad_to_multiple_of"][0] is None
    assert run.padding["truncation_mode"][0] == "keep_start" and "Axolotl" in str(run.padding["truncation_mode"][1])
