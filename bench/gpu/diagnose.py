"""What is live at the peak of a GPU burst: refplan's storage tracker on CUDA, inventory by op.

    REFPLAN_TRACK_CUDA=1 python bench/gpu/diagnose.py [--device cuda] [--out DIR] SCENARIO_JSON...

For each scenario (a JSON dict of refplan.harness.scenario.FLAT_KEYS, read by Scenario.from_dict) it runs the burst in
this process with the live-bytes tracker on, records the aten op at which the live total peaked
and the live storages (> 1 MiB) at that moment grouped by the op that created them, and prints them
beside torch.cuda.max_memory_allocated and the planner's components.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("scenarios", nargs="+")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    a = p.parse_args(argv)
    os.environ["REFPLAN_TRACK_CUDA"] = "1"
    from refplan.harness import burst, tracker as trk
    from refplan.harness.scenario import Scenario

    created: dict[int, tuple[int, str]] = {}
    state = {"op": "?", "peak_snapshot": None, "peak_op": None}
    orig_add, orig_disp = trk.LiveBytes.add_storage, trk.LiveBytes.__torch_dispatch__

    def add_storage(self, storage):
        before, key = self.peak, storage._cdata
        new = key not in self._sizes
        orig_add(self, storage)
        if new:
            created[key] = (storage.nbytes(), state["op"])
        if self.peak > before and self.peak >= state.get("best", 0):
            state["best"] = self.peak
            state["peak_op"] = state["op"]
            state["peak_snapshot"] = [(created.get(k, (n, "?"))[1], n) for k, n in self._sizes.items() if n > 2**20]

    def disp(self, func, types, args=(), kwargs=None):
        state["op"] = str(func)
        return orig_disp(self, func, types, args, kwargs)

    trk.LiveBytes.add_storage, trk.LiveBytes.__torch_dispatch__ = add_storage, disp
    report = []
    for s in a.scenarios:
        state.update(best=0, peak_snapshot=None, peak_op=None)
        created.clear()
        sc = Scenario.from_dict(json.loads(s))
        rec = burst.run_burst(sc)
        est = burst.planner_estimate(sc, rec.get("model_dir"))
        groups = collections.Counter()
        counts = collections.Counter()
        for op, n in state["peak_snapshot"] or []:
            groups[op] += n
            counts[op] += 1
        entry = {"scenario": sc.key, "status": rec.get("status"), "error": rec.get("error"),
                 "tracker_peak_bytes": state["best"], "peak_op": state["peak_op"],
                 "torch_max_allocated_bytes": rec.get("torch_max_allocated_bytes"),
                 "planner_peak_bytes": est,
                 "live_by_op_mib": {op: [round(n / 2**20, 1), counts[op]] for op, n in groups.most_common(25)}}
        report.append(entry)
        print(json.dumps(entry, indent=1), flush=True)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "diagnose.json"), "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
