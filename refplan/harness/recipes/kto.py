"""KTO with ``trl.KTOTrainer`` -- every reference strategy, the way a user writes it.

Paper: Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"
(arXiv:2402.01306). The dataset is unpaired (prompt / completion / label); a paired one is unpaired by
TRL. Each step runs up to four forwards (kto_trainer.py ``_compute_loss``): the policy's KL pass on
mismatched pairs (no grad), the policy, and -- unless precomputed -- the reference's KL pass and the
reference. KTO needs a per-device batch of at least 2 (the KL pairs are built inside the batch).

Strategies map onto TRL's switches exactly as in :mod:`refplan.harness.recipes.dpo`.
"""

from __future__ import annotations

from trl import KTOConfig, KTOTrainer

from refplan.harness.recipes.common import policy_and_reference, training_args
from refplan.harness.scenario import Scenario
from refplan.reference import reference_plan

BETA = 0.1


def build_trainer(sc: Scenario, model_dir, tokenizer, train_dataset, out_dir, callbacks=()) -> KTOTrainer:
    # 1-3. The policy, its LoRA config and our own reference where one is needed, as for DPO.
    model, peft_config, ref_model = policy_and_reference(sc, model_dir)
    train, plan = sc.train, reference_plan(sc.train)

    # 4. The config: KTOConfig keeps train_sampling_strategy="sequential" (the KL pairs need it).
    args = KTOConfig(
        **training_args(sc, out_dir, max_length=train.seq),
        beta=BETA,
        loss_type="kto",
        precompute_ref_log_probs=plan.trl_precompute_ref_log_probs,
        precompute_ref_batch_size=train.precompute_batch,
        sync_ref_model=plan.trl_sync_ref_model,
        ref_model_sync_steps=1,
        ref_model_mixup_alpha=0.6,
    )

    return KTOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks),
    )
