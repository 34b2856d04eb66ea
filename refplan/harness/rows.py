"""The bench CSV: one row per scenario, appended and flushed as each scenario finishes.

CSV columns (one row per scenario; bytes are integers, empty means "not measured"):

==========================  ==========================================================================
key                         unique scenario id (readable prefix + hash of every scenario field)
suite                       suite name (``default``, ``ci``, ``custom``)
model                       ``random:<preset>``, a directory or a hub id
family                      ``model_type`` from the model's config.json
method                      dpo, ipo, kto, orpo, simpo
strategy                    separate, unwrap, ref-adapter, precompute, sync, none
finetune                    full, lora, qlora (k-bit settings: see the scenario's optional keys)
ref_dtype                   reference dtype when it differs from the policy's (``separate`` only)
lora_r                      LoRA rank (all linear layers but the LM head, alpha = 2r, dropout 0)
dtype                       dtype the policy is loaded in (fp32, bf16, fp16)
autocast                    mixed-precision compute dtype when it differs from ``dtype``
batch                       per_device_train_batch_size (pairs; examples for KTO)
seq                         padded tokens per sequence as the trainer's batch has it
prompt_len, completion_len  synthetic prompt / completion tokens (seq minus TRL's BOS/EOS)
grad_ckpt                   activation checkpointing on (True) or off
attn                        attention implementation (sdpa, eager, flash)
steps                       optimizer steps timed (the first a warm-up); a row timed in a speed group
                            runs them there and only ``memory_steps`` in its own burst
memory_steps                optimizer steps of the row's own (memory) burst
optim                       optimizer (adamw = transformers' default ``adamw_torch_fused``)
device, device_name         cpu or cuda; CPU model or GPU name
seed, dataset               seed; ``synthetic`` or the dataset given
status                      ok, oom, error, timeout, crash, unsupported
error                       one line: the exception, signal or TRL's refusal
memory_source               ``tracker`` (CPU live tensor bytes) or ``cuda-allocator`` (max_memory_allocated)
peak_bytes                  max of peak_precompute_bytes and peak_train_bytes (loading excluded)
peak_setup_bytes            peak during trainer construction (tokenization, PEFT wrap, prepare)
peak_precompute_bytes       peak during TRL's reference log-prob precompute (empty if none)
peak_train_bytes            peak during ``trainer.train()``
loaded_bytes                live bytes after construction, before the first step
ref_state_bytes             parameters + buffers of the separate reference TRL holds (0 if none)
policy_state_bytes          parameters + buffers of the policy (incl. adapters)
nvml_peak_bytes             NVML device-used peak over precompute + training (CUDA; incl. context)
torch_max_allocated_bytes   torch.cuda.max_memory_allocated over precompute + training (CUDA)
torch_max_reserved_bytes    torch.cuda.max_memory_reserved over precompute + training (CUDA)
rss_peak_bytes              peak resident set size of the scenario process (VmHWM)
median_step_s               median time of the steps after the first (process CPU time on CPU, OpenMP
                            waiting passively; synchronised wall time on CUDA)
timing                      where the step times come from: ``interleaved xN`` (the row's speed group,
                            :mod:`refplan.harness.speed`: its baseline and rows stepped in turn in one
                            process, N timed rounds) or ``burst xN`` (its own burst, N timed steps)
tokens_per_s                policy tokens per second (2*batch*seq for pair methods, batch*seq for KTO)
samples_per_s               batch / median_step_s (pairs or examples)
loss_first, loss_last       training loss of the first and last step
parity_baseline             key of the ``separate`` run this row is compared with
parity_max_abs_diff         max |loss - baseline loss| over the compared steps
ref_logp_max_abs_diff       max |ref log-prob - baseline's| over the compared steps (batch means)
parity_ok                   pass / fail (exactly equivalent strategies), drift (lower-precision or
                            synced reference: reported, not judged), baseline, or empty
est_peak_bytes              refplan's planner estimate for the same TrainSpec
est_error_pct               100 * (est_peak_bytes - peak_bytes) / peak_bytes
seq_seen                    longest input_ids the policy's forward received (checks ``seq``)
wall_s                      wall time of the scenario process
step_spread_pct             100 * (max - min) / median of the timed steps (after the first, warm-up)
speed_vs_separate           > 1: faster than ``separate`` doing the same work in the same run. Interleaved:
                            the median over rounds of separate's step / this row's step of the same round;
                            burst: the two bursts' median step times. Empty without a separate row alike
speed_flag                  ``noisy``: interleaved, the middle half of the paired ratios spreads over 25 %;
                            burst, either row's step spread exceeds :data:`SPREAD_LIMIT_PCT`
gpus, sharding, offload     a sharded burst's ranks, ZeRO stage / FSDP, CPU offload (empty otherwise)
rank, world_size            the rank this row measures (one row per rank) and how many ran
proof                       what proved the run sharded (:mod:`refplan.harness.proof`), or empty
==========================  ==========================================================================
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import threading
from pathlib import Path

from refplan.harness.scenario import Scenario
from refplan.methods import Finetune, Strategy
from refplan.settings import Quant

COLUMNS = [
    "key", "suite", "model", "family", "method", "strategy", "finetune", "ref_dtype", "lora_r", "dtype",
    "autocast", "batch", "seq", "prompt_len", "completion_len", "grad_ckpt", "attn", "steps", "optim",
    "device", "device_name", "seed", "dataset", "status", "error", "memory_source", "peak_bytes",
    "peak_setup_bytes", "peak_precompute_bytes", "peak_train_bytes", "loaded_bytes", "ref_state_bytes",
    "policy_state_bytes", "nvml_peak_bytes", "torch_max_allocated_bytes", "torch_max_reserved_bytes",
    "rss_peak_bytes", "median_step_s", "tokens_per_s", "samples_per_s", "loss_first", "loss_last",
    "parity_baseline", "parity_max_abs_diff", "ref_logp_max_abs_diff", "parity_ok", "est_peak_bytes",
    "est_error_pct", "seq_seen", "wall_s", "step_spread_pct", "speed_vs_separate", "speed_flag",
    "gpus", "sharding", "offload", "rank", "world_size", "proof", "memory_steps", "timing",
]


#: |diff| tolerance of exactly equivalent strategies, by policy dtype (see :func:`parity`). Reference
#: log-probs are sums over a completion (hundreds to thousands in magnitude), so they are judged
#: relative to max(1, |value|).
PARITY_TOL = {"fp32": 1e-5, "bf16": 1e-2, "fp16": 1e-2}


def read_done(csv_path: Path) -> dict[str, dict]:
    """Rows already in the CSV, by key (for --resume and the report)."""
    if not csv_path.exists():
        return {}
    with open(csv_path, newline="") as f:
        return {row["key"]: row for row in csv.DictReader(f)}


def append_row(csv_path: Path, row: dict) -> None:
    """Append one row (and the header to a new file) and flush it to disk. A Ctrl-C meanwhile is
    held until the row is whole, then raised."""
    new = not csv_path.exists() or csv_path.stat().st_size == 0
    with _ctrl_c_held(), open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: _cell(row.get(k)) for k in COLUMNS})
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def _ctrl_c_held():
    """Record SIGINT instead of raising it inside the block; deliver it after the block.

    A Python-level handler (not a signal mask): whichever thread the kernel picks (rich's refresh
    thread, say), Python runs the handler in the main thread, so holding it there is enough.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield  # not ours to hold: off the main thread, or SIGINT ignored / default / set outside Python
        return
    held = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        previous(signal.SIGINT, held[0])


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return v


