"""One rank of a sharded burst: ``accelerate launch ... -m refplan.harness.sharded REQUEST_JSON``.

:mod:`refplan.harness.launch` writes the DeepSpeed / FSDP config, saves the dataset where every rank
reads it, and starts N of these processes through ``accelerate launch``. Each rank builds the
recipe's own TRL trainer (the same ``build_trainer`` a one-process burst uses), counts its own live
tensor bytes (:class:`~refplan.harness.tracker.LiveBytes`, following ``UntypedStorage.resize_``, the
call FSDP2 frees and re-gathers parameters with), proves at ``on_train_begin`` that the run is
really sharded (:mod:`refplan.harness.proof`), and writes ``rank<i>.json`` into the scenario's
directory.

Two patches, both local to this process:

- accelerate 1.15 ``AcceleratorState.__init__`` (state.py) turns an FSDP plugin into
  ``DistributedType.FSDP`` only for GPU-like distributed types; on CPU (``MULTI_CPU``, gloo) it
  silently keeps plain data parallelism. :func:`allow_fsdp_on_cpu` applies the same assignment for
  ``MULTI_CPU``. Never used on CUDA.
- DeepSpeed's communication layer is started over gloo before the trainer is built
  (:func:`init_deepspeed_comm_on_cpu`), as accelerate does on GPUs only.

Steps are timed by the burst's clock (:func:`refplan.harness.burst.step_clock`): this rank's process
CPU time on CPU -- the launcher gives each rank an even share of the cores as its torch threads --
and synchronised wall time on CUDA.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from pathlib import Path


def allow_fsdp_on_cpu() -> None:
    """Let accelerate use its FSDP plugin on ``MULTI_CPU`` (gloo), as it does on ``MULTI_GPU``."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__
    if getattr(original, "_refplan_fsdp_cpu", False):
        return

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as state.py does after init

    __init__._refplan_fsdp_cpu = True
    AcceleratorState.__init__ = __init__


def init_deepspeed_comm_on_cpu() -> None:
    """Start DeepSpeed's communication layer over gloo before the trainer exists.

    On GPU accelerate does this in ``PartialState.__init__`` (state.py: ``deepspeed.init_distributed``
    when ``ACCELERATE_USE_DEEPSPEED`` and ``not cpu``); on CPU it skips it, and a ZeRO-3 reference that
    TRL reloads under ``deepspeed.zero.Init`` (transformers ``get_init_context``) then sees a world of
    one and fails DeepSpeed's batch assertion."""
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)


@contextlib.contextmanager
def follow_storage_resize(tracker):
    """Count ``UntypedStorage.resize_`` in ``tracker``: FSDP2 (``_fsdp_param.py`` ``alloc_storage`` /
    ``free_storage``) gathers and frees unsharded parameters by resizing their storage in place, a call
    that does not pass through the dispatcher the tracker watches."""
    import torch

    original = torch.UntypedStorage.resize_

    def resize_(storage, size):
        out = original(storage, size)
        tracker.add_storage(storage)
        return out

    torch.UntypedStorage.resize_ = resize_
    try:
        yield
    finally:
        torch.UntypedStorage.resize_ = original


def run_rank(req: dict) -> dict:
    """Run this rank's part of the burst; the record of :func:`refplan.harness.burst.run_burst` plus
    ``rank``, ``world_size``, ``proof`` and ``step_cpu_s``."""
    from refplan.harness import burst
    from refplan.harness.scenario import Scenario

    sc = Scenario.from_dict(req["scenario"])
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if sc.train.device.value == "cpu":
        if sc.train.sharding.value == "fsdp":
            allow_fsdp_on_cpu()
        else:
            init_deepspeed_comm_on_cpu()
    proof: dict = {}
    hooks = _RankHooks(sc, proof)
    rec = burst.run_burst(sc, dataset_dir=req["dataset_dir"], rank_hooks=hooks)
    rec.update(rank=rank, world_size=world, proof=proof, live_at=hooks.live_at)
    return rec


class _RankHooks:
    """What a sharded rank adds to a burst: the resize_ follower around the tracker, and the proof at
    ``on_train_begin`` (a failed proof raises, so the rank's row is a failure, never a measurement)."""

    def __init__(self, sc, proof: dict):
        self.sc = sc
        self.proof = proof
        self.tracker = None
        #: live bytes at the step's callback points, per step: what stays between steps on this rank
        self.live_at: list[dict] = []

    def track(self, tracker):
        self.tracker = tracker
        return follow_storage_resize(tracker) if tracker is not None else contextlib.nullcontext()

    def callback(self, trainer_ref):
        from transformers import TrainerCallback

        from refplan.harness.proof import check_sharded

        hooks = self

        class Proof(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                hooks.proof.update(check_sharded(trainer_ref(), hooks.sc.train))

            def _mark(self, where):
                if hooks.tracker is not None:
                    if where == "step_begin":
                        hooks.live_at.append({})
                    if hooks.live_at:
                        hooks.live_at[-1][where] = hooks.tracker.live

            def on_step_begin(self, args, state, control, **kw):
                self._mark("step_begin")

            def on_pre_optimizer_step(self, args, state, control, **kw):
                self._mark("before_optimizer")

            def on_step_end(self, args, state, control, **kw):
                self._mark("step_end")

        return Proof()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    req = json.loads(Path(argv[0]).read_text())
    rank = int(os.environ.get("RANK", "0"))
    out = Path(req["rank_dir"]) / f"rank{rank}.json"
    try:
        rec = run_rank(req)
    except BaseException as e:  # noqa: BLE001 -- this rank's failure is its row
        rec = {"status": "error", "error": f"{type(e).__name__}: {e}"[:300], "traceback": traceback.format_exc(limit=8),
               "rank": rank}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, default=str))
    os.replace(tmp, out)
    return 0 if rec.get("status") == "ok" else 1


if __name__ == "__main__":
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    raise SystemExit(main())
