"""Methods, strategies and fine-tune modes as enums with capabilities.

Every impossible combination is refused in :func:`check_combination`, and nowhere else.
Capabilities describe TRL 1.16 as installed (see docstrings for the code paths).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from refplan.errors import PlanError


@dataclass(frozen=True)
class MethodCaps:
    needs_reference: bool
    #: chosen and rejected are concatenated into one [2B, S] forward (DPO: dpo_trainer
    #: ``concatenated_forward``; ORPO/CPO: ``concatenated_inputs``).
    concatenates_pair: bool
    #: DPO and KTO call the model with ``fused_lm_head=True``: TRL's ChunkedLogProbFunction
    #: computes per-token log-probs in vocabulary tiles and never builds [N, S, V] logits.
    fused_logprob_head: bool
    #: KTO runs an extra KL forward on mismatched (prompt, completion) pairs each step.
    kl_forward: bool
    #: tokens TRL adds around prompt + completion: DPO/KTO append EOS (+1); ORPO/CPO add BOS and
    #: EOS (+2).
    added_tokens: int


class Method(str, enum.Enum):
    DPO = "dpo"
    IPO = "ipo"
    KTO = "kto"
    ORPO = "orpo"
    SIMPO = "simpo"

    @property
    def caps(self) -> MethodCaps:
        return _METHOD_CAPS[self]


_METHOD_CAPS = {
    # trl.DPOTrainer (IPO: loss_type=["ipo"]), trl.KTOTrainer, trl.experimental.orpo.ORPOTrainer,
    # trl.experimental.cpo.CPOTrainer(loss_type="simpo")
    Method.DPO: MethodCaps(True, True, True, False, 1),
    Method.IPO: MethodCaps(True, True, True, False, 1),
    Method.KTO: MethodCaps(True, False, True, True, 1),
    Method.ORPO: MethodCaps(False, True, False, False, 2),
    Method.SIMPO: MethodCaps(False, True, False, False, 2),
}


class Finetune(str, enum.Enum):
    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"

    @property
    def peft(self) -> bool:
        return self is not Finetune.FULL


@dataclass(frozen=True)
class StrategyCaps:
    #: a full frozen copy of the weights is held during training (separate, sync).
    holds_reference_copy: bool
    #: the reference needs a PEFT policy (unwrap: adapters disabled; ref-adapter: a second adapter).
    needs_peft: bool
    #: only for full fine-tuning (TR-DPO's weight mixing; TRL refuses sync_ref_model with PEFT).
    full_only: bool
    #: a reference forward runs in each training step.
    reference_forward_per_step: bool
    #: reference log-probs computed in a phase of their own before training.
    precompute_phase: bool
    #: what the strategy costs a run beyond its memory (``refplan fit``'s recommendation says it)
    cost: str


class Strategy(str, enum.Enum):
    SEPARATE = "separate"
    UNWRAP = "unwrap"
    REF_ADAPTER = "ref-adapter"
    PRECOMPUTE = "precompute"
    SYNC = "sync"
    NONE = "none"

    @property
    def caps(self) -> StrategyCaps:
        return _STRATEGY_CAPS[self]


_STRATEGY_CAPS = {
    Strategy.SEPARATE: StrategyCaps(True, False, False, True, False,
                                    "a reference forward every step and a full frozen copy"),
    Strategy.UNWRAP: StrategyCaps(False, True, False, True, False,
                                  "a reference forward every step (the base with adapters off), no extra memory"),
    Strategy.REF_ADAPTER: StrategyCaps(False, True, False, True, False,
                                       "a reference forward every step and a second frozen adapter"),
    Strategy.PRECOMPUTE: StrategyCaps(False, False, False, False, True,
                                      "one no-grad pass over the dataset before training, no reference in the step"),
    Strategy.SYNC: StrategyCaps(True, False, True, True, False,
                                "a full copy, a reference forward every step and the TR-DPO mixing"),
    Strategy.NONE: StrategyCaps(False, False, False, False, False, "no reference at all"),
}


def check_combination(method: Method, strategy: Strategy, finetune: Finetune,
                      ref_quant: str = "none") -> None:
    """Refuse an impossible method x strategy x fine-tune combination with a message naming the flag.

    Sources: TRL 1.16 dpo_trainer.py / kto_trainer.py (sync_ref_model is refused with PEFT and with
    precompute_ref_log_probs; a 'ref' adapter or disabled adapters need a PeftModel), ORPO/CPO
    trainers (no reference model at all).
    """
    caps, scaps = method.caps, strategy.caps
    if not caps.needs_reference and strategy is not Strategy.NONE:
        raise PlanError("--strategy", f"{method.value} is reference-free; only strategy 'none' applies "
                                      f"(got {strategy.value!r})")
    if caps.needs_reference and strategy is Strategy.NONE:
        raise PlanError("--strategy", f"{method.value} needs a reference; strategy 'none' is for "
                                      "reference-free methods (orpo, simpo)")
    if scaps.needs_peft and not finetune.peft:
        raise PlanError("--strategy", f"{strategy.value!r} needs a LoRA/QLoRA policy; use --finetune lora "
                                      "or qlora, or strategy 'separate'/'precompute'")
    if scaps.full_only and finetune.peft:
        raise PlanError("--strategy", "sync (TR-DPO) works with full fine-tuning only; TRL refuses "
                                      "sync_ref_model with PEFT")
    if ref_quant != "none" and strategy not in (Strategy.SEPARATE, Strategy.PRECOMPUTE):
        raise PlanError("--ref-quant", f"a quantized reference is a separate copy; it does not apply to "
                                       f"strategy {strategy.value!r}")


def applicable_strategies(method: Method, finetune: Finetune) -> list[Strategy]:
    """Every strategy that :func:`check_combination` accepts for this method and fine-tune mode."""
    out = []
    for s in Strategy:
        try:
            check_combination(method, s, finetune)
        except PlanError:
            continue
        out.append(s)
    return out


def parse_enum(enum_cls, value: str, flag: str):
    """Parse one enum value from a CLI string, or raise PlanError naming the flag."""
    try:
        return enum_cls(value.strip().lower())
    except ValueError:
        choices = ", ".join(m.value for m in enum_cls)
        raise PlanError(flag, f"unknown value {value!r}; choose from {choices}") from None
