"""One benchmark scenario: a :class:`~refplan.spec.TrainSpec` plus the settings only a burst has.

A scenario is the training setup the planner estimates (``train``) and where and how long the bench
runs it (``model``, ``dataset``, ``steps``, ``seed``). Suites, CLI flags, budget files and result
rows spell it as one flat dict (:data:`FLAT_KEYS`); :meth:`Scenario.from_dict` is the one place
that turns such a dict into a scenario, and :func:`bench_train_spec` the one place the bench's
defaults (where they differ from TrainSpec's) are applied.

Imports only the standard library and refplan's own spec modules, so the runner and the CLI can
expand and check a matrix without importing torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields, replace

from refplan.errors import PlanError
from refplan.methods import Finetune, Strategy
from refplan.settings import ALL_LINEAR, Optim, Quant, Sharding
from refplan.spec import TrainSpec

DEFAULT_MODEL = "random:tiny"
DEFAULT_DATASET = "synthetic"

#: the bench's defaults where they differ from TrainSpec's: an exact fp32 CPU run, small shapes
BENCH_DEFAULTS = {"dtype": "fp32", "lora_r": 8, "batch": 2, "seq": 128, "device": "cpu"}
#: the flat spelling of a scenario, in the order of result rows (its TrainSpec fields, then the bench's)
FLAT_KEYS = ("method", "strategy", "finetune", "model", "dataset", "dtype", "autocast", "ref_dtype", "lora_r",
             "batch", "seq", "steps", "grad_ckpt", "attn", "device", "seed", "optim")
#: flat keys a scenario carries only when they differ from what the bench derives (so that every other
#: scenario keeps its key): LoRA targets other than all-linear, a precompute batch other than the train batch,
#: the k-bit settings of a QLoRA policy or a quantized reference (:data:`QUANT_KEYS`), and a sharded
#: burst's ranks, sharding and offload (:mod:`refplan.harness.launch`), DoRA and the modules PEFT trains in full
QUANT_KEYS = ("ref_quant", "quant_bits", "quant_type", "double_quant", "quant_compute_dtype", "prepare_kbit")
OPTIONAL_KEYS = ("lora_targets", "precompute_batch", *QUANT_KEYS, "gpus", "sharding", "offload", "dora",
                 "modules_to_save")
#: TrainSpec's defaults of the k-bit settings: a scenario spells one only where it differs
_QUANT_DEFAULTS = {f.name: f.default for f in fields(TrainSpec) if f.name in QUANT_KEYS}
#: shardings a burst can launch (ZeRO-1 is ZeRO-2 without gradient partitioning: not measured)
BENCH_SHARDINGS = (Sharding.ZERO2, Sharding.ZERO3, Sharding.FSDP)
#: flat keys that are a burst's own, not the training setup's
BENCH_KEYS = ("model", "dataset", "steps", "seed")
#: flat keys that are TrainSpec fields
TRAIN_KEYS = tuple(k for k in FLAT_KEYS if k not in BENCH_KEYS)
#: optimizers the bench can run on CPU (every one: bitsandbytes 0.50 has CPU kernels for its own)
BENCH_OPTIMS = tuple(o for o in Optim if o.caps.runs_on_cpu)


def bench_train_spec(dataset: str = DEFAULT_DATASET, **flat) -> TrainSpec:
    """The TrainSpec of a burst from its flat training keys (:data:`TRAIN_KEYS`), with the bench's defaults.

    Derived, not chosen: the precompute pass runs at the training batch size, and synthetic rows have
    exact lengths (no padding, so no explicit attention mask) while a real dataset's are padded.
    """
    kw = {**BENCH_DEFAULTS, **flat}
    kw.setdefault("precompute_batch", kw["batch"])
    if kw["precompute_batch"] is None:
        kw["precompute_batch"] = kw["batch"]
    train = TrainSpec.parse(**kw, padded=dataset != DEFAULT_DATASET)
    if train.ref_dtype is train.dtype:
        train = replace(train, ref_dtype=None)  # one spelling per scenario, one key
    return train


@dataclass(frozen=True)
class Scenario:
    """One burst: ``train`` run on ``model`` over ``dataset`` for ``steps`` optimizer steps.

    ``train.seq`` is the padded length of one sequence as the trainer's batch has it (see
    :func:`refplan.harness.tiny.split_lengths`); ``train.batch`` is ``per_device_train_batch_size``
    (pairs for DPO/IPO/ORPO/SimPO, examples for KTO).
    """

    train: TrainSpec
    model: str = DEFAULT_MODEL
    dataset: str = DEFAULT_DATASET
    steps: int = 3
    seed: int = 0

    def __post_init__(self):
        t = self.train
        if t.optim not in BENCH_OPTIMS:
            raise PlanError("--optim", f"the bench runs {', '.join(o.value for o in BENCH_OPTIMS)} only "
                                       f"(got {t.optim.value!r})")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise PlanError("--steps", f"steps must be positive (got {self.steps})")
        if t.ref_dtype is not None and t.strategy is not Strategy.SEPARATE:
            raise PlanError("--ref-dtype", f"a reference dtype applies to strategy 'separate' only "
                                           f"(got {t.strategy.value!r})")
        _check_benchable(t, self.dataset)

    @classmethod
    def from_dict(cls, flat: dict) -> Scenario:
        """A scenario from its flat spelling (suites, CLI flags, result rows); values may be strings or enums,
        absent keys take the bench's defaults. Unknown keys are refused."""
        unknown = set(flat) - set(FLAT_KEYS) - set(OPTIONAL_KEYS)
        if unknown:
            raise PlanError("suite", f"unknown scenario keys: {', '.join(sorted(unknown))}")
        bench = {k: flat[k] for k in BENCH_KEYS if k in flat}
        train = {k: flat[k] for k in (*TRAIN_KEYS, *OPTIONAL_KEYS) if k in flat}
        return cls(bench_train_spec(bench.get("dataset", DEFAULT_DATASET), **train), **bench)

    # -- derived ------------------------------------------------------------------------------------

    def as_dict(self) -> dict:
        """The flat spelling (:data:`FLAT_KEYS`), every value a string, number, bool or None."""
        t = self.train
        values = {"model": self.model, "dataset": self.dataset, "steps": self.steps, "seed": self.seed}
        for k in TRAIN_KEYS:
            v = getattr(t, k)
            values[k] = v.value if hasattr(v, "value") else v
        if t.no_autocast:
            values["autocast"] = "none"
        out = {k: values[k] for k in FLAT_KEYS}
        if t.lora_targets != (ALL_LINEAR,):
            out["lora_targets"] = ",".join(t.lora_targets)
        if t.precompute_batch != t.batch:
            out["precompute_batch"] = t.precompute_batch
        for k, default in _QUANT_DEFAULTS.items():
            v = getattr(t, k)
            if v != default:
                out[k] = v.value if hasattr(v, "value") else v
        if t.sharding is not Sharding.NONE:
            out.update(gpus=t.gpus, sharding=t.sharding.value, offload=t.offload.value)
        if t.dora:
            out["dora"] = True
        if t.modules_to_save:
            out["modules_to_save"] = ",".join(t.modules_to_save)
        return out

    @property
    def sharded(self) -> bool:
        """Launched as ``gpus`` ranks through accelerate (:mod:`refplan.harness.launch`)."""
        return self.train.sharding is not Sharding.NONE

    @property
    def key(self) -> str:
        """Readable and unique: ``dpo-separate-full-fp32-b2-s128-<hash of every field>``."""
        t = self.train
        ref = f"-ref{t.ref_dtype.value}" if t.ref_dtype else ""
        ref += f"-ref{t.ref_quant.value}" if t.ref_quant is not Quant.NONE else ""
        lora = f"-r{t.lora_r}" if t.finetune.peft else ""
        lora += f"-q{t.quant_bits}" if t.finetune is Finetune.QLORA else ""
        if t.sharding is not Sharding.NONE:
            off = f"-off{t.offload.value}" if t.offload.value != "none" else ""
            lora += f"-{t.sharding.value}x{t.gpus}{off}"
        digest = hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:8]
        return (f"{t.method.value}-{t.strategy.value}{ref}-{t.finetune.value}{lora}-{t.dtype.value}"
                f"-b{t.batch}-s{t.seq}-{digest}")

    @property
    def prompt_len(self) -> int:
        from refplan.harness.tiny import split_lengths

        return split_lengths(self.train.seq, self.train.method.caps.added_tokens)[0]

    @property
    def completion_len(self) -> int:
        from refplan.harness.tiny import split_lengths

        return split_lengths(self.train.seq, self.train.method.caps.added_tokens)[1]

    @property
    def sequences_per_step(self) -> int:
        """Sequences in one policy forward: 2B for pair methods, B for KTO (its KL pass not counted)."""
        return self.train.sequences_per_forward

    @property
    def baseline(self) -> Scenario | None:
        """The scenario this one's losses are compared with: same everything, strategy 'separate' at the
        policy's dtype with a full-precision reference. None for the baseline itself and for
        reference-free methods."""
        if not self.train.method.caps.needs_reference:
            return None
        train = replace(self.train, strategy=Strategy.SEPARATE, ref_dtype=None, ref_quant=Quant.NONE)
        read = kbit_keys_read({"finetune": train.finetune, "quant_bits": train.quant_bits})
        train = replace(train, **{k: v for k, v in _QUANT_DEFAULTS.items() if k not in read})
        base = replace(self, train=train)
        return None if base == self else base


