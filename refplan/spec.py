"""The training setup the planner estimates: one frozen record, validated once at construction.

Every field is a typed value (:mod:`refplan.settings` enums, a LoRA target tuple); strings given to
the constructor are parsed once, here, and every validation error names the CLI flag to change
(``PlanError``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from refplan.errors import PlanError
from refplan.methods import Finetune, Method, Strategy, check_combination
from refplan.settings import (ALL_LINEAR, Attn, Device, Dtype, Offload, Optim, Quant, QuantType, Sharding,
                              parse_lora_targets)

MAX_SEQ = 1 << 22  # 4M tokens: past this an input is a typo, not a plan
MAX_BATCH = 1 << 16
MAX_GPUS = 1 << 14

#: field -> (parser, CLI flag); every enum-typed field is parsed from its spelling at construction
_PARSED = {
    "method": (Method, "--method"), "strategy": (Strategy, "--strategy"), "finetune": (Finetune, "--finetune"),
    "dtype": (Dtype, "--dtype"), "autocast": (Dtype, "--autocast"), "ref_dtype": (Dtype, "--ref-dtype"),
    "ref_quant": (Quant, "--ref-quant"), "optim": (Optim, "--optim"), "attn": (Attn, "--attn"),
    "sharding": (Sharding, "--sharding"), "offload": (Offload, "--offload"), "device": (Device, "--device"),
    "quant_type": (QuantType, "--quant-type"), "quant_compute_dtype": (Dtype, "--quant-compute-dtype"),
}
#: enum fields that may be None (then derived from another field)
_OPTIONAL_ENUMS = ("autocast", "ref_dtype", "quant_compute_dtype")


def _positive(name: str, value: int, flag: str, upper: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise PlanError(flag, f"{name} must be a whole number (got {value!r})")
    if value <= 0:
        raise PlanError(flag, f"{name} must be positive (got {value})")
    if value > upper:
        raise PlanError(flag, f"{name} {value} is absurdly large (max {upper})")


def _parse_enum(cls, value, flag: str):
    if isinstance(value, cls):
        return value
    if hasattr(cls, "parse"):
        return cls.parse(value, flag)
    from refplan.methods import parse_enum

    return parse_enum(cls, str(value), flag)


def _names(value, flag: str) -> tuple[str, ...]:
    """Module names from a tuple, a list or a comma-separated string."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    names = tuple(str(v).strip() for v in items if str(v).strip())
    if any(not n.replace("_", "").replace(".", "").isalnum() for n in names):
        raise PlanError(flag, f"expects module names, e.g. embed_tokens,lm_head (got {value!r})")
    return names


