"""Expand a bench matrix, run each scenario in its own process, append one CSV row per scenario.

Isolation. On CPU a server process (``python -m refplan.harness.server``) imports torch,
transformers, peft and trl once and ``fork``s a child per scenario (the ~5 s import is paid once; no
torch op has run in the server, so no thread pool is inherited). On CUDA each scenario is a fresh
``python -m refplan.harness.child`` (CUDA cannot be used after ``fork`` of a process that touched
it). Either way the scenario has a timeout; an OOM, crash or timeout becomes the row's ``status``
and the matrix goes on. Rows are appended and flushed as each scenario finishes, so Ctrl-C leaves
a valid CSV, and ``--resume`` skips keys already in it.

CSV columns (one row per scenario; bytes are integers, empty means "not measured"):

==========================  ==========================================================================
key                         unique scenario id (readable prefix + hash of every scenario field)
suite                       suite name (``default``, ``ci``, ``custom``)
model                       ``random:<preset>``, a directory or a hub id
family                      ``model_type`` from the model's config.json
method                      dpo, ipo, kto, orpo, simpo
strategy                    separate, unwrap, ref-adapter, precompute, sync, none
finetune                    full, lora
ref_dtype                   reference dtype when it differs from the policy's (``separate`` only)
lora_r                      LoRA rank (all linear layers but the LM head, alpha = 2r, dropout 0)
dtype                       dtype the policy is loaded in (fp32, bf16, fp16)
autocast                    mixed-precision compute dtype when it differs from ``dtype``
batch                       per_device_train_batch_size (pairs; examples for KTO)
seq                         padded tokens per sequence as the trainer's batch has it
prompt_len, completion_len  synthetic prompt / completion tokens (seq minus TRL's BOS/EOS)
grad_ckpt                   activation checkpointing on (True) or off
attn                        attention implementation (sdpa, eager, flash)
steps                       optimizer steps in the burst
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
median_step_s               median wall time of the steps after the first
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
==========================  ==========================================================================
"""

from __future__ import annotations

import csv
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from refplan.errors import PlanError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from refplan.harness.scenario import Scenario
from refplan.methods import Finetune, Method, Strategy, applicable_strategies, check_combination

COLUMNS = [
    "key", "suite", "model", "family", "method", "strategy", "finetune", "ref_dtype", "lora_r", "dtype",
    "autocast", "batch", "seq", "prompt_len", "completion_len", "grad_ckpt", "attn", "steps", "optim",
    "device", "device_name", "seed", "dataset", "status", "error", "memory_source", "peak_bytes",
    "peak_setup_bytes", "peak_precompute_bytes", "peak_train_bytes", "loaded_bytes", "ref_state_bytes",
    "policy_state_bytes", "nvml_peak_bytes", "torch_max_allocated_bytes", "torch_max_reserved_bytes",
    "rss_peak_bytes", "median_step_s", "tokens_per_s", "samples_per_s", "loss_first", "loss_last",
    "parity_baseline", "parity_max_abs_diff", "ref_logp_max_abs_diff", "parity_ok", "est_peak_bytes",
    "est_error_pct", "seq_seen", "wall_s",
]


#: |diff| tolerance of exactly equivalent strategies, by policy dtype (see :func:`parity`). Reference
#: log-probs are sums over a completion (hundreds to thousands in magnitude), so they are judged
#: relative to max(1, |value|).
PARITY_TOL = {"fp32": 1e-5, "bf16": 1e-2, "fp16": 1e-2}


@dataclass(frozen=True)
class Unsupported:
    """A matrix cell TRL cannot run: it becomes a row with status ``unsupported`` and the reason."""

    scenario: dict
    reason: str

    @property
    def key(self) -> str:
        s = self.scenario
        return f"{s['method']}-{s['strategy']}-{s.get('finetune', 'full')}-unsupported"


# --------------------------------------------------------------------------------------------------
# matrix
# --------------------------------------------------------------------------------------------------

