"""One reference plan: what the reference *is* for a training setup, derived once from the strategy's
capabilities, and read by the planner, the trace engine and the bench recipes alike.

The plan says what is held (a full frozen copy in some dtype or k-bit, the policy's base with its
adapters disabled, a second frozen adapter, precomputed log-probs, nothing), when it runs (a
forward every step, or a pass before training), and which TRL 1.16 switch produces it:

================  =============================================================================
kind              TRL 1.16 (``DPOTrainer`` / ``KTOTrainer``)
================  =============================================================================
full-copy         ``ref_model=`` given, or reloaded from ``config._name_or_path`` when omitted
                  (``dpo_trainer.py`` ~927); ``sync_ref_model=True`` mixes it toward the policy
adapters-off      ``peft_config=`` (TRL wraps the policy; the reference forward runs under
                  ``disable_adapter()``)
ref-adapter       an already-wrapped ``PeftModel``: TRL copies the trained adapter as a frozen
                  adapter named ``"ref"`` and switches to it for the reference forward
precomputed       ``precompute_ref_log_probs=True`` (+ ``precompute_ref_batch_size``): the policy
                  itself (adapters off under PEFT) runs once over the dataset before training
none              ORPO / CPO (SimPO): no reference at all
================  =============================================================================
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from refplan.methods import Strategy
from refplan.settings import Dtype, Quant, Sharding
from refplan.spec import TrainSpec


class RefKind(str, enum.Enum):
    FULL_COPY = "full-copy"
    ADAPTERS_OFF = "adapters-off"
    REF_ADAPTER = "ref-adapter"
    PRECOMPUTED = "precomputed"
    NONE = "none"


@dataclass(frozen=True)
class ReferencePlan:
    kind: RefKind
    #: dtype of a full copy (None unless ``kind`` is FULL_COPY)
    dtype: Dtype | None = None
    #: k-bit load of a full copy (a precomputing reference under FSDP is loaded in it too)
    quant: Quant = Quant.NONE
    #: TR-DPO: the copy is mixed toward the policy every ``ref_model_sync_steps``
    sync: bool = False
    #: a reference forward runs in every training step
    forward_per_step: bool = False
    #: reference log-probs are computed in a pass of their own before training
    precompute_pass: bool = False
    #: the copy is sharded like the policy's parameters (ZeRO-3 / FSDP prepare it the same way:
    #: TRL ``prepare_deepspeed`` / ``prepare_fsdp``)
    sharded: bool = False
    #: a full copy TRL's automatic reload would not produce (the policy is a PEFT model, or the copy
    #: has another dtype or a k-bit load): the caller loads it and passes ``ref_model=``
    own_model: bool = False

    @property
    def holds_copy(self) -> bool:
        return self.kind is RefKind.FULL_COPY

    # -- the TRL switches ---------------------------------------------------------------------------

    @property
    def trl_precompute_ref_log_probs(self) -> bool:
        return self.precompute_pass

    @property
    def trl_sync_ref_model(self) -> bool:
        return self.sync

    @property
    def wrap_policy_before_trainer(self) -> bool:
        """ref-adapter: the policy is a ``PeftModel`` before TRL sees it, so TRL adds the "ref" adapter."""
        return self.kind is RefKind.REF_ADAPTER


_KIND = {
    Strategy.SEPARATE: RefKind.FULL_COPY,
    Strategy.SYNC: RefKind.FULL_COPY,
    Strategy.UNWRAP: RefKind.ADAPTERS_OFF,
    Strategy.REF_ADAPTER: RefKind.REF_ADAPTER,
    Strategy.PRECOMPUTE: RefKind.PRECOMPUTED,
    Strategy.NONE: RefKind.NONE,
}


def reference_plan(train: TrainSpec) -> ReferencePlan:
    """The reference of ``train``, from its strategy's capabilities and its precision settings."""
    caps = train.strategy.caps
    kind = _KIND[train.strategy]
    full = caps.holds_reference_copy
    return ReferencePlan(
        kind=kind,
        dtype=train.reference_dtype if full else None,
        quant=train.ref_quant if (full or caps.precompute_phase) else Quant.NONE,
        sync=full and caps.full_only,
        forward_per_step=caps.reference_forward_per_step,
        precompute_pass=caps.precompute_phase,
        sharded=full and train.sharding.caps.params,
        own_model=full and not caps.full_only and (
            train.finetune.peft or train.ref_dtype not in (None, train.dtype) or train.ref_quant is not Quant.NONE),
    )


def loads_reference_to_precompute(train: TrainSpec) -> bool:
    """TRL 1.16 ``dpo_trainer.py`` ~909 (``kto_trainer.py`` ~920): without FSDP no reference is loaded to
    precompute -- at construction the policy *is* the reference; under FSDP one is loaded, used and
    freed, unless the policy is a PEFT model (``is_peft_model(self.model)`` comes first: its adapters are
    disabled instead)."""
    return reference_plan(train).precompute_pass and train.sharding is Sharding.FSDP and not train.finetune.peft
