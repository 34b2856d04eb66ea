"""TRL CLI configs (``trl dpo --config dpo.yaml``): one flat mapping of ``ScriptArguments``,
``DPOConfig`` / ``KTOConfig`` / ``ORPOConfig`` / ``CPOConfig`` and ``ModelConfig`` keys
(trl/scripts/dpo.py ``make_parser``), resolved as TRL 1.16 resolves them:

- the model is passed to the trainer *by name* and loaded with ``ModelConfig.dtype`` -- float32 unless
  the file says otherwise (trl/scripts/dpo.py ``model_init_kwargs``; model_config.py);
- ``bf16`` left out becomes ``not fp16`` (base_config.py ``__post_init__``): fp32 weights then train
  under bf16 autocast;
- ``gradient_checkpointing`` defaults to True; ``max_length`` to 1024; ``per_device_train_batch_size``
  to 8; ``optim`` to ``adamw_torch_fused``;
- ``use_peft`` wraps the policy from ``get_peft_config``: ``lora_target_modules`` left out means
  PEFT's per-architecture default targets, not all-linear; ``load_in_4bit`` / ``load_in_8bit`` go
  through ``get_quantization_config`` (double quantization only with ``use_bnb_nested_quant``);
- the reference: ``precompute_ref_log_probs`` (batch ``precompute_ref_batch_size`` or the train
  batch, dpo_trainer.py ~1017), else ``sync_ref_model`` (TR-DPO), else with PEFT the adapters-off
  base, else a reload of the model in its own dtype (dpo_trainer.py ~916-930).
A TRL config does not name its trainer: ``--method`` picks it, else the file's method-specific
keys do, else every method that reads the file is shown.
"""

from __future__ import annotations

from refplan.configs import sharding as sh
from refplan.configs.defaults import PEFT_DEFAULT_TARGETS, TRL_CONFIG_CLASS, TRL_VERSION, trl_default, trl_where
from refplan.configs.run import ImportedRun, Resolution, derived, framework_default
from refplan.configs.source import ConfigFile
from refplan.errors import PlanError
from refplan.methods import Method, Strategy
from refplan.seqlen import round_up
from refplan.settings import Optim

#: keys only one method's config has (trl/trainer/kto_config.py, experimental/cpo/cpo_config.py)
_METHOD_KEYS = {
    Method.KTO: ("desirable_weight", "undesirable_weight"),
    Method.SIMPO: ("cpo_alpha", "simpo_gamma"),
}
_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}
_ATTN = {None: "sdpa", "sdpa": "sdpa", "eager": "eager", "flash_attention_2": "flash", "flash_attention_3": "flash"}
#: transformers OptimizerNames refplan models with the same bytes under another name
_OPTIM_SAME_BYTES = {"paged_adamw_8bit": "adamw-8bit", "adamw_8bit": "adamw-8bit", "paged_adamw": "paged-adamw"}
#: keys that change memory and that refplan does not model yet (one warning line each)
_UNMODELLED = {
    "activation_offloading": "moves saved activations to CPU",
    "use_liger_kernel": "replaces the loss and log-prob kernels",
    "lora_target_parameters": "wraps bare parameters",
    "context_parallel_size": "splits sequences over GPUs",
    "sequence_parallel_size": "splits sequences over GPUs",
}


#: keys that change what a GPU shows but not the allocated peak refplan plans (one note line each)
_ALLOCATOR_ONLY = {
    "torch_empty_cache_steps": "empties the CUDA caching allocator every N steps (transformers Trainer."
                               "training_step -> accelerate clear_device_cache -> torch.cuda.empty_cache, after "
                               "compute_loss): the allocated peak refplan plans is unchanged; reserved memory, what "
                               "nvidia-smi shows, falls back toward it each time, at a speed cost",
}


def methods_of(f: ConfigFile, method: Method | None) -> tuple[Method, ...]:
    if method is not None:
        return (method,)
    loss = f.data.get("loss_type")
    losses = [loss] if isinstance(loss, str) else list(loss or [])
    if "simpo" in losses or any(f.has(k) for k in _METHOD_KEYS[Method.SIMPO]):
        return (Method.SIMPO,)
    if any(f.has(k) for k in _METHOD_KEYS[Method.KTO]):
        return (Method.KTO,)
    if losses and all(x == "ipo" for x in losses):
        return (Method.IPO,)
    if losses and "sigmoid" in losses:
        return (Method.DPO,)
    return tuple(Method)