def shipped_suites() -> dict:
    """The suites installed with refplan (``refplan/suites/<name>.toml``), by name."""
    folder = resources.files("refplan") / "suites"
    return {f.name.removesuffix(".toml"): f for f in folder.iterdir() if f.name.endswith(".toml")}


def load_suite(name_or_path: str) -> dict:
    """A suite by name (one of :func:`shipped_suites`) or a TOML file's path."""
    shipped = shipped_suites()
    path = Path(name_or_path)
    if not path.suffix and name_or_path in shipped:
        source, name = shipped[name_or_path], name_or_path
    elif path.is_file():
        source, name = path, path.stem
    else:
        raise PlanError("--suite", f"no suite {name_or_path!r} (known: {', '.join(sorted(shipped))})")
    try:
        suite = tomllib.loads(source.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise PlanError("--suite", f"{source}: {e}") from None
    suite.setdefault("name", name)
    return suite


def expand(suite: dict, overrides: dict | None = None) -> list[Scenario | Unsupported]:
    """Every scenario of a suite, baselines ('separate' at the policy dtype) first within each group.

    ``overrides`` (from CLI flags) replace suite defaults. A suite cell TRL cannot run becomes an
    :class:`Unsupported` row; the ``[[unsupported]]`` table lists such cells on purpose, so the
    report says why they are missing.
    """
    defaults = {**suite.get("defaults", {}), **(overrides or {})}
    out: list[Scenario | Unsupported] = []
    seen = set()
    for block in suite.get("matrix", []):
        methods = [Method(m) for m in block.get("methods", [m.value for m in Method])]
        finetunes = [Finetune(f) for f in block.get("finetune", ["full"])]
        for m in methods:
            for ft in finetunes:
                strategies = block.get("strategies", "applicable")
                names = ([s.value for s in applicable_strategies(m, ft)] if strategies == "applicable"
                         else strategies)
                cells = [(Strategy(s), None) for s in names]
                if Strategy.SEPARATE.value in names:
                    cells += [(Strategy.SEPARATE, d) for d in block.get("ref_dtypes", [])]
                for strat, ref_dtype in cells:
                    params = {**defaults, **block.get("set", {}), "method": m, "strategy": strat,
                              "finetune": ft, "ref_dtype": ref_dtype}
                    item = _make(params)
                    if item.key not in seen:
                        seen.add(item.key)
                        out.append(item)
    for cell in suite.get("unsupported", []):
        item = _make({**defaults, **cell})
        if item.key not in seen:
            seen.add(item.key)
            out.append(item)
    return order_baselines_first(out)


def _make(params: dict) -> Scenario | Unsupported:
    try:
        return Scenario.from_dict(params)
    except PlanError as e:
        plain = {k: (v.value if hasattr(v, "value") else v) for k, v in params.items()}
        return Unsupported(plain, f"{e.where}: {e.message}")


def order_baselines_first(items: list) -> list:
    """Stable order in which every parity baseline runs before the scenarios compared with it."""
    def rank(item):
        if isinstance(item, Scenario) and item.baseline is None:
            return 0
        return 1
    return sorted(items, key=rank)


def scenarios_from_flags(methods, strategies, finetunes, defaults: dict, explicit=()) -> list[Scenario]:
    """The matrix named by --method/--strategy/--finetune.

    Combinations TRL cannot run are left out; but when a value the user named explicitly (``explicit``
    holds "method", "strategy", "finetune") has no runnable combination at all, that is an error
    naming the flag (exit 2), e.g. ``--strategy unwrap --finetune full``.
    """
    out, refusals = [], []
    for m in methods:
        for ft in finetunes:
            for s in (strategies or applicable_strategies(m, ft)):
                try:
                    check_combination(m, s, ft)
                except PlanError as e:
                    refusals.append(((m, s, ft), e))
                    continue
                out.append(Scenario.from_dict({**defaults, "method": m, "strategy": s, "finetune": ft}))
    for axis, values, index in (("method", methods, 0), ("strategy", strategies, 1), ("finetune", finetunes, 2)):
        if axis not in explicit or not values:
            continue
        for v in values:
            if not any((sc.method, sc.strategy, sc.finetune)[index] is v for sc in out):
                raise next(e for combo, e in refusals if combo[index] is v)
    if not out and refusals:
        raise refusals[0][1]
    return order_baselines_first(out)


# --------------------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------------------

def _child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("TQDM_DISABLE", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class ForkServer:
    """A pre-imported process that forks one child per scenario (``refplan.harness.server``)."""

    def __init__(self, log_path: Path):
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "refplan.harness.server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, env=_child_env(), start_new_session=False,
        )
        ready = self._readline(timeout=180)
        if not ready or json.loads(ready).get("ready") is not True:
            self.close()
            raise RuntimeError(f"bench server failed to start (see {log_path})")

    def _readline(self, timeout: float | None) -> str | None:
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            return None
        line = self.proc.stdout.readline()
        return line.decode() if line else None

    def submit(self, request: dict) -> None:
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()

    def poll(self, timeout: float) -> dict | None:
        line = self._readline(timeout)
        if line is None:
            if self.proc.poll() is not None:
                raise RuntimeError("bench server exited")
            return None
        return json.loads(line)

    def close(self) -> None:
        """End the server; a scenario still in flight (Ctrl-C) is killed with it."""
        if self.proc.poll() is None:
            with _suppress():
                self.proc.stdin.close()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class SpawnRunner:
    """One fresh interpreter per scenario (CUDA)."""

    def __init__(self, log_path: Path):
        self._log_path = log_path
        self.proc = None

    def submit(self, request: dict) -> None:
        self._log = open(self._log_path, "ab")
        self._deadline = time.monotonic() + request["timeout_s"]
        self.proc = subprocess.Popen([sys.executable, "-m", "refplan.harness.child", json.dumps(request)],
                                     stdout=self._log, stderr=self._log, env=_child_env())

    def poll(self, timeout: float) -> dict | None:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if time.monotonic() < self._deadline:
                return None
            self.proc.kill()
            self.proc.wait()
            self._log.close()
            return {"timed_out": True, "exit": None, "signal": signal.SIGKILL}
        self._log.close()
        return {"timed_out": False, "exit": code if code >= 0 else None, "signal": -code if code < 0 else None}

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


# --------------------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------------------

def read_done(csv_path: Path) -> dict[str, dict]:
    """Rows already in the CSV, by key (for --resume and the report)."""
    if not csv_path.exists():
        return {}
    with open(csv_path, newline="") as f:
        return {row["key"]: row for row in csv.DictReader(f)}


def append_row(csv_path: Path, row: dict) -> None:
    new = not csv_path.exists() or csv_path.stat().st_size == 0
    with open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: _cell(row.get(k)) for k in COLUMNS})
        f.flush()
        os.fsync(f.fileno())


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return v


