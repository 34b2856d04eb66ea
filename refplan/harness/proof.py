"""Proof that a sharded burst is sharded, taken when training begins (the models are prepared then).

A run that asked for ZeRO or FSDP but silently runs as plain data parallelism (accelerate keeps
``MULTI_CPU`` for an FSDP config on CPU, state.py) or as unsynchronised single processes (no
``ddp_backend``) measures the wrong thing with exit 0. :func:`check_sharded` refuses it: its
failure is the rank's ``error`` row, never a measurement. What it checks, per rank:

- ``torch.distributed`` is initialised with ``world_size`` = the scenario's ``gpus``;
- the distributed type is the one requested (``DEEPSPEED`` / ``FSDP``);
- DeepSpeed: the trainer wraps a ``DeepSpeedEngine`` whose ``zero_optimization_stage()`` is the
  scenario's; under ZeRO-3 every trainable parameter is a partition (``ds_tensor`` holding about
  ``ds_numel / world`` elements, the full tensor freed) and TRL's reference engine too;
- FSDP: ``trainer.is_fsdp_enabled`` and every policy parameter (and a kept reference's) is a
  ``DTensor`` sharded on dim 0 with a local shard smaller than the whole.

Losses equal across ranks (HF Trainer logs the mean gathered over ranks) are checked by the launcher
once every rank has written its record (:func:`refplan.harness.launch.collect`).
"""

from __future__ import annotations


class NotSharded(RuntimeError):
    """The run does not shard the way its scenario asks."""


def _fail(msg: str):
    raise NotSharded(f"not sharded: {msg}")


def check_sharded(trainer, train) -> dict:
    """The proof record of this rank, or :class:`NotSharded`."""
    import torch.distributed as dist

    want = train.sharding.value
    if not dist.is_available() or not dist.is_initialized():
        _fail("torch.distributed is not initialised (one unsynchronised process)")
    world = dist.get_world_size()
    if world != train.gpus:
        _fail(f"world size {world}, asked {train.gpus}")
    dtype = str(trainer.accelerator.distributed_type).split(".")[-1]
    proof = {"world_size": world, "distributed_type": dtype, "backend": dist.get_backend()}
    if want in ("zero2", "zero3"):
        proof.update(_check_deepspeed(trainer, train, dtype))
    else:
        proof.update(_check_fsdp(trainer, dtype))
    return proof


def _check_deepspeed(trainer, train, dtype: str) -> dict:
    stage = train.sharding.caps.zero_stage
    if dtype != "DEEPSPEED" or not trainer.is_deepspeed_enabled:
        _fail(f"distributed type {dtype}, asked DeepSpeed ZeRO-{stage}")
    engine = trainer.model_wrapped
    if type(engine).__name__ != "DeepSpeedEngine":
        _fail(f"the trained model is a {type(engine).__name__}, not a DeepSpeedEngine")
    got = engine.zero_optimization_stage()
    if got != stage:
        _fail(f"DeepSpeed engine runs ZeRO stage {got}, asked {stage}")
    out = {"zero_stage": got}
    if stage == 3:
        out["partitioned_params"] = _zero3_partitions(engine.module, "policy")
        ref = getattr(trainer, "ref_model", None)
        if ref is not None:
            out["partitioned_ref_params"] = _zero3_partitions(getattr(ref, "module", ref), "reference")
    else:
        groups = getattr(engine.optimizer, "single_partition_of_fp32_groups", None)
        if not groups:
            _fail(f"ZeRO-{stage} optimizer {type(engine.optimizer).__name__} holds no fp32 partition")
        out["fp32_partition_elements"] = sum(g.numel() for g in groups)
    return out


def _zero3_partitions(module, what: str) -> int:
    """Parameters held as ZeRO-3 partitions; fails when one large parameter is whole on this rank."""
    n = 0
    for name, p in module.named_parameters():
        if not hasattr(p, "ds_tensor"):
            _fail(f"{what} parameter {name} has no ZeRO-3 partition (ds_tensor)")
        if p.ds_persist:  # below stage3_param_persistence_threshold: kept whole by design
            continue
        if p.ds_tensor.numel() >= p.ds_numel:
            _fail(f"{what} parameter {name} is whole on this rank ({p.ds_tensor.numel()} of {p.ds_numel})")
        n += 1
    if n == 0:
        _fail(f"no {what} parameter is partitioned")
    return n


def _check_fsdp(trainer, dtype: str) -> dict:
    if dtype != "FSDP" or not trainer.is_fsdp_enabled:
        _fail(f"distributed type {dtype} (is_fsdp_enabled={trainer.is_fsdp_enabled}), asked FSDP")
    out = {"dtensor_params": _dtensor_shards(trainer.model, "policy")}
    ref = getattr(trainer, "ref_model", None)
    if ref is not None:
        out["dtensor_ref_params"] = _dtensor_shards(ref, "reference")
    return out


def _dtensor_shards(module, what: str) -> int:
    from torch.distributed.tensor import DTensor, Shard

    n = 0
    for name, p in module.named_parameters():
        if not isinstance(p, DTensor):
            _fail(f"{what} parameter {name} is a plain {type(p).__name__}, not a DTensor")
        if not any(isinstance(pl, Shard) for pl in p.placements):
            _fail(f"{what} parameter {name} is replicated ({p.placements})")
        if p.to_local().numel() >= p.numel() and p.numel() > 1:
            _fail(f"{what} parameter {name} is whole on this rank")
        n += 1
    if n == 0:
        _fail(f"{what} has no parameters")
    return n
