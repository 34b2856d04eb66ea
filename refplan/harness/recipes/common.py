"""The few lines every recipe shares: loading a model in an explicit dtype, the LoRA config, the
training arguments common to all TRL configs, and the dataset.

Everything here is what a careful user would write: explicit dtype (TRL's configs default to
``bf16=True`` and ``gradient_checkpointing=True``, both set here from the scenario), no dropout,
logging every step, nothing saved, nothing reported.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from refplan.errors import PlanError
from refplan.harness import tiny
from refplan.harness.scenario import Scenario
from refplan.methods import Method
from refplan.reference import reference_plan
from refplan.settings import ALL_LINEAR, Attn, Device, Dtype, Quant
from refplan.spec import TrainSpec

TORCH_DTYPES = {Dtype.FP32: torch.float32, Dtype.BF16: torch.bfloat16, Dtype.FP16: torch.float16}
LEARNING_RATE = 1e-5  # small: a burst measures memory and speed, not learning


def load_model(model_dir: str | Path, dtype: Dtype, train: TrainSpec, quant: Quant = Quant.NONE):
    """``AutoModelForCausalLM.from_pretrained`` in ``dtype``, with the setup's attention, on its device;
    k-bit through bitsandbytes when ``quant`` says so (:func:`quantization_config`)."""
    from transformers import AutoModelForCausalLM

    kbit = {"quantization_config": quantization_config(train, quant)} if quant is not Quant.NONE else {}
    return AutoModelForCausalLM.from_pretrained(
        str(model_dir),
        dtype=TORCH_DTYPES[dtype],
        attn_implementation="flash_attention_2" if train.attn is Attn.FLASH else train.attn.value,
        device_map={"": int(os.environ.get("LOCAL_RANK", "0"))} if train.device is Device.CUDA else None,
        **kbit,
    )


def quantization_config(train: TrainSpec, quant: Quant):
    """transformers' ``BitsAndBytesConfig`` as TRL's ``get_quantization_config`` builds it (trainer/utils.py):
    4 bits with the setup's quant type, nested quantization and compute dtype; 8 bits with its defaults
    (LLM.int8 threshold 6.0, int8 weights). Either way transformers leaves the LM head (the output
    embedding and anything tied to it) unquantized."""
    from transformers import BitsAndBytesConfig

    if quant is Quant.INT8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=train.quant_type.value,
                              bnb_4bit_use_double_quant=train.double_quant,
                              bnb_4bit_compute_dtype=TORCH_DTYPES[train.kbit_compute_dtype])


def load_policy(model_dir: str | Path, train: TrainSpec):
    """The policy: in its dtype, k-bit under QLoRA, and -- when the setup asks for it -- through PEFT's
    ``prepare_model_for_kbit_training`` (with the run's checkpointing, as TRL's ORPO/CPO call it)."""
    model = load_model(model_dir, train.dtype, train, train.policy_quant)
    if train.prepare_kbit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=train.grad_ckpt)
    return model


def lora_config(train: TrainSpec):
    """LoRA on the setup's target modules (PEFT's "all-linear": every linear layer but the LM head), dropout 0
    for exact parity; DoRA and full trained copies (``modules_to_save``) where the setup asks for them."""
    from peft import LoraConfig

    targets = ALL_LINEAR if train.lora_targets == (ALL_LINEAR,) else list(train.lora_targets)
    return LoraConfig(r=train.lora_r, lora_alpha=2 * train.lora_r, lora_dropout=0.0, target_modules=targets,
                      task_type="CAUSAL_LM", use_dora=train.dora, modules_to_save=list(train.modules_to_save) or None)


def policy_and_reference(sc: Scenario, model_dir: str | Path):
    """The policy, its ``peft_config`` and our own reference, for methods with a reference (DPO, IPO, KTO),
    as the setup's reference plan (:func:`refplan.reference.reference_plan`) says:

    - a PEFT policy is wrapped by TRL from ``peft_config``, unless the plan wraps it before the trainer
      (ref-adapter: TRL then adds a frozen "ref" copy of the adapter). Seed first, as TRL does, so the
      adapters start equal. A QLoRA policy is loaded k-bit (:func:`load_policy`).
    - our own reference only where the plan says TRL would not build it (``own_model``: a PEFT policy, or
      another dtype, or a k-bit load); everything else is TRL's (automatic reload, adapters off, "ref" adapter, precompute).
    """
    from peft import get_peft_model
    from transformers import set_seed

    train = sc.train
    plan = reference_plan(train)
    model = load_policy(model_dir, train)
    peft_config = None
    if train.finetune.peft:
        if plan.wrap_policy_before_trainer:
            set_seed(sc.seed)
            model = get_peft_model(model, lora_config(train))
        else:
            peft_config = lora_config(train)
    ref_model = load_model(model_dir, plan.dtype, train, plan.quant) if plan.own_model else None
    return model, peft_config, ref_model


def training_args(sc: Scenario, out_dir: str | Path, max_length: int | None) -> dict:
    """Keyword arguments every TRL config of the bench gets."""
    train = sc.train
    mixed = set() if train.no_autocast else {train.dtype, train.autocast}
    return dict(
        output_dir=str(out_dir),
        per_device_train_batch_size=train.batch,
        gradient_accumulation_steps=1,
        max_steps=sc.steps,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        optim=train.optim.caps.trainer_name,
        seed=sc.seed,
        data_seed=sc.seed,
        bf16=Dtype.BF16 in mixed,
        fp16=Dtype.FP16 in mixed,
        **checkpointing_kwargs(train.grad_ckpt),
        logging_steps=1,
        logging_strategy="steps",
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=train.device is Device.CPU,
        max_length=max_length,
        disable_dropout=True,
        # CPU ranks talk over gloo; without it accelerate sees one process (a sharded burst's ranks)
        ddp_backend="gloo" if train.gpus > 1 and train.device is Device.CPU else None,
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
    return sc.steps * sc.train.batch


def load_dataset(sc: Scenario, tokenizer):
    """The scenario's training set as a ``datasets.Dataset``.

    ``synthetic``: exact lengths (every sequence is ``seq`` tokens after TRL adds its special tokens).
    A ``.jsonl`` path or a dataset name in the local Hugging Face cache: its first
    ``steps * batch`` rows, which must have prompt/chosen/rejected columns (KTO also accepts
    prompt/completion/label); sequences are truncated to ``seq`` and padded per batch.
    """
    from datasets import Dataset

    unpaired = sc.train.method is Method.KTO
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