def scenario_row(sc: Scenario, suite: str) -> dict:
    d = sc.as_dict()
    d.update(key=sc.key, suite=suite, prompt_len=sc.prompt_len, completion_len=sc.completion_len,
             ref_dtype=sc.ref_dtype or "", autocast=sc.autocast or "")
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
    if sc.baseline is None:
        return {"parity_ok": "baseline" if sc.method.caps.needs_reference else ""}
    out = {"parity_baseline": sc.baseline.key}
    if base is None or base.get("status") != "ok" or rec.get("status") != "ok":
        return out
    steps = min(len(rec["losses"]), len(base["losses"]))
    if sc.strategy is Strategy.SYNC:
        steps = min(steps, 1)
    judged = steps if sc.dtype == "fp32" else min(steps, 1)
    loss_diff = [abs(a - b) for a, b in zip(rec["losses"][:steps], base["losses"][:steps])
                 if a is not None and b is not None]
    ref_abs, ref_rel = [], []
    for mine, theirs in zip(rec.get("ref_logps", [])[:steps], base.get("ref_logps", [])[:steps]):
        for a, b in zip(mine, theirs):
            ref_abs.append(abs(a - b))
            ref_rel.append(abs(a - b) / max(1.0, abs(b)))
    out["parity_max_abs_diff"] = max(loss_diff) if loss_diff else None
    out["ref_logp_max_abs_diff"] = max(ref_abs) if ref_abs else None
    if sc.ref_dtype is not None:  # a lower-precision reference is expected to drift: report it
        out["parity_ok"] = "drift"
        return out
    tol = PARITY_TOL[sc.dtype]
    ok = bool(loss_diff) and max(loss_diff[:judged]) <= tol and all(r <= tol for r in ref_rel)
    out["parity_ok"] = "pass" if ok else "fail"
    return out


