"""The backward's walk: its moments from the head down through every decoder layer, the k-bit and
sharded engines' own terms on them, and the largest of them (:func:`_backward`). Part of the planner
(:mod:`refplan.planner`, whose ``_Step`` it reads); pure arithmetic."""

from __future__ import annotations

from typing import TYPE_CHECKING

from refplan import activations as act
from refplan import backward, fsdp_terms, sharding_terms, terms
from refplan import forward_tensors as fwd
from refplan import quant as quant_terms
from refplan.model import ModelSpec, Role
from refplan.result import Phase
from refplan.settings import Quant, Sharding
from refplan.spec import TrainSpec
from refplan.units import dtype_bytes

if TYPE_CHECKING:
    from refplan.planner import _Step


def _div(x: int, n: int) -> int:
    return -(-x // n)


def _layer_param_bytes(model: ModelSpec, train: TrainSpec) -> list[int]:
    """Gradient bytes each decoder layer contributes when its backward runs."""
    if train.finetune.peft:
        r = train.lora_r
        b = dtype_bytes(terms.adapter_dtype(train))
        return [sum(l.count * l.lora_rank_mult * r * (l.in_features + l.out_features) for l in layer.linears
                    if model.wraps(l, train.lora_targets)) * b
                for layer in model.layers]
    b = dtype_bytes(train.dtype)
    return [layer.params * b for layer in model.layers]


def _backward_moments(step: _Step, candidates_only: bool = False) -> list[tuple[str, dict]]:
    """The moments of the backward, in order: the head's backward, then each decoder layer from the
    top, then -- with tied fp32 embeddings -- the out-of-place sum of the embedding's two gradients.
    Each: (label, the components beyond the static ones).

    A decoder layer's moments are :func:`refplan.backward.layer_moments` (with checkpointing its
    recompute, then its MLP's and its norms' backward), each over its saved tensors (recomputed,
    with checkpointing), the gradients of the layers above and the residual stream's gradient,
    then its end: its saved tensors freed, all its gradients made. The final norm's saved tensors
    are freed before the top layer's backward starts.

    ``candidates_only``: of layers alike (same moments, saved tensors and gradients) only the one
    whose moments are largest -- they differ by a layer's remaining activations plus accumulated
    gradients alone -- which keeps the maximum, and the first of ties, at a fraction of the work."""
    model, train = step.model, step.train
    grad_shards = train.shards_of("grads")
    kept = 0 if train.offload.optimizer_on_cpu else 1
    layer_grads = [kept * _div(b, grad_shards) for b in _layer_param_bytes(model, train)]
    # FSDP2: a layer's gradients stay unsharded until its post_backward reduce-scatters them
    fsdp = fsdp_terms.enabled(train)
    unit_grads = [kept * b for b in _layer_param_bytes(model, train)] if fsdp else layer_grads
    own_shards = 1 if fsdp else grad_shards
    nonlayer_grads = max(step.gradient_bytes - sum(layer_grads), 0)
    head_grad = nonlayer_grads if model.lm_head is None else nonlayer_grads // 2
    head_saved, _, head_bwd = step.head
    moments = [("head", {"activations": step.saved, "logprob path": head_saved + head_bwd, "gradients": 0,
                         **({"gathered params": fsdp_terms.backward_head_gathered_bytes(model, train)} if fsdp else {})})]
    tokens = step.rows * train.seq
    residual_grad = tokens * model.hidden_size * act.act_mode(train).w
    # each layer from the top: (index, kind, activations and gradients before its backward); the
    # final norm's backward runs between the head's and the top layer's, so its saved tensors go
    remaining = step.saved - fwd.final_norm_saved_bytes(model, train, step.rows)
    acc_grads = head_grad
    dequant = [_layer_dequant_bytes(step, layer) for layer in model.layers]
    walk = []
    for idx in range(model.num_layers - 1, -1, -1):
        kind = (model.layer_groups[idx], act.attention_masked(model, train, idx))
        walk.append((idx, kind, remaining, acc_grads))
        acc_grads += layer_grads[idx]
        remaining -= step.layer_saved[idx]
    chosen = _candidates(step, walk, layer_grads) if candidates_only else None
    memo: dict = {}  # layers of one kind share their moments: (name, activations, activation grads, gradients)
    for idx, kind, before, grads in walk:
        if chosen is not None and idx not in chosen:
            continue
        gathered = {"gathered params": fsdp_terms.backward_layer_gathered_bytes(model, train, idx, unit_grads)} if fsdp else {}
        if kind not in memo:
            recomputed = act.recompute_saved_bytes(model, train, step.rows, idx) if train.grad_ckpt else 0
            memo[kind] = [(mom.name, recomputed - mom.copies_freed + tokens * (mom.forward_locals - mom.saved_freed),
                           residual_grad + tokens * mom.act_grads, kept * _div(mom.weight_grads, own_shards))
                          for mom in backward.layer_moments(model, model.layers[idx], train)]
        for name, activations, activation_grads, gradients in memo[kind]:
            parts = {"activations": before + activations, "activation grads": activation_grads,
                     "gradients": grads + gradients, **gathered}
            if name == "down" and dequant[idx] is not None:
                # the k-bit down projection's input gradient: its weight dequantized (and cast) before the
                # matmul, which then writes the input gradient beside the compute-dtype copy
                (w_before, w_during), out_grad = dequant[idx]
                moments.append((f"layer {idx} down k-bit", {**parts, "activation grads": activation_grads - out_grad,
                                                             "k-bit dequant": w_before}))
                parts["k-bit dequant"] = w_during
            moments.append((f"layer {idx} {name}", parts))
        # its end: its saved tensors freed, its gradients made, the residual gradient and the one
        # it returns
        moments.append((f"layer {idx}", {"activations": before - step.layer_saved[idx],
                                         "activation grads": 2 * residual_grad,
                                         "gradients": grads + unit_grads[idx], **gathered}))
    moments += _embedding_moments(step, remaining, acc_grads, residual_grad, unit_grads)
    if train.sharding is Sharding.ZERO2:
        moments = sharding_terms.zero2_backward(moments, step.gradient_bytes,
                                                sharding_terms.reduce_bucket_bytes(model, train))
    elif train.sharding is Sharding.ZERO3:
        if step.zero3_policy_runs_reference:
            # the weights gathered for the backward stay until it ends: from the head down to this layer
            moments = [(label, {**parts, "gathered params": _unreleased(step, label)}) for label, parts in moments]
        elif step.zero3_kl_trace:
            # an invalid trace: one module's weights at a time (the head's, then each layer's)
            moments = [(label, {**parts, "gathered params": sharding_terms.zero3_kl_backward_gathered_bytes(
                model, train, label)}) for label, parts in moments]
        inflight = 0 if train.offload.optimizer_on_cpu else sharding_terms.zero3_inflight_gradient_bytes(model, train)
        moments = sharding_terms.zero3_backward(moments, inflight)
    return moments


def _candidates(step: _Step, walk: list, layer_grads: list[int]) -> set[int]:
    """Of layers alike (same moments, saved tensors and gradients), the one whose moments are largest."""
    best: dict = {}
    for idx, kind, before, grads in walk:
        alike = (kind, step.layer_saved[idx], layer_grads[idx])
        if alike not in best or before + grads > best[alike][0]:
            best[alike] = (before + grads, idx)
    return {idx for _, idx in best.values()}


def _embedding_moments(step: _Step, remaining: int, acc_grads: int, residual_grad: int,
                       unit_grads: list[int]) -> list[tuple[str, dict]]:
    """The embedding's backward, after every layer's: with tied fp32 embeddings the out-of-place sum of its
    two gradients; with a trainable embedding its own gradient made last; nothing under PEFT."""
    model, train = step.model, step.train
    m = act.act_mode(train)
    if model.lm_head is None and not train.finetune.peft and (m.w == act.FP32 or not m.autocast):
        # tied embeddings, fp32 weights (or 16-bit weights without autocast): autograd sums the head's
        # gradient (returned by TRL's autograd.Function) and embedding_dense_backward's out of place --
        # three [V, h] tensors in the weights' dtype at once before the sum is accumulated into .grad
        # (16-bit: CPU trace of a SimPO bf16 --autocast none burst, peak at the embedding's add)
        return [("embedding", {"activations": remaining,
                               "activation grads": 2 * model.vocab_size * model.token_dim * m.w,
                               "gradients": acc_grads})]
    if not train.finetune.peft:
        # a trainable embedding's backward: every gradient made, its own last, while the embedding
        # output's gradient is still alive
        gathered = ({"gathered params": fsdp_terms.backward_embedding_gathered_bytes(model, train, unit_grads)}
                    if fsdp_terms.enabled(train) else {})
        return [("embedding", {"activations": remaining, "activation grads": residual_grad,
                               "gradients": step.gradient_bytes, **gathered})]
    return []


def train_zero2(train: TrainSpec) -> bool:
    return train.sharding is Sharding.ZERO2


def _layer_dequant_bytes(step: _Step, layer) -> tuple[tuple[int, int], int] | None:
    """A QLoRA layer's down projection in the backward: its frozen k-bit weight dequantized for the input
    gradient, before and during the matmul (:func:`refplan.quant.input_grad_weight_bytes`), and the input
    gradient that matmul writes (tokens x its in_features, compute dtype). The down projection is the
    first k-bit linear the layer's backward reaches and the one whose moment (``down`` in
    :func:`refplan.backward.layer_moments`) holds the layer's saved tensors; None for a layer without one
    (routed experts stay unquantized), for a policy that is not k-bit, and after bitsandbytes' CPU repack
    (the repacked kernel passes no gradient back: ``terms.policy_repacked_on_cpu``)."""
    model, train = step.model, step.train
    if train.policy_quant is Quant.NONE or terms.policy_repacked_on_cpu(model, train) or not backward.dense_mlp(layer):
        return None
    down = layer.first(Role.MLP_DOWN)
    weight = quant_terms.input_grad_weight_bytes(down, train.policy_quant, train.dtype, train.kbit_compute_dtype)
    return weight, step.rows * train.seq * down.in_features * act.act_mode(train).a


def _unreleased(step: _Step, label: str) -> int:
    """ZeRO-3, the reference forward through the policy: the weights its backward gathered by the moment
    ``label`` (``head``, ``layer N`` at its end, ``layer N <moment>`` inside it), none released yet
    (:func:`refplan.sharding_terms.zero3_unreleased_backward_bytes`)."""
    words = label.split()
    if words[0] != "layer":
        return sharding_terms.zero3_unreleased_backward_bytes(step.model, step.train, step.model.num_layers)
    moment = " ".join(words[2:])
    return sharding_terms.zero3_unreleased_backward_bytes(step.model, step.train, int(words[1]),
                                                          mlp_only=moment in ("mlp", "mlp norm"),
                                                          down_only=moment.startswith("down"))


def _backward(step: _Step) -> Phase:
    """The backward's peak: the largest of its moments (the first one on ties)."""
    from refplan.planner import _fsdp_gathered, _phase  # the planner imports this module

    best_total, best_parts = -1, {}
    # ZeRO-2/3 rewrite the moments' gradients after the walk, and FSDP2's prefetched and in-flight buffers
    # differ by layer, so the walk's candidates do not hold there
    whole = step.train.sharding in (Sharding.ZERO2, Sharding.ZERO3, Sharding.FSDP)
    for _, parts in _backward_moments(step, candidates_only=not whole):
        total = sum(parts.values())
        if total > best_total:
            best_total, best_parts = total, parts
    return _phase("backward", {**step.static, **_fsdp_gathered(step, "backward"), **best_parts}, step.train)