@dataclass(frozen=True)
class TrainSpec:
    """One preference-training run, per device.

    - ``batch`` is TRL's ``per_device_train_batch_size``: pairs for DPO/IPO/ORPO/SimPO, examples for
      KTO.
    - ``seq`` is the padded length of one sequence (prompt + completion + the tokens TRL adds) as
      the trainer's batches have it.
    - ``dtype`` is the dtype the policy is loaded in; ``autocast`` is the compute dtype of the
      forward when it differs (fp32 weights + bf16 autocast is TRL's default when a model is passed
      by name with ``bf16=True``); ``None`` means the forward runs in ``dtype`` -- for a 16-bit load,
      under the Trainer's autocast to that dtype (TRL's default ``bf16=True``), which still casts
      PEFT's fp32 adapters. ``autocast="none"`` (:attr:`no_autocast`) says the Trainer runs no autocast
      at all (``bf16`` and ``fp16`` both False).
    - ``sharding`` splits state over ``gpus`` ranks (ZeRO stage or FSDP); ``gpus`` > 1 without
      sharding is plain data parallelism (every rank holds everything).
    - k-bit loads (``finetune=qlora``, ``ref_quant``) are transformers' ``BitsAndBytesConfig``:
      ``quant_bits`` (``load_in_4bit`` / ``load_in_8bit``), and for 4 bits ``quant_type``,
      ``double_quant`` and ``quant_compute_dtype``, with the defaults of TRL's ``ModelConfig`` /
      ``get_quantization_config`` (nf4, no nested quantization, compute dtype = ``dtype``).
      ``prepare_kbit``: the user calls PEFT's ``prepare_model_for_kbit_training`` on the k-bit
      policy before the trainer (ORPO and CPO call it themselves, see :attr:`kbit_prepared`).
    """

    method: Method
    strategy: Strategy
    finetune: Finetune = Finetune.FULL
    dtype: Dtype = Dtype.BF16
    autocast: Dtype | None = None
    #: the Trainer runs with ``bf16=False`` and ``fp16=False``: no autocast, so a 16-bit load computes
    #: in its own dtype and PEFT upcasts each LoRA input to the fp32 adapters' dtype. Spelled
    #: ``autocast="none"`` (``--autocast none``); meaningless for fp32 weights (normalized to False)
    no_autocast: bool = False
    ref_dtype: Dtype | None = None  # None: same as the policy's load dtype
    ref_quant: Quant = Quant.NONE
    lora_r: int = 16
    lora_targets: tuple[str, ...] = (ALL_LINEAR,)
    batch: int = 1
    seq: int = 1024
    precompute_batch: int | None = None  # precompute_ref_batch_size; None: same as batch
    grad_ckpt: bool = False
    optim: Optim = Optim.ADAMW
    attn: Attn = Attn.SDPA
    #: the batch holds padding (real data: chosen/rejected of different lengths), so the model
    #: builds an explicit attention mask; False for exact-length synthetic data
    padded: bool = True
    gpus: int = 1
    sharding: Sharding = Sharding.NONE
    offload: Offload = Offload.NONE
    #: the policy's k-bit load under ``finetune=qlora`` (bitsandbytes ``load_in_4bit`` / ``load_in_8bit``)
    quant_bits: int = 4
    #: the 4-bit data type (``bnb_4bit_quant_type``)
    quant_type: QuantType = QuantType.NF4
    #: double quantization (``bnb_4bit_use_double_quant``): the absmax constants quantized again;
    #: off by default, as in BitsAndBytesConfig and TRL's ``use_bnb_nested_quant``
    double_quant: bool = False
    #: ``bnb_4bit_compute_dtype``; None: the load dtype (TRL's ``get_quantization_config``)
    quant_compute_dtype: Dtype | None = None
    #: ``peft.prepare_model_for_kbit_training`` called on the k-bit policy before the trainer
    prepare_kbit: bool = False
    device: Device = Device.CUDA
    #: DoRA (PEFT ``LoraConfig(use_dora=True)``): each adapter's update split into magnitude and
    #: direction, with the weight norm recomputed every forward. The formula engine has no term for it:
    #: rows with DoRA are estimated by the trace engine (PEFT's own ``DoraLinearLayer`` code)
    dora: bool = False
    #: modules PEFT trains as full copies beside the adapters (``LoraConfig(modules_to_save=...)``, e.g.
    #: ``embed_tokens``, ``lm_head``): planned by the trace engine, like ``dora``
    modules_to_save: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.autocast, str) and self.autocast.strip().lower() in ("none", "off", "no"):
            object.__setattr__(self, "autocast", None)
            object.__setattr__(self, "no_autocast", True)
        for name, (cls, flag) in _PARSED.items():
            value = getattr(self, name)
            if value is not None or name not in _OPTIONAL_ENUMS:
                object.__setattr__(self, name, _parse_enum(cls, value, flag))
        object.__setattr__(self, "lora_targets", parse_lora_targets(self.lora_targets))
        if self.autocast is self.dtype:  # autocast to the weights' own dtype casts nothing
            object.__setattr__(self, "autocast", None)
        for name in ("grad_ckpt", "padded", "double_quant", "prepare_kbit", "dora", "no_autocast"):
            if not isinstance(getattr(self, name), bool):
                raise PlanError(f"--{name.replace('_', '-')}", f"must be true or false (got {getattr(self, name)!r})")
        if self.no_autocast and self.autocast is not None:
            raise PlanError("--autocast", f"give either an autocast dtype or none (got autocast {self.autocast.value} "
                                          "and no_autocast)")
        if self.dtype is Dtype.FP32:
            object.__setattr__(self, "no_autocast", False)  # fp32 weights without autocast: the default
        _positive("batch", self.batch, "--batch", MAX_BATCH)
        _positive("seq", self.seq, "--seq", MAX_SEQ)
        _positive("lora rank", self.lora_r, "--lora-r", 1 << 16)
        _positive("gpus", self.gpus, "--gpus", MAX_GPUS)
        if self.precompute_batch is not None:
            _positive("precompute batch", self.precompute_batch, "--precompute-batch", MAX_BATCH)
        if self.quant_bits not in (4, 8):
            raise PlanError("--quant-bits", f"bitsandbytes loads in 4 or 8 bits (got {self.quant_bits!r})")
        if self.offload is not Offload.NONE:
            caps = self.sharding.caps
            if self.sharding is Sharding.NONE:
                raise PlanError("--offload", "CPU offload comes with DeepSpeed ZeRO or FSDP; add --zero N or --fsdp")
            if self.offload.params_on_cpu and not caps.params:
                raise PlanError("--offload", "parameter offload needs ZeRO-3 or FSDP (ZeRO-1/2 keep whole parameters "
                                             "on every GPU); use --offload optimizer")
        if self.dora and not self.finetune.peft:
            raise PlanError("--dora", "DoRA decomposes LoRA adapters; add --finetune lora")
        object.__setattr__(self, "modules_to_save", _names(self.modules_to_save, "--modules-to-save"))
        if self.modules_to_save and not self.finetune.peft:
            raise PlanError("--modules-to-save", "PEFT trains these copies beside LoRA adapters; add --finetune lora "
                                                 "(a full fine-tune trains every module already)")
        if self.method is Method.KTO and self.batch < 2:
            # TRL 1.16 kto_trainer: "Actual (not effective) batch size must be > 1"
            raise PlanError("--batch", "KTO needs a per-device batch of at least 2 (TRL computes its KL "
                                       "term from mismatched pairs inside the batch)")
        if self.prepare_kbit and self.finetune is not Finetune.QLORA:
            raise PlanError("--prepare-kbit", "prepare_model_for_kbit_training prepares a k-bit policy; "
                                              "add --finetune qlora")
        if self.device is Device.CPU and self.offload is not Offload.NONE:
            # CPU ranks (gloo, what the bench measures) are sharded like GPUs, but there is no device
            # memory to offload from
            raise PlanError("--offload", "CPU offload applies to --device cuda only")
        check_combination(self.method, self.strategy, self.finetune, self.ref_quant)

    def check_lm_head_adapter(self) -> None:
        """TRL's DPO and KTO trainers refuse a LoRA adapter on the LM head (dpo_trainer.py / kto_trainer.py
        ``__init__``: the fused log-prob head reads ``lm_head.weight`` directly); ORPO / CPO run it. Checked
        per row (:func:`refplan.query.train_specs`), not at construction, where the shared settings are
        validated on a DPO row."""
        if "lm_head" in self.lora_targets and self.finetune.peft and self.method.caps.needs_reference:
            raise PlanError("--lora-targets", "TRL refuses a LoRA adapter on lm_head for DPO/IPO/KTO: \"Applying a "
                                              "PEFT adapter to `lm_head` is not supported: the log-probabilities are "
                                              "computed from `lm_head.weight` directly\"; train it with "
                                              "--modules-to-save lm_head, or pass --method orpo,simpo")

    @classmethod
    def parse(cls, *, zero: int | None = None, fsdp: bool | None = None, **kw) -> TrainSpec:
        """Build from CLI-style values; ``zero`` / ``fsdp`` (the flags' and budget files' spelling) set
        ``sharding``. Unknown keys are refused naming the key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise PlanError(unknown[0], f"unknown setting {unknown[0]!r}")
        if zero is not None or fsdp is not None:
            if "sharding" in kw:
                raise PlanError("--sharding", "give either sharding or --zero/--fsdp, not both")
            kw["sharding"] = Sharding.from_flags(zero or 0, bool(fsdp))
        return cls(**kw)

    @property
    def compute_dtype(self) -> Dtype:
        """dtype of activations in the forward (autocast wins over the load dtype)."""
        return self.autocast or self.dtype

    @property
    def reference_dtype(self) -> Dtype:
        return self.ref_dtype or self.dtype

    @property
    def policy_quant(self) -> Quant:
        """The policy's k-bit load: 4 or 8 bits under QLoRA, none otherwise."""
        if self.finetune is not Finetune.QLORA:
            return Quant.NONE
        return Quant.NF4 if self.quant_bits == 4 else Quant.INT8

    @property
    def kbit_compute_dtype(self) -> Dtype:
        """The dtype a 4-bit linear dequantizes to and multiplies in (``bnb_4bit_compute_dtype``)."""
        return self.quant_compute_dtype or self.dtype

    @property
    def kbit_prepared(self) -> bool:
        """The k-bit policy went through ``prepare_model_for_kbit_training``: asked for, or done by TRL's
        ORPO / CPO trainers themselves for a k-bit model with a ``peft_config`` (orpo_trainer.py ~220,
        cpo_trainer.py ~210). DPO and KTO never call it (dpo_trainer.py ~726 casts the trainable
        adapters to bf16 instead)."""
        if self.finetune is not Finetune.QLORA:
            return False
        return self.prepare_kbit or not self.method.caps.needs_reference

    @property
    def sequences_per_forward(self) -> int:
        """Rows in one policy forward: 2B for pair methods (chosen and rejected concatenated), B for KTO."""
        return self.batch * (2 if self.method.caps.concatenates_pair else 1)

    @property
    def tokens_per_forward(self) -> int:
        return self.sequences_per_forward * self.seq

    @property
    def shards(self) -> int:
        """Ranks over which sharded state is split (1 when not sharded)."""
        return self.gpus if self.sharding is not Sharding.NONE else 1

    def shards_of(self, what: str) -> int:
        """Ranks over which ``params`` / ``grads`` / ``optimizer`` state is split."""
        return self.shards if getattr(self.sharding.caps, what) else 1
