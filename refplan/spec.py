"""The training setup the planner estimates: one frozen record, validated once at construction.

Every validation error names the CLI flag to change (``PlanError``).
"""

from __future__ import annotations

from dataclasses import dataclass

from refplan.errors import PlanError
from refplan.methods import Finetune, Method, Strategy, check_combination

DTYPES = ("bf16", "fp16", "fp32")
QUANTS = ("none", "8bit", "4bit")
OPTIMS = ("adamw", "adamw-torch", "adamw-8bit", "paged-adamw", "sgd", "adafactor")
ATTN_IMPLS = ("sdpa", "eager", "flash")
DEVICES = ("cuda", "cpu")

MAX_SEQ = 1 << 22  # 4M tokens: past this an input is a typo, not a plan
MAX_BATCH = 1 << 16
MAX_GPUS = 1 << 14


def _positive(name: str, value: int, flag: str, upper: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise PlanError(flag, f"{name} must be a whole number (got {value!r})")
    if value <= 0:
        raise PlanError(flag, f"{name} must be positive (got {value})")
    if value > upper:
        raise PlanError(flag, f"{name} {value} is absurdly large (max {upper})")


@dataclass(frozen=True)
class TrainSpec:
    """One preference-training run, per device.

    - ``batch`` is TRL's ``per_device_train_batch_size``: pairs for DPO/IPO/ORPO/SimPO, examples for
      KTO.
    - ``seq`` is the padded length of one sequence (prompt + completion + the tokens TRL adds) as
      the trainer's batches have it.
    - ``dtype`` is the dtype the policy is loaded in; ``autocast`` is the compute dtype of the
      forward when it differs (fp32 weights + bf16 autocast is TRL's default when a model is passed
      by name with ``bf16=True``); ``None`` means the forward runs in ``dtype``.
    """

    method: Method
    strategy: Strategy
    finetune: Finetune = Finetune.FULL
    dtype: str = "bf16"
    autocast: str | None = None
    ref_dtype: str | None = None  # None: same as the policy's load dtype
    ref_quant: str = "none"
    lora_r: int = 16
    lora_targets: str = "all-linear"  # or comma-separated module names, e.g. "q_proj,v_proj"
    batch: int = 1
    seq: int = 1024
    precompute_batch: int | None = None  # precompute_ref_batch_size; None: same as batch
    grad_ckpt: bool = False
    optim: str = "adamw"
    attn: str = "sdpa"
    #: the batch holds padding (real data: chosen/rejected of different lengths), so the model
    #: builds an explicit attention mask; False for exact-length synthetic data
    padded: bool = True
    gpus: int = 1
    zero: int = 0
    fsdp: bool = False
    device: str = "cuda"

    def __post_init__(self):
        for name, val, choices, flag in (
            ("dtype", self.dtype, DTYPES, "--dtype"),
            ("ref_quant", self.ref_quant, QUANTS, "--ref-quant"),
            ("optim", self.optim, OPTIMS, "--optim"),
            ("attn", self.attn, ATTN_IMPLS, "--attn"),
            ("device", self.device, DEVICES, "--device"),
        ):
            if val not in choices:
                raise PlanError(flag, f"unknown {name} {val!r}; choose from {', '.join(choices)}")
        if self.autocast is not None and self.autocast not in DTYPES:
            raise PlanError("--autocast", f"unknown dtype {self.autocast!r}; choose from {', '.join(DTYPES)}")
        if self.ref_dtype is not None and self.ref_dtype not in DTYPES:
            raise PlanError("--ref-dtype", f"unknown dtype {self.ref_dtype!r}; choose from {', '.join(DTYPES)}")
        _positive("batch", self.batch, "--batch", MAX_BATCH)
        _positive("seq", self.seq, "--seq", MAX_SEQ)
        _positive("lora rank", self.lora_r, "--lora-r", 1 << 16)
        _positive("gpus", self.gpus, "--gpus", MAX_GPUS)
        if self.precompute_batch is not None:
            _positive("precompute batch", self.precompute_batch, "--precompute-batch", MAX_BATCH)
        if self.zero not in (0, 1, 2, 3):
            raise PlanError("--zero", f"ZeRO stage must be 0, 1, 2 or 3 (got {self.zero})")
        if self.fsdp and self.zero:
            raise PlanError("--fsdp", "choose either --zero N or --fsdp, not both")
        if self.method is Method.KTO and self.batch < 2:
            # TRL 1.16 kto_trainer: "Actual (not effective) batch size must be > 1"
            raise PlanError("--batch", "KTO needs a per-device batch of at least 2 (TRL computes its KL "
                                       "term from mismatched pairs inside the batch)")
        if self.finetune is Finetune.QLORA and self.device == "cpu":
            raise PlanError("--finetune", "QLoRA needs bitsandbytes on CUDA; use --device cuda")
        if self.ref_quant != "none" and self.device == "cpu":
            raise PlanError("--ref-quant", "8/4-bit references need bitsandbytes on CUDA; use --device cuda")
        if self.device == "cpu" and (self.gpus > 1 or self.zero or self.fsdp):
            raise PlanError("--device", "sharding (--gpus/--zero/--fsdp) applies to --device cuda only")
        check_combination(self.method, self.strategy, self.finetune, self.ref_quant)

    @property
    def compute_dtype(self) -> str:
        """dtype of activations in the forward (autocast wins over the load dtype)."""
        return self.autocast or self.dtype

    @property
    def reference_dtype(self) -> str:
        return self.ref_dtype or self.dtype

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
        return self.gpus if (self.zero or self.fsdp) else 1
