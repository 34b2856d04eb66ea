"""Per-rank terms of DeepSpeed ZeRO that the sharded bursts measured (refplan/suites/sharded.toml).

Pure arithmetic, standard library only. Each term cites the DeepSpeed 0.19 code that allocates it;
bucket sizes are transformers' values for DeepSpeed's ``"auto"`` keys (integrations/deepspeed.py
``HfTrainerDeepSpeedConfig.trainer_config_finalize``: ``reduce_bucket_size`` = hidden * hidden), the
ones refplan's bench writes (:func:`refplan.harness.launch.hf_auto_buckets`).

ZeRO-3 bucket and threshold keys are transformers' ``"auto"`` values too (``stage3_param_persistence_threshold``
= 10 * hidden, ``stage3_prefetch_bucket_size`` = 0.9 * hidden^2). TRL's reference engine gets the same ones:
trl/models/utils.py ``prepare_deepspeed`` writes its own values under dotted top-level keys
(``"zero_optimization.reduce_bucket_size"``), which DeepSpeed does not read, so the user's
``zero_optimization`` block applies to the reference as it is.

Measured on CPU ranks (gloo, 2 ranks, "wide" preset, fp32): ZeRO-2 and the ZeRO-3 steady state follow
these terms; FSDP keeps the planner's earlier terms (reports/validate-sharded/README.md).
"""

from __future__ import annotations

from refplan import terms
from refplan.model import Layer, ModelSpec
from refplan.settings import Sharding
from refplan.spec import TrainSpec
from refplan.units import dtype_bytes


