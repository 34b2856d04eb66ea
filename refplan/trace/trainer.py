"""The recipe's trainer around models on fake tensors.

The trace engine does not copy TRL's step: it builds the trainer the bench recipe builds
(:mod:`refplan.harness.recipes`) and calls that trainer's own methods on the traced models. TRL's
constructor cannot take the traced model itself -- it would reload a 70B reference from disk, precompute
reference log-probs over a dataset, and PEFT cannot wrap a model that is already fake -- so the trainer
is built the way a user builds it, on a **stand-in**: the harness's offline ``random:micro`` model (2
layers, saved on disk) with the traced setup (method, strategy, fine-tune mode, dtypes, checkpointing,
optimizer, batch), shorter sequences and all-linear LoRA. What the step reads from the trainer comes
from that constructor: the config (beta, loss type, the reference plan's precompute and sync switches,
``disable_dropout``, checkpointing), the accelerator (mixed precision, autocast), and the two things TRL
derives from the model rather than the config -- the fused LM head's outputs (recorded when TRL adds the
head to the stand-in, replayed on the traced models) and the MoE router's auxiliary loss (the stand-in's
config carries the traced model's :data:`TRAINER_CONFIG_KEYS`).

Then the traced models take the stand-in's place (:func:`adopt`). What TRL's constructor and
``Trainer.train`` did to the stand-in's models is done to them here, by name: the frozen "ref" adapter
(:func:`build_models`, from the reference plan), ``enable_input_require_grads`` under PEFT with
checkpointing, ``disable_dropout_in_model``, activation checkpointing with the config's kwargs, the
reference in eval mode through ``accelerator.prepare_model(evaluation_mode=True)``, and
(:func:`prepare_training`) ``create_optimizer`` and ``accelerator.prepare`` of model and optimizer.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from refplan.harness.recipes.common import lora_config
from refplan.reference import ReferencePlan
from refplan.settings import ALL_LINEAR
from refplan.spec import TrainSpec
from refplan.trace.fake import build_meta

STAND_IN_MODEL = "random:micro"
#: the traced model's config fields that TRL's constructors read to configure the step: the MoE router's
#: auxiliary loss (dpo_trainer.py ~826 / kto_trainer.py ~909: on when the config declares
#: ``output_router_logits`` and a non-zero ``router_aux_loss_coef``; ORPO / CPO: when
#: ``output_router_logits`` is true)
TRAINER_CONFIG_KEYS = ("output_router_logits", "router_aux_loss_coef")
#: tokens per stand-in sequence: its dataset is tokenized and (precompute) scored once, at construction
STAND_IN_SEQ = 16


def recipe_trainer(train: TrainSpec, plan: ReferencePlan, hf_config):
    """The recipe's trainer for ``train`` on the stand-in model (carrying ``hf_config``'s
    :data:`TRAINER_CONFIG_KEYS`), and the fused-head calls TRL made on it (``(role, args, kwargs)``, role
    ``"policy"`` or ``"reference"``)."""
    from refplan.harness.burst import RECIPES
    from refplan.harness.scenario import Scenario

    own_dtype = plan.holds_copy and train.ref_dtype not in (None, train.dtype)
    stand_in = replace(train, seq=STAND_IN_SEQ, precompute_batch=train.batch, lora_targets=(ALL_LINEAR,),
                       padded=False, ref_dtype=train.ref_dtype if own_dtype else None)
    sc = Scenario(stand_in, model=STAND_IN_MODEL, steps=1)
    model_dir, tokenizer, dataset = _stand_in_inputs(sc, _stand_in_dir(hf_config))
    recipe = importlib.import_module(RECIPES[train.method])
    with _quiet_construction(), _recorded_fused_heads() as calls, tempfile.TemporaryDirectory() as out_dir:
        trainer = recipe.build_trainer(sc, model_dir, tokenizer, dataset, out_dir)
    roles = {id(base_of(trainer.model)): "policy"}
    if getattr(trainer, "ref_model", None) is not None:
        roles[id(trainer.ref_model)] = "reference"
    if any(id(model) not in roles for model, _, _ in calls):
        raise RuntimeError("trace: TRL added a fused LM head to a model that is neither the policy nor the reference")
    return trainer, [(roles[id(model)], a, kw) for model, a, kw in calls]


@functools.lru_cache(maxsize=64)
def _stand_in_inputs(sc, model_dir: Path):
    """The stand-in's model directory, tokenizer and dataset; TRL's constructor maps the dataset into new
    ones and leaves these as they are, so traces of one setup share them."""
    from refplan.harness.recipes.common import load_dataset, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    with _quiet_construction():
        return model_dir, tokenizer, load_dataset(sc, tokenizer)


def _stand_in_dir(hf_config) -> Path:
    """The stand-in model's directory (built once, offline), or a copy of it whose config also holds the
    traced model's :data:`TRAINER_CONFIG_KEYS`, so that TRL's constructor configures the step from them."""
    from refplan.harness.tiny import resolve_model_dir

    base = resolve_model_dir(STAND_IN_MODEL)
    text = hf_config.get_text_config()
    extra = {k: getattr(text, k) for k in TRAINER_CONFIG_KEYS if hasattr(text, k)}
    if not extra:
        return base
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]
    out = base.with_name(f"{base.name}-{digest}")
    if not (out / "config.json").exists():
        tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
        shutil.copytree(base, tmp)
        config = json.loads((tmp / "config.json").read_text())
        (tmp / "config.json").write_text(json.dumps({**config, **extra}, indent=1))
        if out.exists():  # another process made it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, out)
    return out


def build_models(hf_config, train: TrainSpec, plan: ReferencePlan, attn: str):
    """The policy (LoRA-wrapped, with a frozen "ref" adapter where the plan wraps it before the trainer)
    and the reference copy the plan holds, on the meta device."""
    from peft import get_peft_model

    policy = build_meta(hf_config, train.dtype, attn)
    if train.finetune.peft:
        with torch.device("meta"):
            policy = get_peft_model(policy, lora_config(train))
            if plan.wrap_policy_before_trainer:
                # dpo_trainer.py ~683: an already-wrapped policy gets a frozen copy of its adapter, "ref"
                policy.add_adapter("ref", policy.peft_config["default"])
    ref = build_meta(hf_config, plan.dtype, attn) if plan.holds_copy else None
    return policy, ref


def adopt(trainer, policy, ref, heads) -> None:
    """Put the traced models in the stand-in's place, prepared as the trainer prepared (or will prepare)
    its own. The policy's mixed-precision wrapping waits for :func:`prepare_training`, as in
    ``Trainer.train``, so that a precompute pass runs it unwrapped, as TRL's constructor does."""
    from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model

    args = trainer.args
    _autocast_as_on_cuda(trainer.accelerator)
    peft = hasattr(policy, "peft_config")
    trainer.model = trainer.model_wrapped = policy
    for role, a, kw in heads:
        add_fused_lm_head(base_of(policy) if role == "policy" else ref, *a, **kw)
    if args.disable_dropout:
        disable_dropout_in_model(policy)
        if ref is not None:
            disable_dropout_in_model(ref)
    if _checkpointing(args):
        if peft:
            policy.enable_input_require_grads()  # dpo/kto/orpo trainer __init__ (a no-op for full fine-tuning)
        _enable_checkpointing(policy, args)
    policy.train()
    if ref is not None:
        ref.eval()  # as from_pretrained returns it
        # the model already sits on the (fake) CPU device: no placement (``.to`` cannot swap fake parameters)
        ref = trainer.accelerator.prepare_model(ref, device_placement=False, evaluation_mode=True)
    trainer.ref_model = ref


