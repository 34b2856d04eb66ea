"""DPO and IPO with ``trl.DPOTrainer`` -- every reference strategy, the way a user writes it.

Paper: Rafailov et al. 2023, "Direct Preference Optimization" (arXiv:2305.18290); IPO: Azar et al.
2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences"
(arXiv:2310.12036), ``loss_type=["ipo"]``.

How each strategy maps onto TRL 1.16's own switches (dpo_trainer.py ``__init__``):

- ``separate``: ``ref_model=None`` with full fine-tuning -> TRL reloads the reference from
  ``config._name_or_path`` in the policy's dtype. With a LoRA policy, or a reference in another
  dtype, we load the reference ourselves and pass ``ref_model``.
- ``unwrap``: ``peft_config=LoraConfig(...)`` -> the reference forward runs with adapters disabled.
- ``ref-adapter``: an already-wrapped ``PeftModel`` -> TRL copies the "default" adapter into a
  frozen "ref" adapter.
- ``precompute``: ``precompute_ref_log_probs=True`` -> reference log-probs are computed during
  trainer construction (by the policy itself before any step when no reference is given) and stored
  as dataset columns.
- ``sync``: ``sync_ref_model=True`` (TR-DPO, Gorbatovski et al. 2024, arXiv:2404.09656) -> a
  separate reference mixed toward the policy every ``ref_model_sync_steps``.
"""

from __future__ import annotations

from trl import DPOConfig, DPOTrainer

from refplan.harness.recipes.common import policy_and_reference, training_args
from refplan.harness.scenario import Scenario
from refplan.methods import Method
from refplan.reference import reference_plan

BETA = 0.1


def build_trainer(sc: Scenario, model_dir, tokenizer, train_dataset, out_dir, callbacks=()) -> DPOTrainer:
    # 1-3. The policy (LoRA wrapped by TRL, or by us for ref-adapter) and, for 'separate' with a
    #      LoRA policy or another dtype, our own reference (common.policy_and_reference).
    model, peft_config, ref_model = policy_and_reference(sc, model_dir)
    train, plan = sc.train, reference_plan(sc.train)

    # 4. The config: explicit precision, checkpointing, and the reference plan's TRL switches.
    args = DPOConfig(
        **training_args(sc, out_dir, max_length=train.seq),
        beta=BETA,
        loss_type=["ipo"] if train.method is Method.IPO else ["sigmoid"],
        precompute_ref_log_probs=plan.trl_precompute_ref_log_probs,
        precompute_ref_batch_size=train.precompute_batch,
        sync_ref_model=plan.trl_sync_ref_model,
        ref_model_sync_steps=1,  # sync after every step, so a burst exercises the mixing
        ref_model_mixup_alpha=0.6,
    )

    return DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks),
    )
