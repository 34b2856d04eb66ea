"""The planner: per-phase, per-component peak memory of one preference-training step.

Pure arithmetic over a :class:`~refplan.model.ModelSpec` and a :class:`~refplan.spec.TrainSpec`;
imports the standard library only. The peak is the maximum over a timeline of phases, in the
order TRL 1.16 runs them:

  precompute        (precompute strategy only, during trainer construction: policy + reference
                     weights, no optimizer state yet; a no-grad forward per precompute batch)
  policy forward    (activations saved for backward accumulate; the log-prob path at the end)
  reference forward (DPO/KTO run it *after* the policy forward -- dpo_trainer.py _compute_loss --
                     so its transient sits on top of the saved policy activations)
  backward          (saved activations are freed layer by layer while gradients accumulate)
  optimizer step    (gradients + optimizer state + the update's temporaries)

Steady state (step >= 1): the optimizer state exists during the forward and backward, gradients
do not (the Trainer zeroes them with ``set_to_none``).
"""

from __future__ import annotations

from refplan import activations as act
from refplan import terms
from refplan.methods import Method, Strategy, applicable_strategies
from refplan.model import ModelSpec
from refplan.result import Estimate, Phase
from refplan.spec import TrainSpec
from refplan.units import dtype_bytes

PHASES = ("precompute", "policy forward", "reference forward", "backward", "optimizer step")


