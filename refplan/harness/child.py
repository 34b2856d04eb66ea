"""Run one bench request in this process and write its result JSON (the scenario's sidecar).

Used by the fork server (one forked child per scenario) and, for CUDA, as a fresh interpreter:
``python -m refplan.harness.child REQUEST_JSON``. The request names the scenario, the output
directory, the result path and a progress file the runner polls ("step total").
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from refplan.harness.scenario import Scenario


def run_request(req: dict) -> int:
    from refplan.harness.burst import planner_estimate, run_burst
    from refplan.harness.gpu import environment

    if "speed_group" in req:
        return _run_speed_group(req)
    sc = Scenario.from_dict(req["scenario"])
    _inject_fault(sc.key)
    progress_path = req.get("progress_path")

    def progress(step: int, total: int) -> None:
        if progress_path:
            with open(progress_path, "w") as f:
                f.write(f"{step} {total}\n")

    if sc.sharded:  # N ranks through accelerate launch, one record each
        from refplan.harness.launch import run_sharded

        rec = run_sharded(sc, Path(req["out_dir"]), float(req.get("timeout_s", 300)) * 0.9)
        est = planner_estimate(sc, rec["ranks"][0].get("model_dir") if rec["ranks"] else None)
        for r in rec["ranks"]:
            r["est_peak_bytes"] = est
    else:
        # a scenario timed in its speed group (refplan.harness.speed) runs only the steps its memory needs
        steps = min(sc.steps, int(req.get("memory_steps") or sc.steps))
        rec = run_burst(dataclasses.replace(sc, steps=steps), track=req.get("track", True), progress=progress)
        rec["memory_steps"] = steps
    rec["key"] = sc.key
    rec["scenario"] = sc.as_dict()
    rec["est_peak_bytes"] = planner_estimate(sc, rec.get("model_dir"))
    try:
        rec["env"] = environment(sc.train.device.value)
    except Exception as e:  # the row matters more than the environment record
        rec["env"] = {"error": repr(e)}
    _write(Path(req["result_path"]), rec)
    return 0


def _run_speed_group(req: dict) -> int:
    """A speed group (:mod:`refplan.harness.speed`): its scenarios' trainers stepped in turn, timed."""
    from refplan.harness.speed import run_group

    scenarios = [Scenario.from_dict(d) for d in req["speed_group"]]
    for sc in scenarios:
        _inject_fault("speed:" + sc.key)
    out = run_group(scenarios, int(req["rounds"]))
    _write(Path(req["result_path"]), out)
    return 0


def _write(path: Path, rec: dict) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(rec, default=str))
    os.replace(tmp, path)


def _inject_fault(key: str) -> None:
    """Fault injection for the runner's own tests: ``REFPLAN_BENCH_FAULT="<key prefix>=crash|hang"``
    (comma-separated) kills this process with SIGSEGV or hangs it until the runner's timeout."""
    for item in filter(None, os.environ.get("REFPLAN_BENCH_FAULT", "").split(",")):
        prefix, _, fault = item.partition("=")
        if key.startswith(prefix):
            if fault == "crash":
                import signal

                os.kill(os.getpid(), signal.SIGSEGV)
            elif fault == "hang":
                import time

                time.sleep(10**6)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    return run_request(json.loads(argv[0]))


if __name__ == "__main__":
    raise SystemExit(main())
