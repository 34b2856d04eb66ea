"""Run a bench matrix: each scenario in its own process, one CSV row per scenario.

Isolation (:mod:`refplan.harness.processes`): a fork of a pre-imported server on CPU, a fresh
interpreter on CUDA. Either way the scenario has a timeout; an OOM, crash or timeout becomes the
row's ``status`` and the matrix goes on. Rows (:mod:`refplan.harness.rows`, where the columns are
documented) are appended and flushed as each scenario finishes, so Ctrl-C leaves a valid CSV, and
``--resume`` skips keys already in it.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from refplan.harness.display import Display
from refplan.harness.processes import ForkServer, SpawnRunner
from refplan.harness.rows import (COLUMNS, append_row, estimate_error, family_of, parity, rank_key, rank_rows,
                                  read_done, read_json, scenario_row, speed, timing)
from refplan.harness.scenario import Scenario
from refplan.harness.speed import MEMORY_STEPS
from refplan.harness.suites import Unsupported


@dataclass
class RunOptions:
    """How a matrix runs: where its CSV goes, per-scenario timeout, isolation, what is shown."""

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
    todo = [it for it in items if _done_rows(it, done) is None]
    rows = [row for it in items for row in (_done_rows(it, done) or [])]
    cuda = any(isinstance(it, Scenario) and it.train.device.value == "cuda" for it in todo)
    isolation = opts.isolation if opts.isolation != "auto" else ("spawn" if cuda else "fork")
    log_path = out / "bench.log"

    groups = speed_groups(items)
    grouped = {sc.key for members in groups.values() for sc in members}
    display = Display(len(items), len(rows), enabled=opts.progress)
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
                if it.key in groups and not _group_done(out, groups[it.key]):
                    _run_group(groups[it.key], runner, opts, out, display)
                for row in _run_one(it, runner, opts, out, display, grouped=it.key in grouped):
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


def _done_rows(it, done: dict) -> list[dict] | None:
    """The rows of ``it`` already in the CSV (a sharded scenario's: every rank's), or None."""
    if isinstance(it, Scenario) and it.sharded:
        keys = [rank_key(it.key, r) for r in range(it.train.gpus)]
        return [done[k] for k in keys] if all(k in done for k in keys) else None
    return [done[it.key]] if it.key in done else None


def speed_groups(items: list) -> dict[str, list[Scenario]]:
    """The speed groups of a matrix (:mod:`refplan.harness.speed`), by baseline key: each single-process
    CPU ``separate`` baseline with the scenarios compared with it, when it has any. Sharded and CUDA
    scenarios time their own bursts."""
    scs = [it for it in items if isinstance(it, Scenario) and not it.sharded and it.train.device.value == "cpu"]
    groups = {sc.key: [sc] for sc in scs if sc.baseline is None and sc.train.strategy.value == "separate"}
    for sc in scs:
        if sc.baseline is not None and sc.baseline.key in groups:
            groups[sc.baseline.key].append(sc)
    return {k: v for k, v in groups.items() if len(v) > 1}


def _group_path(out: Path, base_key: str) -> Path:
    return out / "speed" / f"{base_key}.json"


def _group_done(out: Path, members: list[Scenario]) -> bool:
    """A resumed run reuses a group timed before when it holds every member."""
    done = read_json(_group_path(out, members[0].key))
    return bool(done) and all(sc.key in (done.get("step_s") or {}) for sc in members)


def _run_group(members: list[Scenario], runner, opts: RunOptions, out: Path, display) -> None:
    """Time a speed group in one process (its result: ``speed/<baseline key>.json``). A group that
    fails leaves no file: its rows then carry their own bursts' timing."""
    path = _group_path(out, members[0].key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    rounds = max(sc.steps for sc in members)
    request = {"speed_group": [sc.as_dict() for sc in members], "rounds": rounds, "result_path": str(path),
               "timeout_s": opts.timeout_s * len(members)}
    display.note(f"timing {len(members)} scenarios interleaved ({rounds} steps each)...")
    runner.submit(request)
    reply = None
    while reply is None:
        reply = runner.poll(0.25)
    if not path.exists():
        display.note(f"speed group of {members[0].key} ended without a result ({reply}); see bench.log")


def _run_one(sc: Scenario, runner, opts: RunOptions, out: Path, display, grouped: bool = False) -> list[dict]:
    """The rows of one scenario: one, or one per rank of a sharded scenario. A ``grouped`` scenario is
    timed in its speed group; its own burst runs :data:`refplan.harness.speed.MEMORY_STEPS` steps."""
    result_path = out / "losses" / f"{sc.key}.json"
    progress_path = out / ".progress"
    result_path.unlink(missing_ok=True)
    progress_path.write_text("")
    request = {"scenario": sc.as_dict(), "out_dir": str(out), "result_path": str(result_path),
               "progress_path": str(progress_path), "timeout_s": opts.timeout_s, "track": opts.track,
               "memory_steps": MEMORY_STEPS if grouped else None}
    t0 = time.monotonic()
    display.start(sc)
    runner.submit(request)
    reply = None
    while reply is None:
        reply = runner.poll(0.25)
        display.step(_read_progress(progress_path), time.monotonic() - t0)
    wall = time.monotonic() - t0
    rec = read_json(result_path)
    if sc.sharded:
        rows = rank_rows(sc, rec, opts.suite, reply, opts.timeout_s)
        base_ranks = _sidecar_ranks(out, sc.baseline.key) if sc.baseline is not None else []
        mine = (rec or {}).get("ranks") or []
        for i, row in enumerate(rows):
            row.update(speed(sc, mine[i] if i < len(mine) else None, base_ranks[i] if i < len(base_ranks) else None))
        return rows
    row = scenario_row(sc, opts.suite)
    if rec is None:
        if reply.get("timed_out"):
            row.update(status="timeout", error=f"no result after {opts.timeout_s:.0f} s (killed)")
        else:
            sig = reply.get("signal")
            row.update(status="crash", error=f"process ended without a result (exit {reply.get('exit')}"
                                             + (f", signal {signal.Signals(sig).name})" if sig else ")"))
        row["wall_s"] = wall
        return [row]
    base = read_json(out / "losses" / f"{sc.baseline.key}.json") if sc.baseline is not None else None
    row.update({k: rec.get(k) for k in COLUMNS if k in rec})
    row.update(parity(sc, rec, base))
    group = read_json(_group_path(out, (sc.baseline or sc).key)) if grouped else None
    row.update(timing(sc, rec, base, group))
    row["family"] = family_of(rec.get("model_dir"))
    row["device_name"] = rec.get("env", {}).get("device_name", "")
    row["est_error_pct"] = estimate_error(rec)
    row["wall_s"] = wall
    if rec.get("env") and not (out / "env.json").exists():
        (out / "env.json").write_text(json.dumps(rec["env"], indent=1))
    return [row]


def _sidecar_ranks(out: Path, key: str) -> list[dict]:
    """The per-rank records of a finished sharded scenario's sidecar (empty if it has none)."""
    return (read_json(out / "losses" / f"{key}.json") or {}).get("ranks") or []


def _read_progress(path: Path) -> tuple[int, int] | None:
    try:
        text = path.read_text().strip().split()
        return (int(text[0]), int(text[1])) if len(text) == 2 else None
    except (OSError, ValueError):
        return None