def _div(x: int, n: int) -> int:
    return -(-x // n)


def master_partition_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """The fp32 master partition of this rank, bytes.

    ZeRO-1/2 (stage_1_and_2.py ``DeepSpeedZeroOptimizer.__init__``): ``single_partition_of_fp32_groups``
    is ``partition.detach().clone().to(fp32)`` -- a copy even when the weights are fp32 already.
    ZeRO-3 (stage3.py ``_create_fp32_partitions``): ``converted.clone().detach()`` -- a copy too. Its
    no-copy branch needs ``partition.device == self.device``, and ``self.device`` is the accelerator's
    ``current_device_name()``, a *string* ('cpu', 'cuda:0'), which a ``torch.device`` never equals (torch
    2.13: ``torch.device('cpu') == 'cpu'`` is False); measured: one more fp32 partition per rank.
    FSDP: none (the optimizer steps the sharded DTensors).
    """
    if train.sharding is Sharding.NONE or train.sharding is Sharding.FSDP:
        return 0
    return _div(terms.trainable_params(model, train), train.shards) * 4


def reduce_bucket_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """ZeRO-2's gradient reduction bucket, bytes: with ``contiguous_gradients`` each backward copies
    gradients into an ``ipg`` buffer of ``reduce_bucket_size`` elements in the gradient dtype
    (stage_1_and_2.py ``setup_buckets``), hidden * hidden elements under transformers' ``"auto"``."""
    if train.sharding is not Sharding.ZERO2:
        return 0
    return model.hidden_size * model.hidden_size * dtype_bytes(terms.trainable_dtype(train))


def zero2_backward(moments: list[tuple[str, dict]], partition_bytes: int, bucket_bytes: int) -> list[tuple[str, dict]]:
    """ZeRO-2's backward: the rank's gradient partition (``grads_in_partition``, stage_1_and_2.py
    ``copy_grads_in_partition``) is allocated whole at the first bucket reduction -- right after the
    head's backward -- and lives to the optimizer step; the bucket lives through the backward. So
    every moment after the head holds the whole partition, not the layers' gradients made so far."""
    out = []
    for i, (label, parts) in enumerate(moments):
        parts = dict(parts)
        if i > 0:
            parts["gradients"] = partition_bytes
        parts["reduce bucket"] = bucket_bytes
        out.append((label, parts))
    return out


def zero2_flat_gradient_bytes(step_gradient_bytes: int, train: TrainSpec) -> int:
    """ZeRO-1/2's optimizer step flattens the rank's averaged gradients into one more partition-sized
    tensor (stage_1_and_2.py ``step``: ``flat_grad_partition = self.flatten_dense_tensors_aligned(
    self.averaged_gradients[i], ...)``, then ``.to(fp32)``, kept as the fp32 partition's ``.grad``)
    while ``grads_in_partition`` is still alive: two partitions of gradients at the step. Measured:
    DPO and KTO ZeRO-2 ranks peak there, at the same bytes."""
    if train.sharding not in (Sharding.ZERO1, Sharding.ZERO2):
        return 0
    return step_gradient_bytes


# -- ZeRO-3 -----------------------------------------------------------------------------------------

#: DeepSpeed's default ``stage3_max_reuse_distance`` (runtime/zero/config.py), elements
ZERO3_MAX_REUSE_DISTANCE = 1_000_000_000
#: DeepSpeed's default ``stage3_max_live_parameters`` (runtime/zero/config.py), elements
ZERO3_MAX_LIVE_PARAMETERS = 1_000_000_000


def zero3_persistence_threshold(model: ModelSpec) -> int:
    """``stage3_param_persistence_threshold`` under transformers' ``"auto"``: 10 * hidden elements."""
    return 10 * model.hidden_size


def _persistent(numels, threshold: int) -> int:
    """Elements of the tensors DeepSpeed keeps whole on every rank: parameter_offload.py
    ``mark_persistent_parameters`` marks ``ds_persist`` every parameter with ``ds_numel <= threshold``
    (``stage3_model_persistence_threshold`` is unbounded by default)."""
    return sum(n for n in numels if n <= threshold)


def zero3_persistent_bytes(model: ModelSpec, train: TrainSpec, with_reference: bool) -> int:
    """Small parameters (norms, biases, small LoRA tensors) that stay whole on every rank, bytes, beside
    their partition (which still counts in the partitioned weights): the policy's (base weights in
    ``--dtype``, adapters in their dtype) and, for a reference copy in its own ZeRO-3 engine, the
    reference's. 0 off ZeRO-3."""
    if train.sharding is not Sharding.ZERO3:
        return 0
    th = zero3_persistence_threshold(model)
    base = _persistent((n for n, _ in terms.model_tensors(model)), th)
    out = base * dtype_bytes(train.dtype)
    if train.finetune.peft:
        out += _persistent(terms.lora_tensor_params(model, train), th) * dtype_bytes(terms.adapter_dtype(train))
    if with_reference:
        out += base * dtype_bytes(train.reference_dtype)
    return out


def zero3_gradient_partition_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """ZeRO-3's gradient partition buffer, bytes: stage3.py ``__init__`` allocates
    ``grad_partitions_flat_buffer = torch.zeros(sum(p.partition_numel() ...))`` once, for every trainable
    parameter's partition, and keeps it for the run (each reduce-scatter writes into its slice,
    ``__param_id_to_grad_partition``; the fp32 partition's ``.grad`` is a view of it at the step). In the
    master dtype, fp32. 0 off ZeRO-3 and with the optimizer offloaded (the buffer is then in CPU memory)."""
    if train.sharding is not Sharding.ZERO3 or train.offload.optimizer_on_cpu:
        return 0
    return _div(terms.trainable_params(model, train), train.shards) * 4


def zero3_reduce_bucket_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """ZeRO-3's ``ipg`` bucket, bytes: stage3.py ``__init__`` allocates ``bucket.buffer = torch.empty(
    self.reduce_bucket_size, dtype=...)`` per communication dtype, kept for the run; hidden * hidden
    elements under transformers' ``"auto"``, in the trainable dtype."""
    if train.sharding is not Sharding.ZERO3:
        return 0
    return model.hidden_size * model.hidden_size * dtype_bytes(terms.trainable_dtype(train))


def _nonpersistent_weight_bytes(model: ModelSpec, train: TrainSpec) -> int:
    th = zero3_persistence_threshold(model)
    base = sum(n for n, _ in terms.model_tensors(model) if n > th) * dtype_bytes(train.dtype)
    lora = 0
    if train.finetune.peft:
        lora = sum(n for n in terms.lora_tensor_params(model, train) if n > th) * dtype_bytes(terms.adapter_dtype(train))
    return base + lora


def _forward_only_elements(model: ModelSpec, train: TrainSpec) -> int:
    """Non-persistent base elements the policy's backward never fetches, so that even a complete trace
    releases them after their forward module: ``__params_to_release`` (partitioned_param_coordinator.py)
    keeps a parameter only if it reoccurs later in the trace, and a module enters the backward's part of
    the trace only through its pre-backward hook, which parameter_offload.py ``_pre_backward_module_hook``
    attaches to outputs that require grad. With a frozen embedding (PEFT) that leaves out the token
    embedding -- unless the head ties it, which reoccurs -- and the bottom layer's attention input
    projections (their input is the frozen embedding's output; their adapters are modules of their own).
    Measured (validate --sharded s0-007, ORPO none LoRA r4, llama h 128, 2 layers, untied, rank 0, backward
    peak): 440,576 elements gathered, every non-persistent weight but the 137,472-element embedding and
    layer 0's 24,576 q/k/v elements; s0-016 (tied, h 256), at its forward peak in layer 1's MLP: the
    embedding (tied: the head reads it again) gathered, layer 0's q/k/v released."""
    if not train.finetune.peft:
        return 0
    th = zero3_persistence_threshold(model)
    out = sum(n for n, emb in terms.model_tensors(model) if emb and n > th) if model.lm_head is not None else 0
    for l in model.layers[0].linears:
        if l.role.value in _ATTENTION and l.role.value != "o":
            for n in (l.count * l.in_features * l.out_features, l.count * l.out_features if l.bias else 0):
                out += n if n > th else 0
    return out


def zero3_policy_keeps_gathered(train: TrainSpec, policy_runs_reference: bool,
                                precompute_engine: bool = False) -> bool:
    """Whether the policy engine keeps every parameter it gathered in the forward until its backward.

    partitioned_param_coordinator.py ``__params_to_release``: once the trace of a step is complete, a
    module's parameters are not released if they reoccur within ``max_reuse_distance`` elements of the
    trace -- and every forward parameter reoccurs in the backward. The trace restarts at each forward
    (parameter_offload.py ``_start_of_forward_hook``: ``reset_step``), so it completes only when the
    policy runs one forward per step; with a second one the backward finds a trace of forwards only
    (KTO's KL forward: :func:`zero3_kl_forward_trace`) or one that differs from the recorded one (a
    reference forward through the policy with its adapters off), DeepSpeed invalidates it, and
    ``release_sub_module`` then frees each module's parameters after it runs.

    Nor with TRL's precompute engine on the policy (:func:`zero3_precompute_engine_on_policy`): its
    forward-only coordinator releases each module's parameters after the module runs, for the training
    engine's too -- both engines' hooks fetch under the same ``module.ds_id`` (parameter_offload.py
    ``_register_deepspeed_module`` rewrites it for the second engine), so ``param.ds_active_sub_modules``
    holds one entry, the first ``release_sub_module`` empties it, and ``__release_param`` partitions the
    parameter."""
    return not train.method.caps.kl_forward and not policy_runs_reference and not precompute_engine


def zero3_kl_forward_trace(train: TrainSpec, policy_runs_reference: bool) -> bool:
    """Whether the policy coordinator's trace is KTO's KL forward alone, each step.

    kto_trainer.py ``_compute_loss`` runs ``_compute_kl_logps`` (a ``torch.no_grad`` forward on the KL pairs)
    before the training forward, and each forward's ``_start_of_forward_hook`` calls ``reset_step``
    (parameter_offload.py). The backward invalidates the trace (partitioned_param_coordinator.py
    ``trace_prologue``: "cache has only N modules"), so at the KL forward ``reset_step`` turns the invalid
    trace to ``RECORD`` (no prefetch, each module released after it runs) and at the training forward
    completes it with the KL forward's modules only: the training forward runs on a complete, forward-only
    trace (prefetch; nothing reoccurs, so each module is released after it runs,
    :func:`zero3_kl_training_forward`), and the backward on an invalid one (no prefetch; each module
    fetched by its pre-backward hook and released after its backward, :func:`zero3_kl_backward_gathered_bytes`).
    Measured (s0-022 KTO precompute full, rank 0, steps 1-3): the training coordinator fetches in RECORD
    then COMPLETE mode, and INVALID through every backward. Not with the reference forward through the
    policy (:func:`zero3_unreleased_backward_bytes`)."""
    return train.sharding is Sharding.ZERO3 and train.method.caps.kl_forward and not policy_runs_reference


def zero3_kl_training_forward(model: ModelSpec, train: TrainSpec, precompute_engine: bool) -> list[tuple[int, int]]:
    """KTO's training forward on its KL-forward trace (:func:`zero3_kl_forward_trace`), bytes gathered at
    each module fetch as (decoder layers finished, bytes): :func:`_prefetch_frontier` with the training
    coordinator as a forward-only one, and TRL's precompute engine's beside it when it is on the policy
    (:func:`zero3_precompute_engine_on_policy`; its trace, recorded by the precompute pass, completes at
    every training forward too: measured COMPLETE at each of its fetches). The all-gather staging buffers
    of a coalesced prefetch (partition_parameters.py ``_all_gather_coalesced``: ``flat_tensor``, alive
    until the handle is waited on) are not counted."""
    coordinators = (False, False) if precompute_engine else (False,)
    return [(k, n * dtype_bytes(train.dtype)) for k, n in _prefetch_frontier(model, coordinators)]


def zero3_kl_backward_gathered_bytes(model: ModelSpec, train: TrainSpec, moment: str) -> int:
    """KTO's backward on an invalid trace (:func:`zero3_kl_forward_trace`), bytes gathered at the backward
    moment ``moment`` (``head``, ``layer N ...``, ``embedding``): no prefetch (``_fetch_sub_module_impl``
    prefetches only ``if self.is_complete_trace()``) and each module released after its own backward
    (``release_sub_module``), so one module's weights -- at the head's backward the head weight alone,
    which TRL's chunked log-prob backward gathers again (trl/trainer/utils.py ``maybe_gather_lm_head_ctx``);
    in a decoder layer its largest weight; then the embedding's. Measured (s0-004 KTO precompute LoRA,
    rank 0, backward peak in the head's tile): ``lm_head.weight`` alone."""
    words = moment.split()
    if words[0] == "layer":
        th = zero3_persistence_threshold(model)
        n = max((n for ps in _layer_fetches(model.layers[int(words[1])]) for n in ps if n > th), default=0)
    elif words[0] == "embedding":
        n = model.vocab_size * model.hidden_size
    else:
        n = _fused_head_elements(model)
    return n * dtype_bytes(train.dtype)


def zero3_precompute_engine_on_policy(train: TrainSpec, precompute_pass: bool) -> bool:
    """Whether TRL wrapped the policy itself in a second, inference-only ZeRO-3 engine for the precompute
    pass, whose hooks stay on the policy through training: dpo_trainer.py / kto_trainer.py
    ``_precompute_ref_logps`` (``self._precompute_engine = prepare_deepspeed(self.model, ...)`` when no
    ``ref_model`` exists, which is always the case with ``precompute_ref_log_probs`` outside FSDP);
    DeepSpeed never removes an engine's module hooks unless ``destroy`` is called."""
    return train.sharding is Sharding.ZERO3 and precompute_pass


def zero3_two_engine_forward(model: ModelSpec, train: TrainSpec) -> list[tuple[int, int]]:
    """The policy forward's gathered parameters with TRL's precompute engine on the policy
    (:func:`zero3_precompute_engine_on_policy`), bytes at each module fetch, as (decoder layers finished,
    bytes): two prefetchers run ahead of the forward (:func:`_prefetch_frontier`) -- the training engine's
    coordinator (its trace completes: one forward per step, measured first at each fetch) and the
    precompute engine's forward-only one, each at least one tensor per fetch. Assumes the training
    coordinator's trace completes (one forward per step; KTO's KL forward breaks it and is not modelled
    here). Measured (DPO precompute, "wide", rank 0, step 3): 12,845,056 elements
    at layer 0's up projection, then the same sequence as simulated to the end of the forward."""
    return [(k, n * dtype_bytes(train.dtype)) for k, n in _prefetch_frontier(model, (True, False))]


def zero3_two_engine_backward_gathered_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """The policy's gathered parameters through the backward with TRL's precompute engine on it, bytes:
    what the training coordinator had in flight when the forward ended (its queue runs on into the
    backward, :func:`_prefetch_frontier`) plus the running module's largest weight. Each backward fetch
    prefetches at least one tensor and each module releases its own after its backward
    (``__params_to_release``: no later use in the trace), so the count holds. Measured (DPO precompute,
    "wide", rank 0, step 3): at most 3,145,728 elements (2,359,296 in flight + a 786,432 MLP weight)."""
    in_flight = _prefetch_frontier(model, (True, False))[-1][1]
    largest = max(n for layer in model.layers for ps in _layer_fetches(layer) for n in ps)
    return (in_flight + largest) * dtype_bytes(train.dtype)


def zero3_gathered_bytes(model: ModelSpec, train: TrainSpec, keeps_gathered: bool) -> int:
    """Full (gathered) policy parameters held during the forward and backward, bytes.

    Kept (:func:`zero3_policy_keeps_gathered`): every parameter above the persistence threshold that the
    backward uses again (not :func:`_forward_only_elements`), at most ``stage3_max_reuse_distance``
    elements' worth (DeepSpeed's default, 1e9). Otherwise the module running and the one prefetched: two
    decoder layers."""
    if keeps_gathered:
        full = (_nonpersistent_weight_bytes(model, train)
                - _forward_only_elements(model, train) * dtype_bytes(train.dtype))
        return min(full, ZERO3_MAX_REUSE_DISTANCE * dtype_bytes(train.dtype))
    return 2 * max(l.params for l in model.layers) * dtype_bytes(train.dtype)


def zero3_invalid_trace_gathered_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """The policy's gathered parameters in its forwards when its trace never completes because the
    reference forward runs through it (adapters off), bytes: no prefetch without a complete trace
    (partitioned_param_coordinator.py ``_fetch_sub_module_impl``: ``if self.is_complete_trace()``), and
    each module releases its own after it runs (``release_sub_module`` on an invalid trace) -- the running
    module's, at most the largest weight, plus the head TRL's fused log-prob path reads
    (:func:`_fused_head_elements`)."""
    th = zero3_persistence_threshold(model)
    largest = max((n for layer in model.layers for ps in _layer_fetches(layer) for n in ps if n > th), default=0)
    return (largest + _fused_head_elements(model)) * dtype_bytes(train.dtype)


def zero3_unreleased_backward_bytes(model: ModelSpec, train: TrainSpec, layer_index: int,
                                    mlp_only: bool = False, down_only: bool = False) -> int:
    """The policy's parameters gathered in the backward and not released until it ends, bytes, at the
    backward of decoder layer ``layer_index`` (``model.num_layers``: the head's).

    When the policy runs a second, no-grad forward after its training forward (the reference forward with
    its adapters off), that forward's pre-hooks reset every module's ``ds_grads_remaining`` to 0
    (parameter_offload.py ``_post_backward_module_hook``) and add nothing (no input requires grad). In the
    backward each ``PostBackwardFunctionModule.backward`` then counts it down to -1, never 0, so
    ``post_sub_module_backward_function`` -- the release -- never runs for a module both forwards ran; the
    parameters its pre-backward hook gathered stay until the backward ends (``release_backward_leftovers``).
    So: the head weight, every weight of the layers above, and this layer's -- but, with a frozen
    embedding (PEFT), the bottom layer's attention input projections, whose outputs need no gradient
    (``_pre_backward_module_hook`` attaches only to outputs that require grad) and are never gathered.
    Adapters run in one forward only and are released as usual. The backward reaches a layer's linears
    last first: ``down_only`` while its down projection's backward runs, ``mlp_only`` until its MLP is
    done (its attention not yet gathered). Measured (DPO unwrap LoRA r8, "wide",
    rank 0, step 3): 13,156,352 elements at layer 0's attention (12,845,056 + o_proj + LoRA tensors in flight)."""
    th = zero3_persistence_threshold(model)
    out = _fused_head_elements(model)
    for k in range(layer_index, model.num_layers):
        for l in model.layers[k].linears:
            if k == 0 and train.finetune.peft and l.role.value in _ATTENTION and l.role.value != "o":
                continue
            if k == layer_index and (mlp_only or down_only) and l.role.value in _ATTENTION:
                continue  # this layer's attention: its backward comes after the MLP's
            if k == layer_index and down_only and l.role.value not in ("mlp-down", "shared-down", "experts-down"):
                continue
            for n in (l.count * l.in_features * l.out_features, l.count * l.out_features if l.bias else 0):
                out += n if n > th else 0
    return out * dtype_bytes(train.dtype)


def zero3_inflight_gradient_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """The full gradient of one parameter before its reduce-scatter, bytes: stage3.py
    ``reduce_independent_p_g_buckets_and_remove_grads`` runs per parameter as autograd makes its gradient;
    one larger than the bucket is reduced on its own and freed (``partition_grads`` writes its slice into
    the partition buffer). The largest trainable tensor."""
    numels = ([n for n in terms.lora_tensor_params(model, train)] if train.finetune.peft
              else [n for n, _ in terms.model_tensors(model)])
    return max(numels, default=0) * dtype_bytes(terms.trainable_dtype(train))


def zero3_backward(moments: list[tuple[str, dict]], inflight_bytes: int) -> list[tuple[str, dict]]:
    """ZeRO-3's backward: no gradient accumulates on the rank beyond its partition buffer (counted
    throughout, :func:`zero3_gradient_partition_bytes`); each moment holds at most one parameter's full
    gradient on its way to the reduce-scatter (:func:`zero3_inflight_gradient_bytes`), from the head's
    backward on."""
    out = []
    for label, parts in moments:
        parts = dict(parts)
        parts["gradients"] = inflight_bytes
        out.append((label, parts))
    return out


def zero3_prefetch_bucket(model: ModelSpec) -> int:
    """``stage3_prefetch_bucket_size`` under transformers' ``"auto"``: 0.9 * hidden^2 elements."""
    return int(0.9 * model.hidden_size * model.hidden_size)


_ATTENTION = ("q", "k", "v", "qkv", "o", "q-a", "q-b", "kv-a", "kv-b")


def _forward_fetches(model: ModelSpec) -> list[list[int]]:
    """The modules of one forward in the order ZeRO-3's hooks fetch them, each as the element counts of
    its own parameters (``iter_params(module, recurse=False)``): the LM and its body (none), the embedding,
    the rotary table (none), then per decoder layer the layer, its input norm, the attention module, its
    linears, the second norm, the MLP module and its linears (with the activation module, no parameters,
    after the first), then the final norm and the head. A module without parameters still triggers a
    fetch, and with it a prefetch (partitioned_param_coordinator.py ``_fetch_sub_module_impl``)."""
    fetches: list[list[int]] = [[], [], [model.vocab_size * model.hidden_size], []]
    for layer in model.layers:
        fetches += _layer_fetches(layer)
    fetches.append([model.final_norm.size] * (2 if model.final_norm.bias else 1))
    return fetches


def _layer_fetches(layer: Layer) -> list[list[int]]:
    """One decoder layer's module fetches, in order (:func:`_forward_fetches`)."""
    fetches: list[list[int]] = []
    norms = [[n.size] * (2 if n.bias else 1) for n in layer.norms]
    attn = [[l.count * l.in_features * l.out_features] + ([l.count * l.out_features] if l.bias else [])
            for l in layer.linears if l.role.value in _ATTENTION]
    mlp = [[l.count * l.in_features * l.out_features] + ([l.count * l.out_features] if l.bias else [])
           for l in layer.linears if l.role.value not in _ATTENTION]
    fetches.append([])                            # the decoder layer
    fetches.append(norms[0] if norms else [])
    fetches.append([])                            # the attention module
    fetches += attn
    fetches += norms[1:2]
    fetches.append([])                            # the MLP module
    fetches += mlp[:1] + [[]] + mlp[1:]           # the activation module after the first projection
    fetches += norms[2:]
    return fetches


def _fused_head_elements(model: ModelSpec) -> int:
    """The untied head weight TRL's fused log-prob path reads outside any module call (trl/trainer/utils.py
    ``add_fused_lm_head``: ``lm_head.weight`` under ``maybe_gather_lm_head_ctx``): no module fetch of its
    own, it is gathered with the top-level module and held through the forward (measured: AVAILABLE, one
    active sub-module, at the reference's peak)."""
    return 0 if model.lm_head is None else model.lm_head.in_features * model.lm_head.out_features


def _prefetch_frontier(model: ModelSpec, coordinators: tuple[bool, ...], bucket: int | None = None) -> list[tuple[int, int]]:
    """Parameter elements held gathered at each module fetch of one forward, persistent ones excluded,
    as (decoder layers finished before the fetch, elements) -- the head weight included
    (:func:`_fused_head_elements`).

    One prefetcher per entry of ``coordinators``, each a ZeRO-3 coordinator of an engine whose hooks are
    on the model, with a complete trace; ``True`` when its trace goes on past the forward into a backward
    (a training engine's), ``False`` for a forward-only one (an inference engine's). At each fetch each
    coordinator in turn pops the running module's parameters off its queue, then prefetches the next ones
    of its trace that are not gathered until ``stage3_prefetch_bucket_size`` elements are on their way
    (partitioned_param_coordinator.py ``_fetch_sub_module_impl``: ``while self.__param_queue and
    numel_prefetching < max_params_to_prefetch``; ``do_prefetch`` only for ``NOT_AVAILABLE``), at least
    one tensor, parameterless modules included. A training coordinator's queue runs on into its backward
    (the forward's parameters again, last first), and those were released after their forward module:
    it prefetches them again. A module's parameters are released after it runs. The frontier stops where
    the gathered elements reach ``stage3_max_live_parameters`` (1e9 by default)."""
    bucket = zero3_prefetch_bucket(model) if bucket is None else bucket
    th = zero3_persistence_threshold(model)
    fetches = _forward_fetches(model)
    forward = [(i, j, n) for i, ps in enumerate(fetches) for j, n in enumerate(ps) if n > th]
    queues = [forward + (forward[::-1] if trains else []) for trains in coordinators]
    heads = [0] * len(queues)
    head_weight = _fused_head_elements(model)
    gathered: dict[tuple[int, int], int] = {}
    out = []
    starts = _layer_starts(model)
    layers_done = 0
    for i, ps in enumerate(fetches):
        layers_done = sum(1 for start in starts[1:] if start <= i)  # the decoder layers before this one
        for j, n in enumerate(ps):
            if n > th:
                gathered[(i, j)] = n
        for c, queue in enumerate(queues):
            while heads[c] < len(forward) and queue[heads[c]][0] <= i:  # the running module's own
                heads[c] += 1
            prefetching = 0
            # ``max_params_to_prefetch = min(max_live - n_available, bucket)``: the live cap stops the frontier
            limit = min(ZERO3_MAX_LIVE_PARAMETERS - sum(gathered.values()) - head_weight, bucket)
            while heads[c] < len(queue) and prefetching < limit:
                i2, j2, n2 = queue[heads[c]]
                heads[c] += 1
                if (i2, j2) not in gathered:
                    gathered[(i2, j2)] = n2
                    prefetching += n2
        out.append((layers_done, sum(gathered.values()) + head_weight))
        for j, n in enumerate(ps):
            gathered.pop((i, j), None)
    return out


def _layer_starts(model: ModelSpec) -> list[int]:
    """Indices in :func:`_forward_fetches` of each decoder layer's first fetch."""
    starts, i = [], 4
    for layer in model.layers:
        starts.append(i)
        i += len(_layer_fetches(layer))
    return starts


def zero3_forward_only_gathered_elements(model: ModelSpec, bucket: int | None = None) -> int:
    """The most parameter elements a forward-only ZeRO-3 engine (TRL's reference engine) holds gathered,
    persistent ones excluded: :func:`_prefetch_frontier` with its one forward-only coordinator.

    Its trace completes after one step (partitioned_param_coordinator.py ``reset_step``, called at each
    forward's start: parameter_offload.py ``_start_of_forward_hook``), and then every module fetch
    prefetches; a module releases its own after it runs (``release_sub_module``: no parameter reoccurs in
    a forward-only trace). The head weight is held throughout (:func:`_fused_head_elements`). So the
    prefetch frontier runs ahead of the forward by one tensor per fetch and more fetches than tensors come
    per layer: it reaches the end of the model part-way, and from then on everything from the running
    module to the head is gathered (the all-gather allocates the full tensor when it is issued,
    ``INFLIGHT``). Measured: DPO separate, "wide" preset, rank 0, step 3 at the peak: layer 1's up and
    down projections, layers 2 and 3 and the head gathered (8,650,752 elements)."""
    return max(n for _, n in _prefetch_frontier(model, (False,), bucket))


def zero3_reference_gathered_bytes(model: ModelSpec, train: TrainSpec, ref_in_own_engine: bool) -> int:
    """The reference engine's gathered parameters during its forward, bytes
    (:func:`zero3_forward_only_gathered_elements` in the reference dtype). 0 unless TRL put a reference
    copy in its own ZeRO-3 engine (trl/models/utils.py ``prepare_deepspeed``)."""
    if train.sharding is not Sharding.ZERO3 or not ref_in_own_engine:
        return 0
    return zero3_forward_only_gathered_elements(model) * dtype_bytes(train.reference_dtype)


def zero3_reference_head_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """The reference engine's head weight, gathered while its log-prob path runs, bytes
    (:func:`_fused_head_elements` in the reference dtype)."""
    return _fused_head_elements(model) * dtype_bytes(train.reference_dtype)
