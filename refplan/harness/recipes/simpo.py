"""SimPO with ``trl.experimental.cpo.CPOTrainer(loss_type="simpo", cpo_alpha=0)`` -- reference-free.

Paper: Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward"
(arXiv:2405.14734). ``cpo_alpha=0`` drops CPO's behaviour-cloning NLL term, which leaves SimPO's
length-normalized margin loss with target margin ``simpo_gamma``. CPO materializes the full
``[2B, S, V]`` logits (cpo_trainer.py ``concatenated_forward``); sequences are
``BOS + prompt + completion + EOS``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl.experimental.cpo import CPOConfig, CPOTrainer  # noqa: E402

from refplan.harness.recipes.common import load_policy, lora_config, training_args  # noqa: E402
from refplan.harness.scenario import Scenario  # noqa: E402

BETA = 2.0  # SimPO's beta (the paper's range is 2-10)
GAMMA = 0.5


def build_trainer(sc: Scenario, model_dir, tokenizer, train_dataset, out_dir, callbacks=()) -> CPOTrainer:
    # 1. The policy, in the dtype the scenario names (k-bit under QLoRA; the trainer itself then runs
    #    prepare_model_for_kbit_training on it).
    model = load_policy(model_dir, sc.train)

    # 2. The config: SimPO is CPO's "simpo" loss without the NLL term.
    args = CPOConfig(
        **training_args(sc, out_dir, max_length=sc.train.seq),
        remove_unused_columns=False,  # its collator reads the tokenized columns itself
        loss_type="simpo",
        cpo_alpha=0.0,
        beta=BETA,
        simpo_gamma=GAMMA,
    )

    # 3. The trainer wraps LoRA itself when given a peft_config.
    return CPOTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(sc.train) if sc.train.finetune.peft else None,
        callbacks=list(callbacks),
    )
