"""Axolotl YAML, resolved as Axolotl (commit 067b021c, ``src/axolotl``) resolves it for its RL trainers.

What differs from a TRL CLI config (each read in Axolotl's code):

- ``rl`` names the method: dpo / ipo -> ``trl.DPOTrainer`` (ipo as ``loss_type=["ipo"]``), kto ->
  ``trl.KTOTrainer``, orpo -> ``ORPOTrainer``, simpo -> ``CPOTrainer(loss_type="simpo")``
  (core/builders/rl.py);
- ``bf16: auto`` (the default) is True on a bf16 GPU, and the model is *loaded* in that dtype
  (loaders/model.py ~611): pure bf16 training, not fp32 + autocast as TRL's CLI does;
- ``micro_batch_size`` defaults to 1, ``sequence_len`` to 512 (it becomes TRL's ``max_length``; longer
  rows are dropped), ``gradient_checkpointing`` to False (schemas/config.py, training.py);
- ``adapter: lora`` / ``qlora`` (qlora needs ``load_in_4bit``: NF4, double quantization on, compute
  dtype the load dtype, loaders/model.py ~712-739); ``lora_target_linear`` wraps every linear but
  ``lm_head`` (all-linear); ``lora_r`` has no default;
- the reference: with an adapter, DPO/IPO/KTO pass ``ref_model=None`` and TRL disables the adapters;
  a full fine-tune loads a second model through the same loader (same dtype) for DPO/IPO; for KTO
  Axolotl's copy is unused and TRL reloads one in float32 (no ``model_init_kwargs``) (train.py
  ~124-154);
- DeepSpeed comes from ``deepspeed:`` (a path; Axolotl ships deepspeed_configs/zero1/2/3*.json, zero2
  offloading the optimizer), FSDP from ``fsdp`` / ``fsdp_config``.
"""

from __future__ import annotations

from refplan.configs import sharding as sh
from refplan.configs.run import ImportedRun, Resolution, derived, framework_default
from refplan.configs.source import ConfigFile
from refplan.configs.trl import apply_sharding
from refplan.errors import PlanError
from refplan.methods import Method, Strategy
from refplan.settings import Optim

_RL = {"dpo": Method.DPO, "ipo": Method.IPO, "kto": Method.KTO, "orpo": Method.ORPO, "simpo": Method.SIMPO}
_AXO = "Axolotl 067b021c"
#: deepspeed_configs/*.json shipped with Axolotl: (stage, offload) as read from the files
BUNDLED_DEEPSPEED = {
    "zero1.json": (1, "none"), "zero2.json": (2, "optimizer"), "zero3.json": (3, "none"),
    "zero3_bf16.json": (3, "none"), "zero3_bf16_cpuoffload_all.json": (3, "all"),
    "zero3_bf16_cpuoffload_params.json": (3, "params"),
}
_UNMODELLED = {
    "activation_offloading": "moves saved activations to CPU",
    "context_parallel_size": "splits sequences over GPUs",
    "sequence_parallel_degree": "splits sequences over GPUs (deprecated alias of context_parallel_size)",
    "dpo_use_liger_kernel": "replaces the loss kernels",
}


def read(f: ConfigFile, method: Method | None = None, model_type: str | None = None) -> ImportedRun:
    rl = f.data.get("rl")
    if rl is None:
        raise f.error("rl", "missing: this is not a preference-training config (Axolotl runs SFT without rl)")
    if str(rl).lower() not in _RL:
        raise f.error("rl", f"{rl!r} is not a method refplan plans (dpo, ipo, kto, orpo, simpo)")
    configured = _RL[str(rl).lower()]
    if method is not None and method is not configured:
        raise PlanError("--method", f"the file trains {configured.value} (rl: {rl}); drop --method or pick it")
    if f.data.get("sample_packing"):
        raise f.error("sample_packing", "Axolotl refuses sample packing with rl")
    if f.has("rpo_alpha"):
        raise f.error("rpo_alpha", "Axolotl refuses rpo_alpha for its RL trainers")
    res = Resolution()
    _precision(f, res)
    _shape(f, res)
    _optimizer(f, res)
    _attention(f, res)
    peft = _adapter(f, res)
    if peft and f.data.get("peft_use_dora"):
        res.set("dora", True, f.source("peft_use_dora"))  # PEFT LoraConfig(use_dora=True)
    if peft and f.data.get("lora_modules_to_save"):
        names = f.data["lora_modules_to_save"]
        res.set("modules_to_save", names if isinstance(names, str) else ",".join(map(str, names)),
                f.source("lora_modules_to_save"))  # PEFT LoraConfig(modules_to_save=...)
    strategy = _reference(f, res, configured, peft)
    _sharding(f, res)
    for key, what in _UNMODELLED.items():
        if f.has(key) and f.data[key] not in (False, 0, [], None, 1):
            res.warn(f"{f.where(key)}: {what}; refplan does not model it yet, the estimate leaves it out")
    if not peft and not f.has("fsdp") and res.settings.get("attn") in ("sdpa", "eager"):
        res.warn(f"{f.name}: Axolotl keeps embeddings, lm_head and norms in fp32 for a full fine-tune with default "
                 "attention (loaders/model.py _configure_embedding_dtypes); refplan counts them in the load dtype")
    return ImportedRun(str(f.path), "axolotl", f.data.get("base_model"), (configured,), strategy, res.settings,
                       res.provenance, tuple(res.warnings), padding=_padding(res))


