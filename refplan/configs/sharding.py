"""Multi-GPU settings a training config names: a DeepSpeed JSON, FSDP settings, an accelerate config.

What is read, and where the frameworks read it:

- DeepSpeed JSON (``deepspeed`` in TRL's TrainingArguments / Axolotl, or ``--deepspeed FILE``):
  ``zero_optimization.stage``, ``offload_optimizer.device`` and ``offload_param.device`` ("cpu" /
  "nvme" move the state off the GPU; "none" keeps it). ``"auto"`` values are filled by transformers'
  ``HfTrainerDeepSpeedConfig`` from the trainer's own arguments.
- FSDP (TrainingArguments ``fsdp`` = "full_shard auto_wrap offload" or a list, ``fsdp_config`` a dict or
  a JSON path; Axolotl ``fsdp`` / ``fsdp_config``): full_shard is FSDP; shard_grad_op keeps whole
  parameters (ZeRO-2's shape); ``offload`` / ``offload_params`` move parameter, gradient and optimizer
  shards to CPU.
- accelerate config YAML (``--accelerate-config``): ``num_processes`` x ``num_machines`` GPUs,
  ``distributed_type``, and its ``deepspeed_config`` / ``fsdp_config`` sections.
"""

from __future__ import annotations

from dataclasses import dataclass

from refplan.configs.source import ConfigFile, Origin, Source, read_file
from refplan.errors import PlanError


@dataclass(frozen=True)
class ShardingPlan:
    zero: int = 0
    fsdp: bool = False
    offload: str = "none"  # "none" | "optimizer" | "params" | "all"
    source: Source | None = None
    warnings: tuple[str, ...] = ()


def _offloaded(section) -> bool:
    return isinstance(section, dict) and str(section.get("device", "none")).lower() in ("cpu", "nvme")


def from_deepspeed(value, owner: ConfigFile | None, key: str = "deepspeed") -> ShardingPlan:
    """A DeepSpeed config given as a path (relative to the file naming it) or an inline dict."""
    if isinstance(value, dict):
        doc, where = value, owner.where(key) if owner else key
    elif isinstance(value, str):
        path = owner.resolve_path(value) if owner else value
        f = read_file(path, "DeepSpeed config")
        doc, where = f.data, str(f.path)
    else:
        raise (owner.error(key, "expected a path to a DeepSpeed JSON or a mapping") if owner
               else PlanError("--deepspeed", "expected a path to a DeepSpeed JSON"))
    z = doc.get("zero_optimization") or {}
    if not isinstance(z, dict):
        raise PlanError(where, "zero_optimization must be a mapping")
    stage = z.get("stage", 0)
    if stage == "auto" or stage is None:
        stage = 0
    if stage not in (0, 1, 2, 3):
        raise PlanError(where, f"zero_optimization.stage must be 0, 1, 2 or 3 (got {stage!r})")
    offload = "none"
    warnings = []
    if _offloaded(z.get("offload_optimizer")):
        offload = "optimizer"
    if _offloaded(z.get("offload_param")):
        if stage != 3:
            warnings.append(f"{where}: offload_param applies to ZeRO-3 only; DeepSpeed ignores it at stage {stage}")
        else:
            offload = "all" if offload == "optimizer" else "params"
    if "nvme" in (str((z.get("offload_optimizer") or {}).get("device", "")), str((z.get("offload_param") or {}).get(
            "device", ""))):
        warnings.append(f"{where}: NVMe offload is modelled as CPU offload (what leaves the GPU is the same)")
    return ShardingPlan(zero=stage, offload=offload, source=Source(Origin.FILE, f"{where} zero_optimization"),
                        warnings=tuple(warnings))


def from_fsdp(fsdp, fsdp_config, owner: ConfigFile | None, key: str = "fsdp") -> ShardingPlan:
    """TrainingArguments-style ``fsdp`` options (str or list) plus an ``fsdp_config`` mapping or path."""
    if isinstance(fsdp, str):
        opts = fsdp.replace(",", " ").split()
    elif isinstance(fsdp, list):
        opts = [str(o) for o in fsdp]
    elif fsdp in (None, False, True):
        opts = ["full_shard"] if fsdp else []
    else:
        raise owner.error(key, "expected FSDP options (e.g. 'full_shard auto_wrap')")
    cfg = fsdp_config
    if isinstance(cfg, str):
        cfg = read_file(owner.resolve_path(cfg) if owner else cfg, "FSDP config").data
    cfg = {str(k).removeprefix("fsdp_"): v for k, v in (cfg or {}).items()} if isinstance(cfg, dict) else {}
    strategy = str(cfg.get("sharding_strategy", "")).lower()
    opts_l = [o.lower() for o in opts]
    if not opts and not cfg:
        return ShardingPlan()
    warnings = []
    where = owner.where(key) if owner else key
    if "no_shard" in opts_l or strategy in ("no_shard", "3"):
        return ShardingPlan(source=Source(Origin.FILE, where))
    offload = "all" if ("offload" in opts_l or cfg.get("offload_params") in (True, "true", "True")) else "none"
    if "shard_grad_op" in opts_l or strategy in ("shard_grad_op", "2") or cfg.get("reshard_after_forward") is False:
        warnings.append(f"{where}: FSDP SHARD_GRAD_OP keeps whole parameters between forward and backward; "
                        "modelled as ZeRO-2 sharding")
        return ShardingPlan(zero=2, offload="optimizer" if offload != "none" else "none",
                            source=Source(Origin.FILE, where), warnings=tuple(warnings))
    if any(o.startswith("hybrid_shard") for o in opts_l) or strategy.startswith("hybrid_shard"):
        warnings.append(f"{where}: HYBRID_SHARD shards within a node only; modelled as full sharding over --gpus "
                        "(give the GPUs of one node)")
    return ShardingPlan(fsdp=True, offload=offload, source=Source(Origin.FILE, where), warnings=tuple(warnings))


@dataclass(frozen=True)
class AccelerateConfig:
    gpus: int
    source: Source
    sharding: ShardingPlan


def from_accelerate(path: str) -> AccelerateConfig:
    """``num_processes`` x ``num_machines`` and the DeepSpeed / FSDP section of an accelerate config."""
    f = read_file(path, "accelerate config")
    procs, machines = f.data.get("num_processes", 1), f.data.get("num_machines", 1)
    for k, v in (("num_processes", procs), ("num_machines", machines)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise f.error(k, f"must be a positive whole number (got {v!r})")
    kind = str(f.data.get("distributed_type", "")).upper()
    sharding = ShardingPlan()
    if kind == "DEEPSPEED":
        ds = f.data.get("deepspeed_config") or {}
        if ds.get("deepspeed_config_file"):
            sharding = from_deepspeed(str(ds["deepspeed_config_file"]), f, "deepspeed_config")
        else:
            inline = {"zero_optimization": {"stage": ds.get("zero_stage", 0),
                                            "offload_optimizer": {"device": ds.get("offload_optimizer_device", "none")},
                                            "offload_param": {"device": ds.get("offload_param_device", "none")}}}
            sharding = from_deepspeed(inline, f, "deepspeed_config")
    elif kind == "FSDP":
        sharding = from_fsdp(True, f.data.get("fsdp_config") or {}, f, "fsdp_config")
    # accelerate launch: "--num_processes: the total number of processes to be launched in parallel"
    # (commands/launch.py), over all machines -- one per GPU
    detail = f"{f.where('num_processes')}" + (f" (over {machines} machines)" if machines > 1 else "")
    return AccelerateConfig(gpus=procs, source=Source(Origin.FILE, detail), sharding=sharding)
