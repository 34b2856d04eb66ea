"""Overhead of the CPU live-tensor tracker on step time: the same scenario with the tracker on and off.

    python bench/tracker_overhead.py [--method dpo] [--strategy separate] [--finetune full]
                                     [--steps 6] [--reps 3] [--model random:tiny]

Runs the bursts in this process, alternating off/on so that drift in machine load hits both
equally, and compares the median step time (steps after the first of each burst). The issue's
budget is <= 10 % of step time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="random:tiny")
    p.add_argument("--method", default="dpo")
    p.add_argument("--strategy", default="separate")
    p.add_argument("--finetune", default="full")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--cpu-time", action="store_true",
                   help="time steps by this thread's CPU time with one torch thread: the tracker's CPU cost "
                        "without the noise of other processes on a shared machine")
    a = p.parse_args()

    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    import time

    import torch

    from refplan.harness import burst
    from refplan.harness.burst import run_burst
    from refplan.harness.scenario import Scenario

    if a.cpu_time:
        torch.set_num_threads(1)
        burst.STEP_CLOCK = time.thread_time
    clock = "thread CPU time, 1 thread" if a.cpu_time else f"wall time, {torch.get_num_threads()} threads"

    sc = Scenario.from_dict(dict(method=a.method, strategy=a.strategy, finetune=a.finetune, model=a.model,
                                 steps=a.steps, batch=a.batch, seq=a.seq))
    run_burst(sc, track=False)  # warm-up: builds the model, fills caches
    steps = {False: [], True: []}
    for rep in range(a.reps):
        for track in (False, True):
            rec = run_burst(sc, track=track)
            if rec["status"] != "ok":
                print(f"burst failed: {rec['error']}", file=sys.stderr)
                return 1
            steps[track] += rec["step_s"][1:]
            print(f"rep {rep} tracker {'on ' if track else 'off'}: median step "
                  f"{statistics.median(rec['step_s'][1:]) * 1e3:7.1f} ms", flush=True)
    off, on = statistics.median(steps[False]), statistics.median(steps[True])
    print(f"\n[{clock}] {sc.key}: median step off {off * 1e3:.1f} ms, on {on * 1e3:.1f} ms, "
          f"ratio {on / off:.3f} (overhead {100 * (on / off - 1):+.1f} %)")
    # The fastest step of each kind is the least disturbed by other processes on a shared machine.
    lo_off, lo_on = min(steps[False]), min(steps[True])
    print(f"fastest step off {lo_off * 1e3:.1f} ms, on {lo_on * 1e3:.1f} ms, ratio {lo_on / lo_off:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
