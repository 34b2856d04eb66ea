"""Launch one sharded scenario as N ranks through ``accelerate launch``, and collect one record per rank.

The scenario's directory (``<out>/sharded/<key>/``) gets what a user would write by hand:

- ``deepspeed.json`` (ZeRO-2/3) or nothing (FSDP, configured in the accelerate file);
- ``accelerate.yaml``: ``distributed_type`` DEEPSPEED or FSDP, ``num_processes`` N, one machine,
  ``use_cpu`` on CPU (gloo; NCCL on CUDA is accelerate's own default, unchanged);
- ``dataset/``: the burst's dataset saved once (``Dataset.save_to_disk``), so that TRL's precompute
  writes its log-prob cache beside it where every rank reads it (an in-memory dataset's cache lives
  in one rank's private temp dir);
- ``request.json`` and, from each rank, ``rank<i>.json`` (:mod:`refplan.harness.sharded`).

The bucket sizes are numbers, the values transformers substitutes for ``"auto"``
(integrations/deepspeed.py ``HfTrainerDeepSpeedConfig.trainer_config_finalize``: reduce bucket
h*h, ZeRO-3 prefetch bucket 0.9*h*h, persistence threshold 10*h), written out so that TRL's reference
engine, built before the Trainer resolves ``"auto"``, gets the same ones.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from refplan.harness.scenario import Scenario
from refplan.settings import Device, Sharding


def hf_auto_buckets(hidden_size: int) -> dict:
    """transformers' values for DeepSpeed's ``"auto"`` bucket keys (trainer_config_finalize)."""
    h2 = hidden_size * hidden_size
    return {"reduce_bucket_size": h2, "stage3_prefetch_bucket_size": int(0.9 * h2),
            "stage3_param_persistence_threshold": 10 * hidden_size}


def deepspeed_config(sc: Scenario, hidden_size: int) -> dict:
    """The DeepSpeed JSON of a ZeRO-2/3 burst: the Trainer owns batch, accumulation and clipping
    (``"auto"``); no ``optimizer`` block, so DeepSpeed wraps the Trainer's own AdamW."""
    t = sc.train
    buckets = hf_auto_buckets(hidden_size)
    zero: dict = {"stage": t.sharding.caps.zero_stage, "overlap_comm": False, "contiguous_gradients": True,
                  "reduce_bucket_size": buckets["reduce_bucket_size"]}
    if t.sharding is Sharding.ZERO3:
        zero.update(stage3_prefetch_bucket_size=buckets["stage3_prefetch_bucket_size"],
                    stage3_param_persistence_threshold=buckets["stage3_param_persistence_threshold"],
                    stage3_gather_16bit_weights_on_model_save=False)
    else:
        zero.update(allgather_bucket_size=buckets["reduce_bucket_size"])
    if t.offload.optimizer_on_cpu:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if t.offload.params_on_cpu:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    mixed = set() if t.no_autocast else {t.dtype.value, (t.autocast.value if t.autocast else t.dtype.value)}
    return {
        "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": "bf16" in mixed}, "fp16": {"enabled": "fp16" in mixed},
        "zero_optimization": zero,
    }


def accelerate_config(sc: Scenario, ds_path: Path | None, port: int) -> dict:
    """The accelerate config file (``accelerate launch --config_file``) of a sharded burst."""
    t = sc.train
    cfg: dict = {"compute_environment": "LOCAL_MACHINE", "num_machines": 1, "machine_rank": 0,
                 "num_processes": t.gpus, "main_process_port": port, "rdzv_backend": "static",
                 "same_network": True, "use_cpu": t.device is Device.CPU}
    if t.sharding is Sharding.FSDP:
        cfg["distributed_type"] = "FSDP"
        cfg["mixed_precision"] = "no"  # the Trainer's bf16/fp16 flags set it (DeepSpeed: its JSON does)
        cfg["fsdp_config"] = {
            "fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_reshard_after_forward": True, "fsdp_offload_params": t.offload.params_on_cpu,
            "fsdp_state_dict_type": "SHARDED_STATE_DICT", "fsdp_cpu_ram_efficient_loading": False,
            "fsdp_activation_checkpointing": False,
        }
    else:
        cfg["distributed_type"] = "DEEPSPEED"
        cfg["deepspeed_config"] = {"deepspeed_config_file": str(ds_path), "zero3_init_flag": False}
    return cfg