def _padding(res: Resolution) -> dict:
    """Axolotl passes ``max_length = sequence_len`` (core/builders/base.py ``_set_base_training_args``) and
    neither ``truncation_mode`` nor ``pad_to_multiple_of`` (core/builders/rl.py, trainers/dpo/__init__.py):
    TRL's keep_start and 'auto' (None off Neuron) hold. Before TRL, Axolotl drops the rows whose prompt +
    completion exceed sequence_len (utils/data/rl.py ``drop_long_rl_seq``)."""
    return {"max_length": (res.settings["seq"], res.provenance["seq"]),
            "truncation_mode": ("keep_start", framework_default(_AXO, "passes no truncation_mode: TRL's keep_start")),
            "pad_to_multiple_of": (None, framework_default(_AXO, "passes no pad_to_multiple_of: TRL's auto -> None "
                                                                 "off Neuron"))}


def _precision(f: ConfigFile, res: Resolution) -> None:
    bf16, fp16 = f.data.get("bf16", "auto"), bool(f.data.get("fp16"))
    if bf16 == "full":
        raise f.error("bf16", "'full' is not accepted by Axolotl's schema (true, false or auto)")
    if bf16 in (True, "auto", "true") and not fp16:
        src = f.source("bf16") if f.has("bf16") else framework_default(_AXO, "bf16: auto -> true on a bf16 GPU")
        res.set("dtype", "bf16", derived(f"{src} -> torch_dtype bfloat16: the weights load in bf16 "
                                         "(loaders/model.py ~611)"))
    elif fp16:
        res.set("dtype", "fp16", f.source("fp16"))
    else:
        res.set("dtype", "fp32", f.source("bf16"))
    res.set("autocast", None, derived("Axolotl loads the weights in the training dtype: no autocast cast"))


def _shape(f: ConfigFile, res: Resolution) -> None:
    for key, name, default in (("micro_batch_size", "batch", 1), ("sequence_len", "seq", 512)):
        value = f.data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise f.error(key, f"must be a positive whole number (got {value!r})")
        res.set(name, default if value is None else value,
                f.source(key) if value is not None else framework_default(_AXO, f"{key} default {default}"))
    gc = f.data.get("gradient_checkpointing")
    res.set("grad_ckpt", bool(gc), f.source("gradient_checkpointing") if gc is not None else framework_default(
        _AXO, "gradient_checkpointing default False (passed to TRL, overriding its True)"))
    if gc in ("offload", "offload_disk"):
        res.warn(f"{f.where('gradient_checkpointing')}: {gc!r} also offloads the checkpoints; refplan counts them "
                 "on the GPU")


def _optimizer(f: ConfigFile, res: Resolution) -> None:
    name = f.data.get("optimizer", "adamw_torch_fused")
    src = f.source("optimizer") if f.has("optimizer") else framework_default(_AXO, "optimizer adamw_torch_fused")
    same = {"paged_adamw_8bit": "adamw-8bit", "adamw_8bit": "adamw-8bit"}
    try:
        res.set("optim", same.get(name) or Optim.parse(name, "optimizer").value, src)
    except PlanError:
        res.set("optim", "adamw", src)
        res.warn(f"{f.where('optimizer')}: {name!r} is not modelled; estimated as AdamW")


def _attention(f: ConfigFile, res: Resolution) -> None:
    impl = f.data.get("attn_implementation")
    for key, value in (("flash_attention", "flash"), ("sdp_attention", "sdpa"), ("eager_attention", "eager")):
        if f.data.get(key):
            res.set("attn", value, f.source(key))
            return
    if impl:
        res.set("attn", {"flash_attention_2": "flash", "flash_attention_3": "flash"}.get(impl, impl)
                if impl in ("sdpa", "eager", "flash_attention_2", "flash_attention_3") else "flash",
                f.source("attn_implementation"))
        return
    if f.data.get("xformers_attention"):
        res.warn(f"{f.where('xformers_attention')}: xformers attention is modelled as flash attention")
        res.set("attn", "flash", f.source("xformers_attention"))
        return
    res.set("attn", "sdpa", framework_default("transformers", "attn_implementation unset -> sdpa"))


