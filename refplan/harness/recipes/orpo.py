"""ORPO with ``trl.experimental.orpo.ORPOTrainer`` -- reference-free.

Paper: Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model"
(arXiv:2403.07691). There is no reference, so the only strategy is ``none``. ORPO materializes the
full ``[2B, S, V]`` logits (orpo_trainer.py ``concatenated_forward``); sequences are
``BOS + prompt + completion + EOS``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # noqa: E402

from refplan.harness.recipes.common import load_policy, lora_config, training_args  # noqa: E402
from refplan.harness.scenario import Scenario  # noqa: E402

BETA = 0.1  # ORPO's lambda on the odds-ratio term


def build_trainer(sc: Scenario, model_dir, tokenizer, train_dataset, out_dir, callbacks=()) -> ORPOTrainer:
    # 1. The policy, in the dtype the scenario names (k-bit under QLoRA; the trainer itself then runs
    #    prepare_model_for_kbit_training on it).
    model = load_policy(model_dir, sc.train)

    # 2. The config. max_length bounds prompt + completion + the BOS/EOS TRL adds.
    args = ORPOConfig(
        **training_args(sc, out_dir, max_length=sc.train.seq),
        remove_unused_columns=False,  # its collator reads the tokenized columns itself
        beta=BETA,
    )

    # 3. The trainer wraps LoRA itself when given a peft_config.
    return ORPOTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(sc.train) if sc.train.finetune.peft else None,
        callbacks=list(callbacks),
    )
