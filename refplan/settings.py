"""Every training setting that is not a method or a strategy, as a typed value parsed once.

Each enum is ``str``-valued (its CLI spelling), so it prints and serializes as the user wrote it. An
optimizer and a sharding mode carry their capabilities: what the planner needs to know about them
lives here, once, instead of in ``name in (...)`` checks spread over modules. LoRA targets are a
validated tuple; :func:`check_lora_targets` refuses a name the model does not have.

Pure standard library: the planner path imports this module.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from refplan.errors import PlanError


class _Choice(str, enum.Enum):
    """A ``str`` enum whose values are the CLI spellings; parsed with :meth:`parse`."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value, flag: str):
        """The member for ``value`` (a member or its spelling, case-insensitive), or PlanError naming ``flag``."""
        if isinstance(value, cls):
            return value
        text = str(value).strip().lower()
        for member in cls:
            if text == member.value or text in member._aliases():
                return member
        choices = ", ".join(m.value for m in cls)
        raise PlanError(flag, f"unknown value {value!r}; choose from {choices}")

    def _aliases(self) -> tuple[str, ...]:
        return ()


class Dtype(_Choice):
    """Floating-point dtypes a model is loaded or computed in (torch name in the comment)."""

    BF16 = "bf16"  # torch.bfloat16
    FP16 = "fp16"  # torch.float16
    FP32 = "fp32"  # torch.float32

    @property
    def bytes(self) -> int:
        return 4 if self is Dtype.FP32 else 2

    def _aliases(self) -> tuple[str, ...]:
        return {"bf16": ("bfloat16",), "fp16": ("float16", "half"), "fp32": ("float32", "float")}[self.value]


class Quant(_Choice):
    """k-bit loading of a model through bitsandbytes (``BitsAndBytesConfig``)."""

    NONE = "none"
    INT8 = "8bit"  # load_in_8bit: LLM.int8 (Linear8bitLt)
    NF4 = "4bit"  # load_in_4bit: NF4 or FP4, see QuantType (Linear4bit)


class QuantType(_Choice):
    """The 4-bit data type of a ``load_in_4bit`` load (``bnb_4bit_quant_type``). Both store the same
    bytes (two codes per byte, one absmax per 64-weight block); they differ in the 16 code values."""

    NF4 = "nf4"  # NormalFloat4 (Dettmers et al. 2023); TRL's ModelConfig default
    FP4 = "fp4"  # transformers' BitsAndBytesConfig default


class Attn(_Choice):
    """``attn_implementation`` asked for; a family may force another (see ``Structure.attention``)."""

    SDPA = "sdpa"
    EAGER = "eager"
    FLASH = "flash"

    def _aliases(self) -> tuple[str, ...]:
        return ("flash_attention_2",) if self is Attn.FLASH else ()


class Device(_Choice):
    """Where the step runs. ``cpu`` drops the CUDA-only terms (context, workspace, allocator slack)."""

    CUDA = "cuda"
    CPU = "cpu"


class StateRule(str, enum.Enum):
    """How an optimizer's state scales with the trainable parameters (see ``terms.optimizer_state_bytes``)."""

    ADAM = "adam"  # exp_avg + exp_avg_sq in the parameter dtype + a 4-byte step per tensor
    #: bitsandbytes 8-bit AdamW: uint8 states + fp32 absmax per 256-block; fp32 states for tensors under
    #: 4096 elements and for embeddings (the Trainer's 32-bit override)
    ADAM_8BIT = "adam-8bit"
    BNB_32BIT = "bnb-32bit"  # bitsandbytes 32-bit AdamW (paged): two fp32 states, whatever the param dtype
    NONE = "none"  # SGD without momentum
    FACTORED = "factored"  # Adafactor: row + column factors per matrix


class TransientRule(str, enum.Enum):
    """Temporaries of one optimizer step (see ``planner.optimizer_transient_bytes``)."""

    IN_PLACE = "in-place"  # fused / blockwise kernels update in place
    LARGEST_TENSOR_X2 = "largest-x2"  # one tensor at a time: sqrt and quotient of the largest
    FOREACH_ON_CUDA = "foreach-on-cuda"  # CUDA foreach path: sqrt of every state at once; else largest-x2
    #: bitsandbytes: fused in place on CUDA; on CPU one tensor at a time through fp32 temporaries
    BNB_ON_CPU = "bnb-on-cpu"


@dataclass(frozen=True)
class OptimCaps:
    state: StateRule
    transient: TransientRule
    #: the Trainer's ``optim`` name (transformers ``OptimizerNames``)
    trainer_name: str
    #: the bench can run it on CPU (bitsandbytes 0.50 has CPU kernels for its 8- and 32-bit optimizers;
    #: a paged one falls back to ordinary CPU memory there)
    runs_on_cpu: bool


class Optim(_Choice):
    ADAMW = "adamw"
    ADAMW_TORCH = "adamw-torch"
    ADAMW_8BIT = "adamw-8bit"
    PAGED_ADAMW = "paged-adamw"
    SGD = "sgd"
    ADAFACTOR = "adafactor"

    @property
    def caps(self) -> OptimCaps:
        return _OPTIM_CAPS[self]

    def _aliases(self) -> tuple[str, ...]:
        return (self.caps.trainer_name,)