def scenario_row(sc: Scenario, suite: str) -> dict:
    d = sc.as_dict()
    d.update(key=sc.key, suite=suite, prompt_len=sc.prompt_len, completion_len=sc.completion_len,
             ref_dtype=d["ref_dtype"] or "", autocast=d["autocast"] or "")
    return d


def parity(sc: Scenario, rec: dict, base: dict | None) -> dict:
    """Compare a finished scenario's losses and reference log-probs with its baseline's sidecar.

    fp32: every step's loss within ``PARITY_TOL`` and every step's reference log-probs within it
    relative to max(1, |value|). Half precision: the reference log-probs (relative) and the first
    step's loss only -- after one bf16 optimizer step, a 1-ulp difference in a reference sum (TRL's
    precompute batches rows in another order) can round a weight differently, and the later losses
    drift apart for reasons that are not the strategy's. The max loss difference over all steps is
    reported either way. A synced reference moves after the first step: only step 0 is compared.
    """
    t = sc.train
    if sc.baseline is None:
        return {"parity_ok": "baseline" if t.method.caps.needs_reference else ""}
    out = {"parity_baseline": sc.baseline.key}
    if base is None or base.get("status") != "ok" or rec.get("status") != "ok":
        return out
    steps = min(len(rec["losses"]), len(base["losses"]))
    if t.strategy is Strategy.SYNC:
        steps = min(steps, 1)
    judged = steps if t.dtype.value == "fp32" else min(steps, 1)
    loss_diff = [abs(a - b) for a, b in zip(rec["losses"][:steps], base["losses"][:steps])
                 if a is not None and b is not None]
    ref_abs, ref_rel = [], []
    for mine, theirs in zip(rec.get("ref_logps", [])[:steps], base.get("ref_logps", [])[:steps]):
        for a, b in zip(mine, theirs):
            ref_abs.append(abs(a - b))
            ref_rel.append(abs(a - b) / max(1.0, abs(b)))
    out["parity_max_abs_diff"] = max(loss_diff) if loss_diff else None
    out["ref_logp_max_abs_diff"] = max(ref_abs) if ref_abs else None
    if t.ref_dtype is not None or t.ref_quant is not Quant.NONE or t.finetune is Finetune.QLORA:
        # a lower-precision or k-bit reference is expected to drift (a QLoRA policy's reference is its
        # k-bit base, its baseline's a full-precision copy): report it
        out["parity_ok"] = "drift"
        return out
    tol = PARITY_TOL[t.dtype.value]
    ok = bool(loss_diff) and max(loss_diff[:judged]) <= tol and all(r <= tol for r in ref_rel)
    out["parity_ok"] = "pass" if ok else "fail"
    return out


