"""One benchmark scenario: a frozen record, validated once, with a unique key and its TrainSpec.

Imports only the standard library and refplan's own spec modules, so the runner and the CLI can
expand and check a matrix without importing torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace

from refplan.errors import PlanError
from refplan.methods import Finetune, Method, Strategy, check_combination
from refplan.settings import Dtype, Optim
from refplan.spec import TrainSpec

DEFAULT_MODEL = "random:tiny"
DEFAULT_DATASET = "synthetic"
#: refplan optimizer name -> transformers ``optim`` (``Optim.caps.trainer_name``), for the optimizers
#: the bench can run on this machine's CPU
OPTIMS = {o.value: o.caps.trainer_name for o in Optim if o.caps.runs_on_cpu}


@dataclass(frozen=True)
class Scenario:
    """One burst: a method x strategy x fine-tune mode on one model, dataset and shape.

    ``seq`` is the padded length of one sequence as the trainer's batch has it (see
    :func:`refplan.harness.tiny.split_lengths`); ``batch`` is ``per_device_train_batch_size``
    (pairs for DPO/IPO/ORPO/SimPO, examples for KTO). ``ref_dtype`` None means the reference has
    the policy's dtype.
    """

    method: Method
    strategy: Strategy
    finetune: Finetune = Finetune.FULL
    model: str = DEFAULT_MODEL
    dataset: str = DEFAULT_DATASET
    dtype: str = "fp32"
    autocast: str | None = None
    ref_dtype: str | None = None
    lora_r: int = 8
    batch: int = 2
    seq: int = 128
    steps: int = 3
    grad_ckpt: bool = False
    attn: str = "sdpa"
    device: str = "cpu"
    seed: int = 0
    optim: str = "adamw"

    def __post_init__(self):
        for name, enum_cls in (("method", Method), ("strategy", Strategy), ("finetune", Finetune)):
            val = getattr(self, name)
            if not isinstance(val, enum_cls):
                try:
                    object.__setattr__(self, name, enum_cls(str(val).lower()))
                except ValueError:
                    choices = ", ".join(m.value for m in enum_cls)
                    raise PlanError(f"--{name}", f"unknown value {val!r}; choose from {choices}") from None
        Dtype.parse(self.dtype, "--dtype")
        if self.optim not in OPTIMS:
            raise PlanError("--optim", f"the bench runs {', '.join(OPTIMS)} only (got {self.optim!r})")
        if self.steps < 1:
            raise PlanError("--steps", f"steps must be positive (got {self.steps})")
        if self.ref_dtype == self.dtype:
            object.__setattr__(self, "ref_dtype", None)  # one spelling per scenario, one key
        if self.ref_dtype is not None and self.strategy is not Strategy.SEPARATE:
            raise PlanError("--ref-dtype", f"a reference dtype applies to strategy 'separate' only "
                                           f"(got {self.strategy.value!r})")
        check_combination(self.method, self.strategy, self.finetune)
        self.train_spec()  # validates shape, device and method limits (KTO batch > 1) once, here

    # -- derived ------------------------------------------------------------------------------------

    @property
    def key(self) -> str:
        """Readable and unique: ``dpo-separate-full-fp32-b2-s128-<hash of every field>``."""
        ref = f"-ref{self.ref_dtype}" if self.ref_dtype else ""
        lora = f"-r{self.lora_r}" if self.finetune.peft else ""
        digest = hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:8]
        return (f"{self.method.value}-{self.strategy.value}{ref}-{self.finetune.value}{lora}-{self.dtype}"
                f"-b{self.batch}-s{self.seq}-{digest}")

    @property
    def prompt_len(self) -> int:
        from refplan.harness.tiny import split_lengths

        return split_lengths(self.seq, self.method.caps.added_tokens)[0]

    @property
    def completion_len(self) -> int:
        from refplan.harness.tiny import split_lengths

        return split_lengths(self.seq, self.method.caps.added_tokens)[1]

    @property
    def sequences_per_step(self) -> int:
        """Sequences in one policy forward: 2B for pair methods, B for KTO (its KL pass not counted)."""
        return self.batch * (2 if self.method.caps.concatenates_pair else 1)

    @property
    def baseline(self) -> Scenario | None:
        """The scenario this one's losses are compared with: same everything, strategy 'separate' at the
        policy's dtype. None for the baseline itself and for reference-free methods."""
        if not self.method.caps.needs_reference:
            return None
        base = replace(self, strategy=Strategy.SEPARATE, ref_dtype=None)
        return None if base == self else base

    def train_spec(self) -> TrainSpec:
        """The planner's view of this scenario (same device, dtypes, shape)."""
        return TrainSpec(
            method=self.method, strategy=self.strategy, finetune=self.finetune, dtype=self.dtype,
            autocast=self.autocast, ref_dtype=self.ref_dtype, lora_r=self.lora_r, lora_targets="all-linear",
            batch=self.batch, seq=self.seq, precompute_batch=self.batch, grad_ckpt=self.grad_ckpt,
            optim=self.optim, attn=self.attn, device=self.device,
            # synthetic rows have exact lengths: no padding, so no explicit attention mask
            padded=self.dataset != "synthetic",
        )

    def as_dict(self) -> dict:
        d = asdict(self)
        for k in ("method", "strategy", "finetune"):
            d[k] = getattr(self, k).value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Scenario:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise PlanError("suite", f"unknown scenario keys: {', '.join(sorted(unknown))}")
        return cls(**d)
