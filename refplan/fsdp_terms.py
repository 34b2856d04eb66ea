"""Per-rank terms of FSDP2 (``fully_shard``, FULL_SHARD) as accelerate 1.15 and TRL 1.16 apply it.

Pure arithmetic, standard library only. What is gathered when, from the code:

- The policy (accelerate ``utils/fsdp_utils.py`` ``fsdp2_prepare_model``): one FSDP unit per decoder layer
  (``TRANSFORMER_BASED_WRAP``, ``reshard_after_forward=True``), the input embedding as a unit of its own,
  a *tail* unit ``[final_norm, lm_head]`` (with tied embeddings ``[final_norm, embed, lm_head]``) with
  ``reshard_after_forward=False`` -- it stays gathered from its forward to its backward -- and the root.
- A separate reference (TRL ``models/utils.py`` ``prepare_fsdp``): ``fully_shard(ref_model)`` on the whole
  model, no auto-wrap: ONE unit, so its forward gathers the whole reference.
- A unit's all-gather (torch ``_fsdp_collectives.py`` ``foreach_all_gather``) writes a flat output
  buffer of the whole unit, and ``foreach_all_gather_copy_out`` copies it into per-parameter buffers
  (``FSDPParam.all_gather_outputs``) the unsharded parameters view. In forward the flat buffer is not
  freed after the copy-out (``_fsdp_param_group.py`` ``wait_for_unshard``: "Defer free to allow for
  overlap of this copy-out with next all-gather", kept in ``comm_ctx.all_gather_state``) but at the next
  unit's ``wait_for_unshard`` or the root's post-forward (``_fsdp_state.py`` ``_post_forward``). So a
  forward unit costs twice its bytes while it runs; in backward the flat buffer is freed at once.
- TRL precompute under FSDP (``dpo_trainer.py`` ~909 / ``kto_trainer.py`` ~920): the reference is loaded
  and prepared with ``prepare_fsdp`` during trainer construction, while the policy is not sharded yet
  (accelerate prepares it in ``train``).

Padding of each parameter's dim 0 to a multiple of the world size (``_fsdp_param.py``
``_init_sharded_param``) is not counted: under one row per parameter per rank.
"""

from __future__ import annotations

from refplan import terms
from refplan.model import ModelSpec
from refplan.settings import Device, Sharding
from refplan.spec import TrainSpec
from refplan.units import dtype_bytes


def enabled(train: TrainSpec) -> bool:
    return train.sharding is Sharding.FSDP