def _adapter(f: ConfigFile, res: Resolution) -> bool:
    adapter = f.data.get("adapter")
    four, eight = bool(f.data.get("load_in_4bit")), bool(f.data.get("load_in_8bit"))
    if adapter in (None, ""):
        res.set("finetune", "full", framework_default(_AXO, "no adapter: full fine-tune"))
        return False
    if adapter not in ("lora", "qlora"):
        raise f.error("adapter", f"{adapter!r}: refplan plans lora and qlora adapters")
    if adapter == "qlora" and not four:
        raise f.error("adapter", "Axolotl requires load_in_4bit: true with adapter: qlora")
    if adapter == "lora" and four:
        res.warn(f"{f.where('load_in_4bit')}: with adapter: lora Axolotl builds no 4-bit config; modelled as LoRA on "
                 "an unquantized base")
    kbit = adapter == "qlora" or eight
    res.set("finetune", "qlora" if kbit else "lora", f.source("adapter"))
    if kbit:
        res.set("quant_bits", 4 if adapter == "qlora" else 8, f.source("adapter" if adapter == "qlora" else
                                                                       "load_in_8bit"))
        res.set("double_quant", True, framework_default(_AXO, "bnb_4bit_use_double_quant true (loaders/model.py)"))
    if f.data.get("lora_r") is None:
        raise f.error("lora_r", "missing: Axolotl has no default rank (LoraConfig(r=cfg.lora_r))")
    res.set("lora_r", f.data["lora_r"], f.source("lora_r"))
    if f.data.get("lora_target_linear"):
        res.set("lora_targets", "all-linear", f.source("lora_target_linear"))
    elif f.has("lora_target_modules"):
        t = f.data["lora_target_modules"]
        res.set("lora_targets", t if isinstance(t, str) else ",".join(map(str, t)), f.source("lora_target_modules"))
    else:
        raise f.error("lora_target_modules", "missing: set lora_target_modules or lora_target_linear: true")
    return True


def _reference(f: ConfigFile, res: Resolution, m: Method, peft: bool) -> Strategy | None:
    if not m.caps.needs_reference:
        return Strategy.NONE
    if f.data.get("rl_adapter_ref_model"):
        res.warn(f"{f.where('rl_adapter_ref_model')}: not in Axolotl's schema, so dropped before training "
                 "(utils/config ~439); ignored")
    pre = bool(f.data.get("precompute_ref_log_probs")) and m in (Method.DPO, Method.IPO)
    if peft:
        if pre:
            res.set("strategy", "precompute", f.source("precompute_ref_log_probs"))
            res.set("precompute_batch", res.settings["batch"], derived("TRL: precompute_ref_batch_size unset -> the "
                                                                       "train batch"))
            return Strategy.PRECOMPUTE
        res.set("strategy", "unwrap", derived("an adapter with ref_model=None: TRL disables the adapters for the "
                                              "reference (train.py ~124)"))
        return Strategy.UNWRAP
    if pre:
        res.warn(f"{f.where('precompute_ref_log_probs')}: Axolotl passes its own reference model, so TRL keeps it "
                 "resident; estimated as a separate reference")
    if m is Method.KTO:
        res.set("ref_dtype", "fp32", derived("full-fine-tune KTO: Axolotl's reference is unused and TRL reloads one "
                                             "without model_init_kwargs, in float32 (train.py ~150)"))
    res.set("strategy", "separate", derived("full fine-tune: Axolotl loads a second model as the reference "
                                            "(train.py ~140)"))
    return Strategy.SEPARATE


def _sharding(f: ConfigFile, res: Resolution) -> None:
    plan = sh.ShardingPlan()
    if f.has("deepspeed"):
        value = f.data["deepspeed"]
        path = f.resolve_path(value) if isinstance(value, str) else None
        bundled = str(value).rsplit("/", 1)[-1] if isinstance(value, str) else None
        if path is not None and not path.exists() and bundled in BUNDLED_DEEPSPEED:
            stage, offload = BUNDLED_DEEPSPEED[bundled]
            from refplan.configs.source import Origin, Source

            plan = sh.ShardingPlan(zero=stage, offload=offload, source=Source(
                Origin.FILE, f"{f.where('deepspeed')} (Axolotl's bundled deepspeed_configs/{bundled})"))
        else:
            plan = sh.from_deepspeed(value, f)
    elif f.has("fsdp") or f.has("fsdp_config"):
        plan = sh.from_fsdp(f.data.get("fsdp") or True, f.data.get("fsdp_config"), f,
                            "fsdp" if f.has("fsdp") else "fsdp_config")
    apply_sharding(res, plan)