def _value(f: ConfigFile, res: Resolution, key: str, method: Method, field: str | None = None):
    """The file's value for ``key``, else TRL's default, recording where it came from."""
    field = field or key
    if f.has(key):
        return f.data[key], f.source(key)
    return trl_default(method, field), framework_default("TRL", trl_where(method, field).removeprefix("TRL "))


def read(f: ConfigFile, method: Method | None = None, model_type: str | None = None) -> ImportedRun:
    """Resolve a TRL CLI config. ``model_type`` is the trained model's (for PEFT's default targets)."""
    if f.has("rpo_alpha"):
        raise f.error("rpo_alpha", "TRL 1.16 has no rpo_alpha (no config dataclass declares it), and TrlParser "
                                   "refuses a key none declares (\"Unknown arguments from config file\", "
                                   "trl/scripts/utils.py); the NLL term on the chosen completions is "
                                   "loss_type: [sigmoid, sft]")
    methods = methods_of(f, method)
    m = methods[0]
    res = Resolution()
    model = f.data.get("model_name_or_path")
    _precision(f, res, m)
    batch, src = _value(f, res, "per_device_train_batch_size", m)
    res.set("batch", batch, src)
    seq, src = _value(f, res, "max_length", m)
    padding = _padding(f, m, seq, src)
    if seq is None:
        res.warn(f"{f.where('max_length')}: null means no truncation; the padded length is your longest "
                 "example -- refplan uses --seq (default 1024), or give --dataset")
    elif padding["pad_to_multiple_of"][0]:
        multiple = padding["pad_to_multiple_of"][0]
        res.set("seq", round_up(seq, multiple), derived(
            f"max_length {seq} ({src}) rounded up to pad_to_multiple_of {multiple} (trl/trainer/utils.py pad)"))
    else:
        res.set("seq", seq, src)
    ckpt = f.data.get("gradient_checkpointing", f.data.get("activation_checkpointing"))
    key = "gradient_checkpointing" if f.has("gradient_checkpointing") else "activation_checkpointing"
    res.set("grad_ckpt", bool(trl_default(m, "gradient_checkpointing") if ckpt is None else ckpt),
            f.source(key) if ckpt is not None else framework_default("TRL", trl_where(m, "gradient_checkpointing")[4:]))
    _optimizer(f, res, m)
    attn = f.data.get("attn_implementation")
    res.set("attn", _ATTN.get(attn, "flash"), f.source("attn_implementation") if attn else framework_default(
        "transformers", "attn_implementation None -> sdpa (the default for models that support it)"))
    if attn not in _ATTN:
        res.warn(f"{f.where('attn_implementation')}: {attn!r} is modelled as flash attention")
    peft = _peft(f, res, m, model_type)
    if peft and f.data.get("use_dora"):
        res.set("dora", True, f.source("use_dora"))  # ModelConfig.use_dora -> LoraConfig(use_dora=...)
    if peft and f.data.get("lora_modules_to_save"):
        # ModelConfig.lora_modules_to_save -> LoraConfig(modules_to_save=...)
        res.set("modules_to_save", _names(f.data["lora_modules_to_save"]), f.source("lora_modules_to_save"))
    strategy = _reference(f, res, m, peft)
    _sharding(f, res)
    for key, what in _UNMODELLED.items():
        if f.has(key) and f.data[key] not in (False, 0, [], None):
            res.warn(f"{f.where(key)}: {what}; refplan does not model it yet, the estimate leaves it out")
    for key, what in _ALLOCATOR_ONLY.items():
        if f.has(key) and f.data[key] not in (False, 0, [], None):
            res.warn(f"{f.where(key)}: {what}")
    # loss_type lists with 'sft' (an NLL on the chosen completions) need no term: it reads the per-token
    # log-probs the fused head already returned and keeps nothing at any phase's peak -- measured on real
    # CPU steps (tests/harness/test_trace.py::test_dpo_sft_loss_term_adds_nothing_at_any_phase_peak)
    return ImportedRun(str(f.path), "trl", model, methods, strategy, res.settings, res.provenance,
                       tuple(res.warnings), padding=padding)