def _div(x: int, n: int) -> int:
    return -(-x // n)


def tail_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """The policy's tail unit gathered, bytes: final norm and LM head (with tied embeddings the shared
    embedding, accelerate puts ``input_embed`` in the tail group), in the policy's dtype."""
    norm = model.final_norm.params if model.final_norm is not None else 0
    head = model.lm_head.params if model.lm_head is not None else model.embed_params
    return (norm + head) * dtype_bytes(train.dtype)


def layer_unit_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """The largest decoder-layer unit gathered, bytes: its weights in the policy's dtype, plus its LoRA
    adapters (PEFT puts them inside the layer, so they are sharded and gathered with it)."""
    return max((_unit_bytes(model, train, i) for i in range(len(model.layers))), default=0)


def lora_shard_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """The adapters this rank holds: their shard (they live in the layer units)."""
    return _div(terms.lora_weight_bytes(model, train), train.shards)


def reference_gathered_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """A separate reference's forward, bytes: its one unit gathered whole, twice (the unsharded
    parameters and the flat all-gather output deferred to the root's post-forward)."""
    return 2 * terms.reference_weight_bytes(model, train)


def policy_forward_gathered_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """At the policy forward's log-prob path: the tail unit gathered and its flat all-gather output
    (freed at the root's post-forward, after TRL's fused head); the layers are resharded."""
    return 2 * tail_bytes(model, train)


def policy_held_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """Between the policy forward and its backward (the reference forward): the tail unit, not resharded
    after forward."""
    return tail_bytes(model, train)


def forward_layer_gathered_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """A forward at a decoder layer's copy-out, bytes: its unsharded parameters, its flat all-gather
    output, and the previous unit's deferred flat output -- ``wait_for_unshard`` drops
    ``comm_ctx.all_gather_state`` but its local ``prev_all_gather_state`` keeps it alive until the
    copy-out returns: three units (measured on the adapters-off reference forward: two 1-D flat buffers
    and the layer's parameters live at once)."""
    return 3 * layer_unit_bytes(model, train)


def _unit_bytes(model: ModelSpec, train: TrainSpec, idx: int) -> int:
    """Decoder layer ``idx``'s unit gathered, bytes (its weights, and its LoRA adapters under PEFT)."""
    layer = model.layers[idx]
    b = layer.params * dtype_bytes(train.dtype)
    if train.finetune.peft:
        b += sum(l.count * l.lora_rank_mult * train.lora_r * (l.in_features + l.out_features)
                 for l in layer.linears if model.wraps(l, train.lora_targets)) * dtype_bytes(terms.adapter_dtype(train))
    return b


def _embed_unit_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """The input embedding's own unit (untied); tied, it sits in the tail."""
    return 0 if model.lm_head is None else model.embed_params * dtype_bytes(train.dtype)


def backward_layer_gathered_bytes(model: ModelSpec, train: TrainSpec, idx: int, unit_grad_bytes: list[int]) -> int:
    """While decoder layer ``idx``'s backward runs, bytes FSDP2 holds beyond the sharded state:

    - the layer's unit gathered (``FSDPParamGroup.pre_backward`` unshards it; in backward the flat
      all-gather output is freed right after the copy-out);
    - the next unit's all-gather already issued (``_fsdp_state.py`` ``_pre_backward`` ->
      ``_backward_prefetch``: the layer below, or the input embedding below layer 0), its flat
      output alive until that unit's ``wait_for_unshard``;
    - the reduce-scatter input of the unit above (``_fsdp_param_group.py`` ``post_backward``: kept in
      ``comm_ctx.reduce_scatter_states``, at most ``reduce_scatter_max_input_buffers`` = 1, freed at
      the next unit's ``post_backward``): that unit's gradients, unsharded and padded (the tail's for
      the top layer).

    ``unit_grad_bytes``: each layer's gradients unsharded (what its reduce-scatter input holds). The
    layer's own gradients are unsharded until its ``post_backward`` too; the caller counts them."""
    top = len(model.layers) - 1
    prefetch = _unit_bytes(model, train, idx - 1) if idx > 0 else _embed_unit_bytes(model, train)
    in_flight = unit_grad_bytes[idx + 1] if idx < top else (0 if train.finetune.peft else tail_bytes(model, train))
    return _unit_bytes(model, train, idx) + prefetch + in_flight


def backward_head_gathered_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """The head's backward: the tail unit (still gathered since its forward) and the top layer's
    all-gather, prefetched."""
    return tail_bytes(model, train) + _unit_bytes(model, train, len(model.layers) - 1)


def backward_embedding_gathered_bytes(model: ModelSpec, train: TrainSpec, unit_grad_bytes: list[int]) -> int:
    """The embedding's backward: its unit gathered and layer 0's reduce-scatter input in flight."""
    return _embed_unit_bytes(model, train) + (unit_grad_bytes[0] if unit_grad_bytes else 0)


def prepare_original_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """While accelerate shards the policy (``fsdp2_prepare_model``, in ``Trainer.train``), bytes of the
    unsharded policy still alive: it takes ``original_sd = model.state_dict()`` before the
    ``fully_shard`` calls and holds it to the end, so every original parameter outlives its shard.
    On CPU ranks that is the whole policy (and its adapters) beside the shards. On CUDA the policy waits
    in host memory (transformers ``trainer.py`` postpones placing an FSDP model) and ``fully_shard``
    moves one unit at a time before sharding it: the largest unit, in full (not measured here)."""
    if train.device is Device.CPU:
        return terms.policy_weight_bytes(model, train) + terms.lora_weight_bytes(model, train)
    return layer_unit_bytes(model, train)


def precompute_policy_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """The policy during TRL's precompute pass under FSDP, bytes: not sharded yet (accelerate prepares it
    in ``train``). On CPU ranks it is all there; on CUDA the Trainer has not placed it on the device
    (transformers ``trainer.py``: "Postpone switching model to cuda when ... FSDP"), so none of it.
    Its adapters are the phase's own component."""
    return terms.policy_weight_bytes(model, train) if train.device is Device.CPU else 0