#: a row whose timed steps spread more than this, 100 * (max - min) / median, is flagged ``noisy``: on a
#: shared machine one slow step (another process's burst) moves a 5-step median little, but a spread this
#: wide says the row's speed is not to be read closely
SPREAD_LIMIT_PCT = 25.0


def speed(sc: Scenario, rec: dict | None, base: dict | None) -> dict:
    """``speed_vs_separate`` -- the baseline's median step time over this row's (> 1: faster than the
    ``separate`` row doing the same work in the same run; 1.0 on that row itself) -- and ``speed_flag``
    (``noisy`` when either row's spread exceeds :data:`SPREAD_LIMIT_PCT`). Both empty without timed steps
    or without a ``separate`` row alike (reference-free methods)."""
    def timing(r):
        if not r or r.get("status", "ok") != "ok" or not r.get("median_step_s"):
            return None
        return float(r["median_step_s"]), float(r.get("step_spread_pct") or 0.0)

    mine = timing(rec)
    if mine is None:
        return {}
    if sc.baseline is None:
        if sc.train.strategy is not Strategy.SEPARATE:
            return {}
        theirs = mine
    else:
        theirs = timing(base)
        if theirs is None:
            return {}
    noisy = max(mine[1], theirs[1]) > SPREAD_LIMIT_PCT
    return {"speed_vs_separate": theirs[0] / mine[0], "speed_flag": "noisy" if noisy else ""}