def _padding(f: ConfigFile, m: Method, max_length, max_src) -> dict:
    """max_length, truncation_mode and pad_to_multiple_of as the method's config class resolves them."""
    cls = TRL_CONFIG_CLASS[m]
    mode, mode_src = "keep_start", framework_default("TRL", f"{TRL_VERSION} {cls} has no truncation_mode: the start "
                                                            "is kept")
    if cls == "DPOConfig":
        mode, mode_src = _value(f, Resolution(), "truncation_mode", m)
        if mode not in ("keep_start", "keep_end"):
            raise f.error("truncation_mode", f"{mode!r}: TRL's collator accepts keep_start or keep_end "
                                             "(dpo_trainer.py DataCollatorForPreference)")
    multiple, mul_src = None, framework_default("TRL", f"{TRL_VERSION} {cls} pads to the longest in the batch, no "
                                                       "pad_to_multiple_of")
    if cls in ("DPOConfig", "KTOConfig"):
        raw = f.data.get("pad_to_multiple_of", "auto")
        if raw == "auto":
            mul_src = (derived(f"{f.where('pad_to_multiple_of')} auto -> None off Neuron ({cls}.__post_init__)")
                       if f.has("pad_to_multiple_of") else framework_default("TRL", trl_where(m, "pad_to_multiple_of")[4:]
                                                                              + " ('auto': None off Neuron)"))
        elif raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null")):
            mul_src = f.source("pad_to_multiple_of")
        elif isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1:
            multiple, mul_src = raw, f.source("pad_to_multiple_of")
        else:
            raise f.error("pad_to_multiple_of", f"must be a positive whole number, auto or null (got {raw!r})")
    elif f.has("pad_to_multiple_of"):
        raise f.error("pad_to_multiple_of", f"TRL {TRL_VERSION}'s {cls} has no such field, and TrlParser refuses a "
                                            "key none declares")
    return {"max_length": (max_length, max_src), "truncation_mode": (mode, mode_src),
            "pad_to_multiple_of": (multiple, mul_src)}


def _precision(f: ConfigFile, res: Resolution, m: Method) -> None:
    raw, src = _value(f, res, "dtype", m)
    if raw == "auto":
        res.set("dtype", "auto", src)  # the caller fills it from the model's config.json
    elif raw not in _DTYPES:
        raise f.error("dtype", f"unknown dtype {raw!r}; TRL accepts auto, bfloat16, float16, float32")
    else:
        res.set("dtype", _DTYPES[raw], src)
    fp16 = bool(f.data.get("fp16", False))
    bf16 = f.data.get("bf16")
    if bf16 is None:
        bf16 = not fp16
        bsrc = derived(f"TRL {TRL_VERSION}: bf16 left out -> not fp16 = {bf16} (base_config.py __post_init__)")
    else:
        bsrc = f.source("bf16")
    if bf16 and fp16:
        raise f.error("bf16", "bf16 and fp16 are both true; transformers refuses mixed precision of both kinds")
    # neither flag: no autocast at all -- a 16-bit load then computes in its own dtype ("none")
    autocast = "bf16" if bf16 else "fp16" if fp16 else "none"
    res.set("autocast", autocast, bsrc if bf16 else (f.source("fp16") if fp16 else bsrc))


def _optimizer(f: ConfigFile, res: Resolution, m: Method) -> None:
    name, src = _value(f, res, "optim", m)
    name = str(name)
    if name in _OPTIM_SAME_BYTES:
        res.set("optim", _OPTIM_SAME_BYTES[name], src)
        return
    try:
        res.set("optim", Optim.parse(name, "optim").value, src)
    except PlanError:
        res.set("optim", "adamw", src)
        res.warn(f"{f.where('optim')}: optimizer {name!r} is not modelled; estimated as AdamW (two states "
                 "per trainable parameter)")


