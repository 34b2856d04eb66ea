"""The few lines every recipe shares: loading a model in an explicit dtype, the LoRA config, the
training arguments common to all TRL configs, and the dataset.

Everything here is what a careful user would write: explicit dtype (TRL's configs default to
``bf16=True`` and ``gradient_checkpointing=True``, both set here from the scenario), no dropout,
logging every step, nothing saved, nothing reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from refplan.errors import PlanError
from refplan.harness import tiny
from refplan.harness.scenario import OPTIMS, Scenario

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LEARNING_RATE = 1e-5  # small: a burst measures memory and speed, not learning


def load_model(model_dir: str | Path, dtype: str, sc: Scenario):
    """``AutoModelForCausalLM.from_pretrained`` in ``dtype``, on the scenario's device."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(model_dir),
        dtype=TORCH_DTYPES[dtype],
        attn_implementation=_attn(sc.attn),
        device_map={"": 0} if sc.device == "cuda" else None,
    )


def _attn(attn: str) -> str:
    return {"flash": "flash_attention_2"}.get(attn, attn)


def lora_config(sc: Scenario):
    """LoRA on every linear layer but the LM head (PEFT's "all-linear"), dropout 0 for exact parity."""
    from peft import LoraConfig

    return LoraConfig(r=sc.lora_r, lora_alpha=2 * sc.lora_r, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def policy_and_reference(sc: Scenario, model_dir: str | Path):
    """The policy, its ``peft_config`` and our own reference, for methods with a reference (DPO,
    IPO, KTO): each strategy as TRL's own switch.

    - LoRA: TRL wraps the policy from ``peft_config`` (unwrap, separate, precompute); for
      ref-adapter we wrap it first and TRL adds a frozen "ref" copy of the adapter. Seed first, as
      TRL does, so the adapters start equal.
    - Our own reference only for 'separate' with a LoRA policy or another dtype; everything else is
      TRL's (automatic reload, adapters off, 'ref' adapter, precompute, sync).
    """
    from peft import get_peft_model
    from transformers import set_seed

    from refplan.methods import Finetune, Strategy

    model = load_model(model_dir, sc.dtype, sc)
    peft_config = None
    if sc.finetune is Finetune.LORA:
        if sc.strategy is Strategy.REF_ADAPTER:
            set_seed(sc.seed)
            model = get_peft_model(model, lora_config(sc))
        else:
            peft_config = lora_config(sc)
    ref_model = None
    if sc.strategy is Strategy.SEPARATE and (sc.finetune is Finetune.LORA or sc.ref_dtype is not None):
        ref_model = load_model(model_dir, sc.ref_dtype or sc.dtype, sc)
    return model, peft_config, ref_model


def training_args(sc: Scenario, out_dir: str | Path, max_length: int | None) -> dict:
    """Keyword arguments every TRL config of the bench gets."""
    return dict(
        output_dir=str(out_dir),
        per_device_train_batch_size=sc.batch,
        gradient_accumulation_steps=1,
        max_steps=sc.steps,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        optim=OPTIMS[sc.optim],
        seed=sc.seed,
        data_seed=sc.seed,
        bf16=sc.dtype == "bf16" or sc.autocast == "bf16",
        fp16=sc.dtype == "fp16" or sc.autocast == "fp16",
        **checkpointing_kwargs(sc.grad_ckpt),
        logging_steps=1,
        logging_strategy="steps",
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=sc.device == "cpu",
        max_length=max_length,
        disable_dropout=True,
    )


def checkpointing_kwargs(enabled: bool) -> dict:
    """Activation checkpointing on or off, explicitly (TRL's configs default it to True).

    transformers >= 5.2x renamed ``gradient_checkpointing`` to ``activation_checkpointing`` and keeps
    the old name as a mirror; older 5.x only has the old name.
    """
    from transformers import TrainingArguments

    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__:
        return {"activation_checkpointing": enabled}
    return {"gradient_checkpointing": enabled}


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------

PAIR_COLUMNS = ("prompt", "chosen", "rejected")
UNPAIRED_COLUMNS = ("prompt", "completion", "label")


def rows_needed(sc: Scenario) -> int:
    return sc.steps * sc.batch


def load_dataset(sc: Scenario, tokenizer):
    """The scenario's training set as a ``datasets.Dataset``.

    ``synthetic``: exact lengths (every sequence is ``seq`` tokens after TRL adds its special tokens).
    A ``.jsonl`` path or a dataset name in the local Hugging Face cache: its first
    ``steps * batch`` rows, which must have prompt/chosen/rejected columns (KTO also accepts
    prompt/completion/label); sequences are truncated to ``seq`` and padded per batch.
    """
    from datasets import Dataset

    unpaired = sc.method.value == "kto"
    n = rows_needed(sc)
    if sc.dataset == "synthetic":
        make = tiny.synthetic_unpaired if unpaired else tiny.synthetic_pairs
        return Dataset.from_list(make(tokenizer, n, sc.prompt_len, sc.completion_len, seed=sc.seed))
    rows = _read_rows(sc.dataset, n)
    if not rows:
        raise PlanError("--dataset", f"{sc.dataset}: no rows")
    cols = set(rows[0])
    ok = set(PAIR_COLUMNS) <= cols or (unpaired and set(UNPAIRED_COLUMNS) <= cols)
    if not ok:
        need = "prompt/chosen/rejected" + (" or prompt/completion/label" if unpaired else "")
        raise PlanError("--dataset", f"{sc.dataset}: needs columns {need}; has {', '.join(sorted(cols))}")
    keep = PAIR_COLUMNS if set(PAIR_COLUMNS) <= cols else UNPAIRED_COLUMNS
    rows = [{k: r[k] for k in keep} for r in rows]
    if len(rows) < n:
        rows = (rows * (n // len(rows) + 1))[:n]
    return Dataset.from_list(rows)


def _read_rows(name: str, n: int) -> list[dict]:
    path = Path(name).expanduser()
    if path.suffix in (".jsonl", ".json") or path.exists():
        if not path.is_file():
            raise PlanError("--dataset", f"{name}: no such file")
        rows = []
        with open(path) as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise PlanError("--dataset", f"{name}:{i + 1}: not JSON ({e.msg})") from None
                if len(rows) >= n:
                    break
        return rows
    try:
        import datasets

        ds = datasets.load_dataset(name, split="train", download_mode="reuse_cache_if_exists")
    except Exception as e:
        raise PlanError("--dataset", f"{name!r} is neither a .jsonl file nor a dataset in the local cache "
                                     f"({type(e).__name__})") from None
    return [ds[i] for i in range(min(n, len(ds)))]


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