def rescore(out_dir: Path) -> int:
    """Recompute the parity columns of ``bench.csv`` from the sidecars (after a resumed run whose
    baseline finished later, or a change of tolerance). Returns the number of rows changed."""
    csv_path = Path(out_dir) / "bench.csv"
    rows = list(read_done(csv_path).values())
    changed = 0
    for row in rows:
        rec = _read_json(Path(out_dir) / "losses" / f"{row['key']}.json")
        if rec is None or "scenario" not in rec:
            continue
        sc = Scenario.from_dict(rec["scenario"])
        base = _read_json(Path(out_dir) / "losses" / f"{sc.baseline.key}.json") if sc.baseline else None
        new = {k: _cell(v) for k, v in parity(sc, rec, base).items()}
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


def estimate_error(rec: dict) -> float | None:
    est, peak = rec.get("est_peak_bytes"), rec.get("peak_bytes")
    if est in (None, "") or not peak:
        return None
    return 100.0 * (float(est) - float(peak)) / float(peak)


def _family(model_dir: str | None) -> str:
    if not model_dir:
        return ""
    try:
        with open(Path(model_dir) / "config.json") as f:
            return json.load(f).get("model_type", "")
    except (OSError, ValueError):
        return ""


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------

@dataclass
class RunOptions:
    out_dir: Path
    suite: str = "default"
    timeout_s: float = 300.0
    resume: bool = False
    isolation: str = "auto"  # auto (fork on CPU, spawn on CUDA), fork, spawn
    track: bool = True
    progress: bool = True
    report: bool = True


def run_matrix(items: list[Scenario | Unsupported], opts: RunOptions) -> list[dict]:
    """Run every item; return the rows written (resumed rows included). Safe to interrupt."""
    out = Path(opts.out_dir)
    (out / "losses").mkdir(parents=True, exist_ok=True)
    csv_path = out / "bench.csv"
    done = read_done(csv_path) if opts.resume else {}
    if not opts.resume and csv_path.exists():
        csv_path.unlink()
    todo = [it for it in items if it.key not in done]
    rows = [done[it.key] for it in items if it.key in done]
    cuda = any(isinstance(it, Scenario) and it.device == "cuda" for it in todo)
    isolation = opts.isolation if opts.isolation != "auto" else ("spawn" if cuda else "fork")
    log_path = out / "bench.log"

    display = _Display(len(items), len(rows), enabled=opts.progress)
    runner = None
    try:
        with display:
            for it in todo:
                if isinstance(it, Unsupported):
                    row = {**{k: v for k, v in it.scenario.items()}, "key": it.key, "suite": opts.suite,
                           "status": "unsupported", "error": it.reason}
                    append_row(csv_path, row)
                    rows.append(row)
                    display.finished(row)
                    continue
                if runner is None:
                    display.note("starting bench worker (imports torch, transformers, trl)...")
                    runner = ForkServer(log_path) if isolation == "fork" else SpawnRunner(log_path)
                row = _run_one(it, runner, opts, out, display)
                append_row(csv_path, row)
                rows.append(row)
                display.finished(row)
    finally:
        if runner is not None:
            runner.close()
        (out / ".progress").unlink(missing_ok=True)
    if opts.report:
        from refplan.harness import report

        report.write_all(out)
    return rows