def _peft(f: ConfigFile, res: Resolution, m: Method, mt: str | None) -> bool:
    use_peft = bool(f.data.get("use_peft", False))
    four, eight = bool(f.data.get("load_in_4bit")), bool(f.data.get("load_in_8bit"))
    if four and eight:
        raise f.error("load_in_4bit", "TRL refuses load_in_4bit with load_in_8bit (\"You can't use 8 bit and 4 bit "
                                      "precision at the same time\", model_config.py)")
    if (four or eight) and not use_peft:
        raise f.error("load_in_4bit" if four else "load_in_8bit",
                      "a k-bit model trains only through adapters; transformers refuses \"You cannot perform "
                      "fine-tuning on purely quantized models\" -- add use_peft: true")
    if not use_peft:
        res.set("finetune", "full", f.source("use_peft") if f.has("use_peft") else framework_default(
            "TRL", trl_where(m, "use_peft")[4:]))
        return False
    res.set("finetune", "qlora" if (four or eight) else "lora", f.source("use_peft"))
    if four or eight:
        res.set("quant_bits", 4 if four else 8, f.source("load_in_4bit" if four else "load_in_8bit"))
        nested, src = _value(f, res, "use_bnb_nested_quant", m)
        res.set("double_quant", bool(nested), src)
        if four:
            qtype, src = _value(f, res, "bnb_4bit_quant_type", m)
            res.set("quant_type", str(qtype), src)
    r, src = _value(f, res, "lora_r", m)
    res.set("lora_r", r, src)
    targets = f.data.get("lora_target_modules")
    if targets is None:
        if mt is None:
            res.warn("lora_target_modules left out: PEFT picks per-architecture targets; the model's type is unknown "
                     "here, so refplan assumes q_proj,v_proj")
            res.set("lora_targets", "q_proj,v_proj", framework_default("PEFT", "0.21 default targets"))
        elif mt not in PEFT_DEFAULT_TARGETS:
            raise f.error("lora_target_modules", f"PEFT has no default targets for model_type {mt!r} and raises "
                          "\"Please specify `target_modules` in `peft_config`\"; set lora_target_modules "
                          "(e.g. all-linear)")
        else:
            res.set("lora_targets", ",".join(PEFT_DEFAULT_TARGETS[mt]), framework_default(
                "PEFT", f"0.21 TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[{mt!r}] (lora_target_modules "
                        "left out)"))
    else:
        res.set("lora_targets", targets if isinstance(targets, str) else ",".join(map(str, targets)),
                f.source("lora_target_modules"))
    return True


def _reference(f: ConfigFile, res: Resolution, m: Method, peft: bool) -> Strategy | None:
    pre, sync = bool(f.data.get("precompute_ref_log_probs")), bool(f.data.get("sync_ref_model"))
    if sync and peft:
        raise f.error("sync_ref_model", "TRL refuses it with PEFT: \"You passed `sync_ref_model=True` while using a "
                                        "PEFT model, which is currently not supported\" (dpo_trainer.py)")
    if sync and pre:
        raise f.error("sync_ref_model", "TRL refuses it with precompute_ref_log_probs: \"You cannot use "
                                        "`sync_ref_model=True` together with `precompute_ref_log_probs=True`\"")
    if pre and f.data.get("dataset_streaming"):
        raise f.error("precompute_ref_log_probs", "TRL refuses it with a streamed dataset: \"`precompute_ref_log_"
                                                  "probs=True` is not supported with IterableDataset\"")
    if pre:
        res.set("strategy", "precompute", f.source("precompute_ref_log_probs"))
        pb = f.data.get("precompute_ref_batch_size")
        res.set("precompute_batch", pb if pb is not None else res.settings.get("batch"),
                f.source("precompute_ref_batch_size") if pb is not None else derived(
                    "precompute_ref_batch_size left out -> per_device_train_batch_size (dpo_trainer.py ~1017)"))
        return Strategy.PRECOMPUTE
    if sync:
        res.set("strategy", "sync", f.source("sync_ref_model"))
        return Strategy.SYNC
    if peft:
        res.set("strategy", "unwrap", derived("use_peft with no reference model: the reference forward runs with "
                                              "the adapters disabled (dpo_trainer.py)"))
        return Strategy.UNWRAP
    res.set("strategy", "separate", derived("full fine-tune with no reference model: TRL reloads the model from "
                                            "its name in the policy's dtype (dpo_trainer.py ~916)"))
    return Strategy.SEPARATE


def _sharding(f: ConfigFile, res: Resolution) -> None:
    plan = sh.ShardingPlan()
    if f.has("deepspeed"):
        plan = sh.from_deepspeed(f.data["deepspeed"], f)
    elif f.has("fsdp") and f.data["fsdp"] not in ("", []):
        plan = sh.from_fsdp(f.data["fsdp"], f.data.get("fsdp_config"), f)
    apply_sharding(res, plan)


def apply_sharding(res: Resolution, plan: sh.ShardingPlan) -> None:
    if plan.source is None:
        return
    res.set("zero", plan.zero, plan.source)
    res.set("fsdp", plan.fsdp, plan.source)
    res.set("offload", plan.offload, plan.source)
    for w in plan.warnings:
        res.warn(w)


def _names(value) -> str:
    return value if isinstance(value, str) else ",".join(map(str, value))