def write_configs(sc: Scenario, run_dir: Path, hidden_size: int, port: int) -> Path:
    """Write ``deepspeed.json`` (ZeRO) and ``accelerate.yaml`` into ``run_dir``; the latter's path.
    YAML is a superset of JSON, so both are written as JSON text."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ds_path = None
    if sc.train.sharding is not Sharding.FSDP:
        ds_path = run_dir / "deepspeed.json"
        ds_path.write_text(json.dumps(deepspeed_config(sc, hidden_size), indent=1))
    acc = run_dir / "accelerate.yaml"
    acc.write_text(json.dumps(accelerate_config(sc, ds_path, port), indent=1))
    return acc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(sc: Scenario) -> dict:
    """The ranks' environment: the bench's, DeepSpeed's CPU accelerator on CPU, and an even share of
    this machine's cores per rank (so that CPU time per rank is one rank's work)."""
    from refplan.harness.processes import child_env

    env = child_env()
    if sc.train.device is Device.CPU:
        env["DS_ACCELERATOR"] = "cpu"
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // sc.train.gpus)))
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    return env


def prepare_dataset(sc: Scenario, run_dir: Path) -> tuple[str, int]:
    """Save the burst's dataset under ``run_dir``; (its directory, the model's hidden size)."""
    from refplan.harness.recipes.common import load_dataset, load_tokenizer
    from refplan.harness.tiny import resolve_model_dir

    model_dir = resolve_model_dir(sc.model)
    tokenizer = load_tokenizer(model_dir)
    path = run_dir / "dataset"
    load_dataset(sc, tokenizer).save_to_disk(str(path))
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return str(path), int(config.get("hidden_size") or config.get("n_embd") or config.get("d_model"))


def run_sharded(sc: Scenario, out_dir: Path, timeout_s: float) -> dict:
    """Launch ``sc`` and wait (at most ``timeout_s``); ``{"ranks": [record per rank], "launch": {...}}``.

    A rank without a record (it crashed, or the launcher ended it when another rank failed) gets a
    ``crash`` record; a timeout kills the whole process group and marks the missing ranks ``timeout``."""
    run_dir = Path(out_dir) / "sharded" / sc.key
    for old in run_dir.glob("rank*.json"):
        old.unlink()
    t0 = time.monotonic()
    dataset_dir, hidden = prepare_dataset(sc, run_dir)
    acc = write_configs(sc, run_dir, hidden, free_port())
    req_path = run_dir / "request.json"
    req_path.write_text(json.dumps({"scenario": sc.as_dict(), "dataset_dir": dataset_dir, "rank_dir": str(run_dir)}))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(acc),
           "-m", "refplan.harness.sharded", str(req_path)]
    with open(run_dir / "launch.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=launch_env(sc), start_new_session=True)
        timed_out = _wait_group(proc, max(1.0, timeout_s - (time.monotonic() - t0)))
    ranks = collect(run_dir, sc.train.gpus, timed_out, proc.returncode)
    return {"ranks": ranks, "launch": {"cmd": cmd, "exit": proc.returncode, "timed_out": timed_out,
                                       "wall_s": time.monotonic() - t0, "dir": str(run_dir)}}


def _wait_group(proc: subprocess.Popen, timeout_s: float) -> bool:
    try:
        proc.wait(timeout=timeout_s)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def collect(run_dir: Path, world: int, timed_out: bool = False, exit_code: int | None = None) -> list[dict]:
    """One record per rank from ``rank<i>.json``, then the cross-rank proof: every rank that trained
    logged the same losses (HF Trainer logs the loss gathered over ranks; unsynchronised processes
    would not agree)."""
    ranks = []
    for r in range(world):
        try:
            rec = json.loads((run_dir / f"rank{r}.json").read_text())
        except (OSError, ValueError):
            status = "timeout" if timed_out else "crash"
            rec = {"status": status, "error": f"rank {r} left no record (launcher exit {exit_code}"
                                              + (", killed at the timeout)" if timed_out else ")")}
        rec["rank"], rec["world_size"] = r, world
        ranks.append(rec)
    ok = [r for r in ranks if r.get("status") == "ok"]
    losses = {json.dumps([round(x, 6) if x is not None else None for x in r.get("losses", [])]) for r in ok}
    if len(losses) > 1:
        for r in ok:
            r.update(status="error", error="not sharded: ranks logged different losses (unsynchronised)")
    if ok and len(ok) < world:  # the survivors' numbers are kept, but the scenario did not run whole
        for r in ok:
            r["error"] = f"{world - len(ok)} of {world} ranks failed"
    return ranks