def timing(sc: Scenario, rec: dict | None, base: dict | None, group: dict | None) -> dict:
    """A row's timing columns: its speed group's (:func:`refplan.harness.speed.group_timing`: paired,
    interleaved) when ``group`` times it, else its own burst's (:func:`speed`). ``timing`` says which
    and over how many steps; tokens/s and samples/s follow the median step time used."""
    from refplan.harness.speed import group_timing

    out = speed(sc, rec, base)
    n = len((rec or {}).get("step_s") or [])
    if rec and rec.get("median_step_s"):
        out["timing"] = f"burst x{max(n - 1, 1)}"
    base_key = sc.baseline.key if sc.baseline is not None else sc.key
    grouped = group_timing(group, sc.key, base_key) if group else {}
    if grouped:
        own = float(rec["median_step_s"]) if rec and rec.get("median_step_s") else None
        for col in ("tokens_per_s", "samples_per_s"):
            if own and rec.get(col):
                out[col] = float(rec[col]) * own / grouped["median_step_s"]
        out.update({k: v for k, v in grouped.items() if v is not None})
    return out


def rescore(out_dir: Path) -> int:
    """Recompute the parity columns of ``bench.csv`` from the sidecars (after a resumed run whose
    baseline finished later, or a change of tolerance). Returns the number of rows changed."""
    csv_path = Path(out_dir) / "bench.csv"
    rows = list(read_done(csv_path).values())
    changed = 0
    for row in rows:
        rec = read_json(Path(out_dir) / "losses" / f"{row['key']}.json")
        if rec is None or "scenario" not in rec:
            continue
        sc = Scenario.from_dict(rec["scenario"])
        base = read_json(Path(out_dir) / "losses" / f"{sc.baseline.key}.json") if sc.baseline else None
        group = read_json(Path(out_dir) / "speed" / f"{(sc.baseline or sc).key}.json")
        new = {k: _cell(v) for k, v in {**parity(sc, rec, base), **timing(sc, rec, base, group)}.items()}
        if any(str(row.get(k, "")) != str(v) for k, v in new.items()):
            row.update(new)
            changed += 1
    tmp = csv_path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, csv_path)
    return changed


def rank_key(key: str, rank: int) -> str:
    """The CSV key of one rank's row of a sharded scenario."""
    return f"{key}-rank{rank}"


def rank_rows(sc: Scenario, rec: dict | None, suite: str, reply: dict, timeout_s: float) -> list[dict]:
    """One row per rank of a sharded scenario (``rec`` from :func:`refplan.harness.launch.run_sharded`)."""
    base = scenario_row(sc, suite)
    world = sc.train.gpus
    ranks = (rec or {}).get("ranks") or [{"status": "timeout" if reply.get("timed_out") else "crash",
                                          "error": "the launcher left no result"} for _ in range(world)]
    rows = []
    for i, r in enumerate(ranks):
        row = {**base, **{k: r.get(k) for k in COLUMNS if k in r}}
        row.update(key=rank_key(sc.key, i), rank=i, world_size=world, family=family_of(r.get("model_dir")),
                   est_error_pct=estimate_error(r), wall_s=(rec or {}).get("launch", {}).get("wall_s"),
                   proof=json.dumps(r["proof"], sort_keys=True) if r.get("proof") else "")
        if reply.get("timed_out") and row.get("status") == "ok":
            row.update(status="timeout", error=f"no result after {timeout_s:.0f} s (killed)")
        rows.append(row)
    return rows


def estimate_error(rec: dict) -> float | None:
    est, peak = rec.get("est_peak_bytes"), rec.get("peak_bytes")
    if est in (None, "") or not peak:
        return None
    return 100.0 * (float(est) - float(peak)) / float(peak)


def family_of(model_dir: str | None) -> str:
    if not model_dir:
        return ""
    try:
        with open(Path(model_dir) / "config.json") as f:
            return json.load(f).get("model_type", "")
    except (OSError, ValueError):
        return ""


def read_json(path: Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