def _div(x: int, n: int) -> int:
    return -(-x // n)


def _largest_param_tensor(model: ModelSpec, train: TrainSpec) -> int:
    """Elements of the largest trainable tensor (AdamW's single-tensor temporaries scale with it)."""
    if train.finetune.peft:
        names = "all-linear" if train.lora_targets == "all-linear" else tuple(train.lora_targets.split(","))
        lins = model.lora_linears(names)
        return max((l.count * l.lora_rank_mult * train.lora_r * max(l.in_features, l.out_features) for l in lins),
                   default=0)
    cands = [model.vocab_size * model.hidden_size]
    for layer in model.layers:
        cands += [l.in_features * l.out_features * (l.count if not l.lora_target else 1) for l in layer.linears]
    return max(cands)


def optimizer_transient_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """Temporaries of one optimizer step.

    ``adamw`` is the HF Trainer's default ``adamw_torch_fused`` (training_args.py, torch >= 2.8):
    ``torch._fused_adamw_`` updates in place, no temporaries, on CPU and CUDA. ``adamw-8bit`` and
    ``paged-adamw`` (bitsandbytes) update blockwise in place. Adafactor builds the update for one
    tensor at a time (about 2 x the largest tensor). SGD without momentum: none.

    ``adamw-torch`` (``optim="adamw_torch"``): off CUDA the single-tensor path builds
    ``exp_avg_sq.sqrt()`` and its quotient one tensor at a time (2 x the largest tensor); on CUDA
    the foreach path builds ``_foreach_sqrt`` of every state at once (1 x the trainable bytes,
    adam.py ``_multi_tensor_adamw``).
    """
    pbytes = dtype_bytes(terms.trainable_dtype(train))
    if train.optim == "adafactor":
        return 2 * _largest_param_tensor(model, train) * pbytes
    if train.optim == "adamw-torch":
        if train.device == "cuda":
            shards = train.shards if (train.zero >= 1 or train.fsdp) else 1
            return _div(terms.trainable_params(model, train), shards) * pbytes
        return 2 * _largest_param_tensor(model, train) * pbytes
    return 0


def _layer_param_bytes(model: ModelSpec, train: TrainSpec) -> list[int]:
    """Gradient bytes each decoder layer contributes when its backward runs."""
    if train.finetune.peft:
        r = train.lora_r
        names = "all-linear" if train.lora_targets == "all-linear" else tuple(train.lora_targets.split(","))
        return [sum(l.count * l.lora_rank_mult * r * (l.in_features + l.out_features) for l in layer.linears
                    if l.lora_target and (names == "all-linear" or l.name in names)) * 4
                for layer in model.layers]
    b = dtype_bytes(train.dtype)
    return [layer.params * b for layer in model.layers]


def _phase(name: str, parts: dict[str, int], train: TrainSpec) -> Phase:
    parts = {k: v for k, v in parts.items() if v}
    allocated = sum(parts.values())
    if train.device == "cuda":
        parts["cublas workspace"] = terms.CUBLAS_WORKSPACE_BYTES
        allocated += terms.CUBLAS_WORKSPACE_BYTES
        parts["allocator slack"] = allocated * terms.ALLOCATOR_SLACK_NUM // terms.ALLOCATOR_SLACK_DEN
        parts["cuda context"] = terms.CUDA_CONTEXT_BYTES
    return Phase(name, tuple(parts.items()))


def estimate(model: ModelSpec, train: TrainSpec, gpu=None) -> Estimate:
    """Peak memory per device for one training step of ``train`` on ``model``.

    ``gpu`` is an optional :class:`refplan.gpus.GPU`; with it the estimate says whether it fits.
    """
    m, s = train.method, train.strategy
    shards = train.shards
    param_shards = shards if (train.zero == 3 or train.fsdp) else 1
    grad_shards = shards if (train.zero >= 2 or train.fsdp) else 1
    optim_shards = shards if (train.zero >= 1 or train.fsdp) else 1

    policy_w = _div(terms.policy_weight_bytes(model, train), param_shards)
    lora_w = terms.lora_weight_bytes(model, train)
    ref_w = terms.reference_weight_bytes(model, train)
    if s in (Strategy.SEPARATE, Strategy.SYNC) and (train.zero == 3 or train.fsdp):
        ref_w = _div(ref_w, shards)  # TRL prepare_deepspeed / prepare_fsdp shard the reference too
    optim = _div(terms.optimizer_state_bytes(model, train), optim_shards)
    master = _div(terms.master_weight_bytes(model, train), optim_shards)
    grads = _div(terms.gradient_bytes(model, train), grad_shards)
    batch = terms.batch_bytes(train)
    gathered = 0
    if param_shards > 1:
        # ZeRO-3 / FSDP all-gather one layer (and prefetch the next): 2 layers in full
        gathered = 2 * max(l.params for l in model.layers) * dtype_bytes(train.dtype)

    static = {
        "policy weights": policy_w,
        "lora weights": lora_w,
        "reference weights": ref_w,
        "optimizer state": optim,
        "master weights": master,
        "batch": batch,
        "gathered params": gathered,
    }

    rows = train.sequences_per_forward
    layer_saved = act.per_layer_saved_bytes(model, train, rows)
    saved = sum(layer_saved) + act.embedding_saved_bytes(model, train, rows)
    saved += act.final_norm_saved_bytes(model, train, rows)
    saved += act.rope_table_bytes(model, train, rows) + act.mask_bytes(model, train, rows)
    if m.caps.fused_logprob_head:
        head_saved = act.fused_head_saved_bytes(model, train, rows)
        head_fwd = act.fused_head_forward_transient_bytes(model, train, rows)
        head_bwd = act.fused_head_backward_transient_bytes(model, train, rows)
    else:
        head_saved = act.full_logits_saved_bytes(model, train, rows)
        head_fwd = act.full_logits_transient_bytes(model, train, rows)
        head_bwd = act.full_logits_backward_transient_bytes(model, train, rows)

    phases: list[Phase] = []

    if s is Strategy.PRECOMPUTE:
        pre_rows = (train.precompute_batch or train.batch) * (2 if m.caps.concatenates_pair else 1)
        # dpo_trainer.py ~909: without FSDP no reference is loaded -- at construction the policy
        # *is* the reference (PEFT: adapters disabled); under FSDP one is loaded and freed after.
        pre_ref = terms.weight_bytes(model, train.reference_dtype, train.ref_quant) if train.fsdp else 0
        pre_ref = _div(pre_ref, param_shards)
        phases.append(_phase("precompute", {
            "policy weights": policy_w,
            "lora weights": lora_w,
            "reference weights": pre_ref,
            "activations": act.reference_forward_transient_bytes(model, train, pre_rows),
            "autocast weight copies": act.autocast_weight_cache_bytes(model, train, not train.finetune.peft),
        }, train))

    phases.append(_phase("policy forward", {
        **static,
        "activations": saved,
        "logprob path": head_saved + head_fwd,
        # with checkpointing the layers keep no weight copies, but autocast's cache holds them
        # until the forward returns
        "autocast weight copies": (act.autocast_weight_cache_bytes(model, train, not train.finetune.peft)
                                   if train.grad_ckpt else 0),
    }, train))

    if s.caps.reference_forward_per_step:
        ref_rows = rows * (2 if m.caps.kl_forward else 1)  # KTO: reference on the batch and its KL pairs
        phases.append(_phase("reference forward", {
            **static,
            "activations": saved,
            "logprob path": head_saved,
            "reference forward": act.reference_forward_transient_bytes(model, train, ref_rows // (
                2 if m.caps.kl_forward else 1)),
            "autocast weight copies": (act.autocast_weight_cache_bytes(model, train, True, train.reference_dtype)
                                       if s.caps.holds_reference_copy and train.ref_quant == "none" else 0),
        }, train))

    # backward: walk the layers from the top, freeing activations while gradients accumulate
    layer_grads = [_div(b, grad_shards) for b in _layer_param_bytes(model, train)]
    tokens = rows * train.seq
    per_layer_saved = layer_saved
    recompute = act.recompute_bytes(model, train, rows)
    nonlayer_grads = max(grads - sum(layer_grads), 0)
    head_grad = nonlayer_grads if model.lm_head is None else nonlayer_grads // 2
    best_total, best_parts = -1, {}
    start = {
        "activations": saved,
        "logprob path": head_saved + head_bwd,
    }
    candidates = [("head", start, 0)]
    remaining = saved
    acc_grads = head_grad
    grad_flow = tokens * model.hidden_size * act.act_mode(train).a * 2  # incoming + outgoing activation grads
    for idx in range(model.num_layers - 1, -1, -1):
        acc_grads += layer_grads[idx]
        candidates.append((f"layer {idx}", {
            "activations": remaining + recompute,
            "activation grads": grad_flow,
        }, acc_grads))
        remaining -= per_layer_saved[idx]
    if model.lm_head is None and not train.finetune.peft and act.act_mode(train).w == act.FP32:
        # tied embeddings, fp32 weights: autograd sums the head's gradient (returned by TRL's
        # autograd.Function) and embedding_dense_backward's out of place -- three [V, h] fp32
        # tensors at once before the sum is accumulated into .grad
        candidates.append(("embedding", {
            "activations": remaining,
            "activation grads": 2 * model.vocab_size * model.hidden_size * act.FP32,
        }, acc_grads))
    for _, parts, g in candidates:
        total = sum(parts.values()) + g
        if total > best_total:
            best_total, best_parts = total, {**parts, "gradients": g}
    phases.append(_phase("backward", {**static, **best_parts}, train))

    phases.append(_phase("optimizer step", {
        **static,
        "gradients": grads,
        "optimizer transient": optimizer_transient_bytes(model, train),
    }, train))

    est = Estimate(m.value, s.value, train.finetune.value, tuple(phases))
    if gpu is not None:
        est = Estimate(m.value, s.value, train.finetune.value, tuple(phases),
                       fits=est.peak_bytes <= gpu.memory_bytes, gpu=gpu.name, gpu_bytes=gpu.memory_bytes)
    return est


def estimate_matrix(model: ModelSpec, base: TrainSpec, methods=None, strategies=None, gpu=None) -> list[Estimate]:
    """Every applicable method x strategy for ``base``'s fine-tune mode (or the ones named)."""
    from dataclasses import replace

    rows = []
    for meth in methods or list(Method):
        for strat in applicable_strategies(meth, base.finetune):
            if strategies and strat not in strategies:
                continue
            if meth is Method.KTO and base.batch < 2:
                continue
            train = replace(base, method=meth, strategy=strat,
                            ref_quant=base.ref_quant if strat in (Strategy.SEPARATE, Strategy.PRECOMPUTE) else "none")
            rows.append(estimate(model, train, gpu))
    return rows


__all__ = ["estimate", "estimate_matrix", "PHASES"]