def prepare_training(trainer):
    """``Trainer.train``'s setup: the optimizer (``create_optimizer``: the configured ``optim`` over the
    trainable parameters) and ``accelerator.prepare`` of model and optimizer (mixed precision wraps the
    forward in autocast with fp32 outputs). Returns the prepared model."""
    accelerator = trainer.accelerator
    model = accelerator.prepare_model(trainer.model, device_placement=False)  # already on the (fake) CPU
    trainer.optimizer = accelerator.prepare_optimizer(trainer.create_optimizer(), device_placement=False)
    trainer.model_wrapped = model
    trainer.current_gradient_accumulation_steps = 1  # set per step by Trainer._run_epoch
    trainer.accelerator.gradient_state._set_sync_gradients(True)
    return model


def base_of(model):
    """The transformers model under a PEFT wrapper (where TRL adds the policy's fused head)."""
    return model.get_base_model() if hasattr(model, "peft_config") else model


def _autocast_as_on_cuda(accelerator) -> None:
    """The trace stands in for a CUDA run: fp16 mixed precision autocasts there, with a GradScaler, while
    accelerate leaves both off on the CPU the stand-in was built on (accelerator.py ~565: ``native_amp``
    and the scaler for fp16 only off the CPU; bf16 autocasts on both). Turn them on as on CUDA, the
    scaler on the (fake) CPU device it runs on."""
    if accelerator.state.mixed_precision == "fp16" and not accelerator.native_amp:
        accelerator.native_amp = True
        accelerator.scaler = torch.amp.GradScaler("cpu")


def _checkpointing(args) -> bool:
    return bool(getattr(args, "activation_checkpointing", None) or getattr(args, "gradient_checkpointing", False))


def _enable_checkpointing(model, args) -> None:
    """As ``Trainer.train`` enables it (transformers 5.2x ``activation_checkpointing_enable``)."""
    kwargs = dict(getattr(args, "activation_checkpointing_kwargs", None) or args.gradient_checkpointing_kwargs or {})
    every_n_layers, offload = kwargs.pop("every_n_layers", 1), kwargs.pop("offload", False)
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs or None,
                                              every_n_layers=every_n_layers, offload=offload)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs or None)


@contextlib.contextmanager
def _recorded_fused_heads():
    """Record TRL's ``add_fused_lm_head`` calls (model, args, kwargs) while a trainer is constructed."""
    import trl.trainer.utils as utils

    original, calls = utils.add_fused_lm_head, []

    def record(model, *a, **kw):
        calls.append((model, a, kw))
        return original(model, *a, **kw)

    modules = [m for name, m in list(sys.modules.items())
               if name.startswith("trl.") and getattr(m, "add_fused_lm_head", None) is original]
    for m in modules:
        m.add_fused_lm_head = record
    try:
        yield calls
    finally:
        for m in modules:
            m.add_fused_lm_head = original


@contextlib.contextmanager
def _quiet_construction():
    """No progress bars from transformers, datasets and TRL while the stand-in is built."""
    from datasets.utils import logging as ds_logging
    from transformers.utils import logging as hf_logging

    hf_bars, ds_bars, tqdm_env = hf_logging.is_progress_bar_enabled(), ds_logging.is_progress_bar_enabled(), \
        os.environ.get("TQDM_DISABLE")
    hf_logging.disable_progress_bar()
    ds_logging.disable_progress_bar()
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if hf_bars:
            hf_logging.enable_progress_bar()
        if ds_bars:
            ds_logging.enable_progress_bar()
        if tqdm_env is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm_env