_OPTIM_CAPS = {
    # the HF Trainer's default since torch 2.8 (training_args.py): torch._fused_adamw_
    Optim.ADAMW: OptimCaps(StateRule.ADAM, TransientRule.IN_PLACE, "adamw_torch_fused", True),
    Optim.ADAMW_TORCH: OptimCaps(StateRule.ADAM, TransientRule.FOREACH_ON_CUDA, "adamw_torch", True),
    Optim.ADAMW_8BIT: OptimCaps(StateRule.ADAM_8BIT, TransientRule.BNB_ON_CPU, "adamw_bnb_8bit", True),
    # paged 32-bit AdamW: fp32 states in unified memory that can be evicted (counted in full)
    Optim.PAGED_ADAMW: OptimCaps(StateRule.BNB_32BIT, TransientRule.BNB_ON_CPU, "paged_adamw_32bit", True),
    Optim.SGD: OptimCaps(StateRule.NONE, TransientRule.IN_PLACE, "sgd", True),
    Optim.ADAFACTOR: OptimCaps(StateRule.FACTORED, TransientRule.LARGEST_TENSOR_X2, "adafactor", True),
}


@dataclass(frozen=True)
class ShardingCaps:
    params: bool  # parameters (and a prepared reference) sharded over the ranks
    grads: bool
    optimizer: bool
    #: DeepSpeed keeps fp32 master weights of low-precision trainable weights
    #: (bf16_optimizer / stage_1_and_2 ``single_partition_of_fp32_groups``)
    master_weights: bool
    zero_stage: int


class Sharding(_Choice):
    NONE = "none"
    ZERO1 = "zero1"
    ZERO2 = "zero2"
    ZERO3 = "zero3"
    FSDP = "fsdp"  # FULL_SHARD

    @property
    def caps(self) -> ShardingCaps:
        return _SHARDING_CAPS[self]

    @classmethod
    def from_flags(cls, zero: int = 0, fsdp: bool = False) -> Sharding:
        """The mode for the CLI's ``--zero N`` / ``--fsdp`` (and budget files' ``zero`` / ``fsdp`` keys)."""
        if isinstance(zero, bool) or not isinstance(zero, int) or zero not in (0, 1, 2, 3):
            raise PlanError("--zero", f"ZeRO stage must be 0, 1, 2 or 3 (got {zero!r})")
        if fsdp and zero:
            raise PlanError("--fsdp", "choose either --zero N or --fsdp, not both")
        if fsdp:
            return cls.FSDP
        return (cls.NONE, cls.ZERO1, cls.ZERO2, cls.ZERO3)[zero]


_SHARDING_CAPS = {
    Sharding.NONE: ShardingCaps(False, False, False, False, 0),
    Sharding.ZERO1: ShardingCaps(False, False, True, True, 1),
    Sharding.ZERO2: ShardingCaps(False, True, True, True, 2),
    Sharding.ZERO3: ShardingCaps(True, True, True, True, 3),
    Sharding.FSDP: ShardingCaps(True, True, True, False, 0),
}

class Offload(_Choice):
    """What a sharded run keeps in CPU memory instead of on the GPU.

    - ``optimizer``: DeepSpeed ``offload_optimizer`` (ZeRO-Offload: optimizer state, the fp32 master
      partition and the gradient partitions live in CPU memory and DeepSpeedCPUAdam steps there);
    - ``params``: DeepSpeed ZeRO-3 ``offload_param`` alone (parameter partitions on CPU, each layer
      gathered onto the GPU when it runs; optimizer state stays on the GPU);
    - ``all``: both -- and FSDP's ``offload_params`` (``CPUOffload`` / ``CPUOffloadPolicy``: parameter,
      gradient and optimizer shards on CPU).
    """

    NONE = "none"
    OPTIMIZER = "optimizer"
    PARAMS = "params"
    ALL = "all"

    @property
    def optimizer_on_cpu(self) -> bool:
        return self in (Offload.OPTIMIZER, Offload.ALL)

    @property
    def params_on_cpu(self) -> bool:
        return self in (Offload.PARAMS, Offload.ALL)


#: PEFT's ``target_modules="all-linear"``: every nn.Linear / Conv1D but the output layer
ALL_LINEAR = "all-linear"


def parse_lora_targets(value) -> tuple[str, ...]:
    """``"all-linear"`` or a comma list of module names, as a tuple (``("all-linear",)`` for the former)."""
    if isinstance(value, tuple):
        items = value
    elif isinstance(value, (list,)):
        items = tuple(str(v) for v in value)
    elif isinstance(value, str):
        items = tuple(t.strip() for t in value.split(",") if t.strip())
    else:
        raise PlanError("--lora-targets", f"expected 'all-linear' or module names, got {value!r}")
    if not items:
        raise PlanError("--lora-targets", "expects 'all-linear' or a comma-separated list of module names")
    if ALL_LINEAR in items and len(items) > 1:
        raise PlanError("--lora-targets", "'all-linear' cannot be combined with module names")
    return items


def check_lora_targets(targets: tuple[str, ...], linear_names: tuple[str, ...]) -> None:
    """Refuse a target module name the model does not have (PEFT would wrap nothing)."""
    if targets == (ALL_LINEAR,):
        return
    unknown = [t for t in targets if t not in linear_names]
    if unknown:
        raise PlanError("--lora-targets", f"no linear named {', '.join(repr(t) for t in unknown)} in this model; "
                                          f"its linears: {', '.join(linear_names)} (or all-linear)")


def train_spec_from_strings(method, strategy, finetune="full", **kw):
    """A :class:`~refplan.spec.TrainSpec` from CLI-style strings (budget files, scripts, tests)."""
    from refplan.spec import TrainSpec

    return TrainSpec.parse(method=method, strategy=strategy, finetune=finetune, **kw)