def _check_benchable(train: TrainSpec, dataset: str) -> None:
    """Refuse training settings a burst cannot run or its flat spelling cannot hold, naming the flag; and
    derived settings that disagree with :func:`bench_train_spec` (which sets them)."""
    if train.ref_dtype is train.dtype:
        raise PlanError("--ref-dtype", "equals the policy's dtype; leave it unset (one spelling, one key)")
    if train.padded != (dataset != DEFAULT_DATASET):
        raise PlanError("--batch", "a burst pads real data only; build its TrainSpec with bench_train_spec()")
    _check_quant_spelling(train)
    if train.ref_quant is not Quant.NONE and train.strategy is Strategy.PRECOMPUTE:
        raise PlanError("--ref-quant", "precompute without FSDP loads no reference (the policy computes the "
                                       "reference log-probs); drop --ref-quant")
    if train.sharding is Sharding.NONE and train.gpus != 1:
        raise PlanError("--gpus", "several ranks need a sharding: add --zero 2|3 or --fsdp")
    if train.sharding is not Sharding.NONE:
        if train.sharding not in BENCH_SHARDINGS:
            raise PlanError("--zero", "the bench launches ZeRO-2, ZeRO-3 or FSDP (got ZeRO-1)")
        if train.gpus < 2:
            raise PlanError("--gpus", f"a sharded burst needs at least 2 ranks (got {train.gpus})")
        if train.strategy.value in ("sync", "ref-adapter"):
            raise PlanError("--strategy", f"sharded bursts run separate, unwrap, precompute and none "
                                          f"(got {train.strategy.value!r})")
        if train.finetune is Finetune.QLORA or train.ref_quant is not Quant.NONE:
            raise PlanError("--finetune" if train.finetune is Finetune.QLORA else "--ref-quant",
                            "sharded bursts run full-precision weights (k-bit under ZeRO/FSDP is not measured)")


