"""Per-rank terms of DeepSpeed ZeRO that the sharded bursts measured (refplan/suites/sharded.toml).

Pure arithmetic, standard library only. Each term cites the DeepSpeed 0.19 code that allocates it;
bucket sizes are transformers' values for DeepSpeed's ``"auto"`` keys (integrations/deepspeed.py
``HfTrainerDeepSpeedConfig.trainer_config_finalize``: ``reduce_bucket_size`` = hidden * hidden), the
ones refplan's bench writes (:func:`refplan.harness.launch.hf_auto_buckets`).

Measured so far on CPU ranks (gloo, 2 ranks, "wide" preset, fp32): ZeRO-2 follows these terms; ZeRO-3
and FSDP keep the planner's earlier terms, still unmatched (reports/validate-sharded/README.md).
"""

from __future__ import annotations

from refplan import terms
from refplan.model import ModelSpec
from refplan.settings import Sharding
from refplan.spec import TrainSpec
from refplan.units import dtype_bytes


def _div(x: int, n: int) -> int:
    return -(-x // n)


def master_partition_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """The fp32 master partition of this rank, bytes.

    ZeRO-1/2 (stage_1_and_2.py ``DeepSpeedZeroOptimizer.__init__``): ``single_partition_of_fp32_groups``
    is ``partition.detach().clone().to(fp32)`` -- a copy even when the weights are fp32 already.
    ZeRO-3 (stage3.py ``_create_fp32_partitions``): a converted copy for low-precision weights, the
    partition itself when it is fp32 already. FSDP: none (the optimizer steps the sharded DTensors).
    """
    stage = train.sharding.caps.zero_stage
    if train.sharding is Sharding.NONE or train.sharding is Sharding.FSDP:
        return 0
    if stage == 3 and terms.trainable_dtype(train) == "fp32":
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
