"""LLaMA-Factory YAML: recognised, and refused with the reason.

LLaMA-Factory's ``CustomDPOTrainer`` / ``CustomKTOTrainer`` subclass TRL's trainers but call
``transformers.Trainer.__init__`` directly, so none of TRL 1.16's setup runs, and its step has another
memory shape (LLaMA-Factory ff6d4d12, src/llamafactory/train/trainer_utils.py ~592-636): the logits
are cast to float32 and a full ``log_softmax`` over [2B, L-1, V] feeds a gather -- no chunked
log-prob head as TRL's DPO/KTO use, for every ``pref_loss`` (sigmoid, ipo, orpo, simpo). Its
defaults differ too (``cutoff_len`` 2048, LoRA rank 8 on all linears, trainable parameters upcast to
fp32, reentrant checkpointing on). refplan's formulas are TRL's; estimating this shape would be a
wrong answer, so the file is refused.
"""

from __future__ import annotations

from refplan.configs.run import ImportedRun
from refplan.configs.source import ConfigFile
from refplan.methods import Method


def read(f: ConfigFile, method: Method | None = None, model_type: str | None = None) -> ImportedRun:
    raise f.error("stage", "LLaMA-Factory's own DPO/KTO trainer computes full float32 log-softmax logits, not "
                           "TRL 1.16's chunked head, so refplan's TRL formulas do not apply; translate the run to a "
                           "TRL config or pass the settings as flags")
