"""The framework defaults refplan relies on, as data with their source.

Each value is what the installed framework does when a config leaves the key out. The TRL values
are checked against the installed classes by tests/ (``DPOConfig()``, ``KTOConfig()``,
``ORPOConfig()``, ``CPOConfig()``, ``ModelConfig()``, ``TrainingArguments``), so an upgrade that
moves one turns CI red. PEFT's per-architecture LoRA targets are checked against
``peft.utils.constants`` the same way.
"""

from __future__ import annotations

from refplan.methods import Method

TRL_VERSION = "1.16"

#: the TRL config class each method's trainer reads
TRL_CONFIG_CLASS = {
    Method.DPO: "DPOConfig", Method.IPO: "DPOConfig", Method.KTO: "KTOConfig",
    Method.ORPO: "ORPOConfig", Method.SIMPO: "CPOConfig",
}

#: (class, field) -> default, for the fields that change memory (trl/trainer/*_config.py; bf16 is the
#: value ``_BaseConfig.__post_init__`` resolves: ``not fp16`` when left None, base_config.py:108)
TRL_DEFAULTS: dict[tuple[str, str], object] = {
    ("ModelConfig", "dtype"): "float32",
    ("ModelConfig", "attn_implementation"): None,
    ("ModelConfig", "use_peft"): False,
    ("ModelConfig", "lora_r"): 16,
    ("ModelConfig", "lora_target_modules"): None,
    ("ModelConfig", "lora_modules_to_save"): None,
    ("ModelConfig", "use_dora"): False,
    ("ModelConfig", "load_in_4bit"): False,
    ("ModelConfig", "load_in_8bit"): False,
    ("ModelConfig", "bnb_4bit_quant_type"): "nf4",
    ("ModelConfig", "use_bnb_nested_quant"): False,
    **{(cls, f): v for cls in ("DPOConfig", "KTOConfig", "ORPOConfig", "CPOConfig") for f, v in (
        ("per_device_train_batch_size", 8),
        ("max_length", 1024),
        ("bf16", True),
        ("fp16", False),
        ("gradient_checkpointing", True),
        ("optim", "adamw_torch_fused"),
    )},
    **{(cls, f): v for cls in ("DPOConfig", "KTOConfig") for f, v in (
        ("precompute_ref_log_probs", False),
        ("precompute_ref_batch_size", None),
        ("sync_ref_model", False),
        ("activation_offloading", False),
        # "auto" resolves in __post_init__: 128 on Neuron, else None (dpo_config.py ~386, kto_config.py ~262)
        ("pad_to_multiple_of", None),
    )},
    # DataCollatorForPreference's truncation (dpo_config.py); KTO always keeps the start, ORPO/CPO truncate
    # the completion only (refplan.seqlen)
    ("DPOConfig", "truncation_mode"): "keep_start",
}

#: PEFT 0.21 ``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`` (peft/utils/constants.py): the
#: modules ``LoraConfig(target_modules=None)`` wraps; a model_type it lacks makes PEFT raise
#: "Please specify `target_modules` in `peft_config`"
PEFT_DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "v_proj"), "mistral": ("q_proj", "v_proj"), "mixtral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"), "qwen3": ("q_proj", "v_proj"), "gemma": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"), "gemma3_text": ("q_proj", "v_proj"), "gpt2": ("c_attn",),
    "gpt_neox": ("query_key_value",), "falcon": ("query_key_value",),
}


def trl_default(method: Method, field: str):
    """TRL's default of ``field`` for the config class ``method`` reads (ModelConfig fields too)."""
    key = (TRL_CONFIG_CLASS[method], field)
    if key in TRL_DEFAULTS:
        return TRL_DEFAULTS[key]
    return TRL_DEFAULTS[("ModelConfig", field)]


def trl_where(method: Method | None, field: str) -> str:
    cls = "ModelConfig" if ("ModelConfig", field) in TRL_DEFAULTS else (
        TRL_CONFIG_CLASS[method] if method else "DPOConfig")
    return f"TRL {TRL_VERSION} {cls}.{field} = {TRL_DEFAULTS.get((cls, field))!r}"