def _run_one(sc: Scenario, runner, opts: RunOptions, out: Path, display) -> dict:
    result_path = out / "losses" / f"{sc.key}.json"
    progress_path = out / ".progress"
    with _suppress():
        result_path.unlink()
    progress_path.write_text("")
    request = {"scenario": sc.as_dict(), "out_dir": str(out), "result_path": str(result_path),
               "progress_path": str(progress_path), "timeout_s": opts.timeout_s, "track": opts.track}
    t0 = time.monotonic()
    display.start(sc)
    runner.submit(request)
    reply = None
    while reply is None:
        reply = runner.poll(0.25)
        display.step(_read_progress(progress_path), time.monotonic() - t0)
    wall = time.monotonic() - t0
    rec = _read_json(result_path)
    row = scenario_row(sc, opts.suite)
    if rec is None:
        if reply.get("timed_out"):
            row.update(status="timeout", error=f"no result after {opts.timeout_s:.0f} s (killed)")
        else:
            sig = reply.get("signal")
            row.update(status="crash", error=f"process ended without a result (exit {reply.get('exit')}"
                                             + (f", signal {signal.Signals(sig).name})" if sig else ")"))
        row["wall_s"] = wall
        return row
    base = _read_json(out / "losses" / f"{sc.baseline.key}.json") if sc.baseline is not None else None
    row.update({k: rec.get(k) for k in COLUMNS if k in rec})
    row.update(parity(sc, rec, base))
    row["family"] = _family(rec.get("model_dir"))
    row["device_name"] = rec.get("env", {}).get("device_name", "")
    row["est_error_pct"] = estimate_error(rec)
    row["wall_s"] = wall
    if rec.get("env") and not (out / "env.json").exists():
        (out / "env.json").write_text(json.dumps(rec["env"], indent=1))
    return row


def _read_json(path: Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _read_progress(path: Path) -> tuple[int, int] | None:
    try:
        text = path.read_text().strip().split()
        return (int(text[0]), int(text[1])) if len(text) == 2 else None
    except (OSError, ValueError):
        return None


class _Display:
    """rich progress: overall scenarios (with ETA), the current scenario's step and elapsed time."""

    def __init__(self, total: int, done: int, enabled: bool = True):
        self.enabled = enabled
        self.total, self.done = total, done

    def __enter__(self):
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=self.console, transient=False)
        self.progress.__enter__()
        self.overall = self.progress.add_task("scenarios", total=self.total, completed=self.done)
        self.current = self.progress.add_task("", total=1, visible=False)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.__exit__(*exc)
        return False

    def note(self, text: str) -> None:
        if self.enabled:
            self.progress.console.print(f"[dim]{text}[/dim]")

    def start(self, sc: Scenario) -> None:
        if self.enabled:
            ref = f" ref {sc.ref_dtype}" if sc.ref_dtype else ""
            self.progress.reset(self.current, total=sc.steps, completed=0, visible=True,
                                description=f"  {sc.method.value} {sc.strategy.value}{ref} {sc.finetune.value}: step")

    def step(self, prog: tuple[int, int] | None, elapsed: float) -> None:
        if self.enabled and prog is not None:
            self.progress.update(self.current, completed=prog[0], total=max(prog[1], 1))

    def finished(self, row: dict) -> None:
        if not self.enabled:
            return
        self.progress.advance(self.overall)
        status = row.get("status")
        colour = {"ok": "green", "unsupported": "yellow"}.get(status, "red")
        peak = row.get("peak_bytes")
        peak_txt = f"{int(float(peak)) / 2**20:8.1f} MiB" if peak not in (None, "") else " " * 12
        self.progress.console.print(f"[{colour}]{status:>11}[/{colour}] {peak_txt}  {row['key']}")
        if status != "ok":
            self.progress.console.print(f"            [dim]{row.get('error', '')}[/dim]")