def kbit_keys_read(flat: dict) -> set[str]:
    """The k-bit keys (:data:`QUANT_KEYS`) a scenario's flat spelling reads: ``ref_quant`` always; the
    policy's bits and ``prepare_kbit`` under QLoRA; the 4-bit settings when something loads 4-bit."""
    def value(k):
        v = flat.get(k)
        return getattr(v, "value", v)

    qlora = value("finetune") == "qlora"
    four = (qlora and int(value("quant_bits") or 4) == 4) or value("ref_quant") == "4bit"
    keys = {"ref_quant"}
    if qlora:
        keys |= {"quant_bits", "prepare_kbit"}
    if four:
        keys |= {"quant_type", "double_quant", "quant_compute_dtype"}
    return keys


def _check_quant_spelling(train: TrainSpec) -> None:
    """One spelling per scenario: a k-bit setting that no k-bit load reads is refused, naming its flag."""
    four = train.policy_quant is Quant.NF4 or train.ref_quant is Quant.NF4
    used = {
        "quant_bits": train.finetune is Finetune.QLORA,
        "quant_type": four, "double_quant": four, "quant_compute_dtype": four,
        "prepare_kbit": train.finetune is Finetune.QLORA,
    }
    for key, applies in used.items():
        if not applies and getattr(train, key) != _QUANT_DEFAULTS[key]:
            raise PlanError(f"--{key.replace('_', '-')}", "no k-bit load reads it here (it applies to --finetune "
                                                          "qlora" + ("" if key in ("quant_bits", "prepare_kbit")
                                                                     else " or --ref-quant 4bit") + ")")
    if train.quant_compute_dtype is not None and train.quant_compute_dtype is train.dtype:
        raise PlanError("--quant-compute-dtype", "equals --dtype (the default); leave it unset (one spelling, one key)")
