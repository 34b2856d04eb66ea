"""Run ONE scenario in the current process and return its measurements as a flat dict.

Phases (each with its own peaks, see :class:`refplan.harness.tracker.Phases`):

- ``load``: inside any ``from_pretrained`` (the policy, our own reference, TRL's reference reload);
  excluded from ``peak_bytes``;
- ``setup``: trainer construction (dataset tokenization, PEFT wrapping, accelerator prepare);
- ``precompute``: TRL's ``_precompute_ref_logps`` (reference log-probs of the whole dataset);
- ``train``: ``trainer.train()``, every step.

Memory on CPU is the live tensor bytes of :class:`~refplan.harness.tracker.LiveBytes`; on CUDA it is
``torch.cuda.max_memory_allocated`` per phase (plus reserved and NVML device-wide, sampled every
2 ms). The reference log-probs of each step are derived from TRL's logged metrics:
``ref = logps/chosen - rewards/chosen / beta`` (both are batch means of the same per-sequence sums).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import statistics
import tempfile
import time
import traceback

from refplan.harness.scenario import Scenario
from refplan.methods import Method
from refplan.settings import Device

RECIPES = {
    Method.DPO: "refplan.harness.recipes.dpo",
    Method.IPO: "refplan.harness.recipes.dpo",
    Method.KTO: "refplan.harness.recipes.kto",
    Method.ORPO: "refplan.harness.recipes.orpo",
    Method.SIMPO: "refplan.harness.recipes.simpo",
}

#: clock of the per-step times when set; bench/tracker_overhead.py swaps in ``time.thread_time``. None:
#: :func:`step_clock` -- the process's CPU time on CPU (the work of this burst's threads, whatever else
#: runs on a shared machine), wall time synchronised with the device on CUDA
STEP_CLOCK = None
#: steps timed after the first (warm-up: lazy allocations, DeepSpeed's buffers, the optimizer's state)
WARMUP_STEPS = 1


def step_clock(cuda: bool):
    """The clock of the per-step times (see :data:`STEP_CLOCK`)."""
    if STEP_CLOCK is not None:
        return STEP_CLOCK
    return time.perf_counter if cuda else time.process_time

#: metrics copied from TRL's logs into the per-step record (absent keys are skipped)
LOGGED = ("loss", "grad_norm", "logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected",
          "num_tokens", "kl")


def _trainer_callback_cls():
    from transformers import TrainerCallback

    class StepRecorder(TrainerCallback):
        """Wall time of each optimizer step (synchronized on CUDA) and TRL's per-step logs."""

        def __init__(self, cuda: bool, progress=None):
            self.cuda = cuda
            self.progress = progress
            self.step_s: list[float] = []
            self.logs: list[dict] = []
            self._t0 = 0.0
            self.clock = step_clock(cuda)

        def _sync(self):
            if self.cuda:
                import torch

                torch.cuda.synchronize()

        def on_step_begin(self, args, state, control, **kw):
            self._sync()
            self._t0 = self.clock()

        def on_step_end(self, args, state, control, **kw):
            self._sync()
            self.step_s.append(self.clock() - self._t0)
            if self.progress:
                self.progress(state.global_step, state.max_steps)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.logs.append({k: float(logs[k]) for k in LOGGED if k in logs})

    return StepRecorder


class _ShapeWatch:
    """Largest ``input_ids`` the policy's forward receives: checks that ``seq`` is what TRL feeds."""

    def __init__(self, model):
        self.rows = self.seq = 0
        self._handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and getattr(ids, "dim", lambda: 0)() == 2:
            self.rows, self.seq = max(self.rows, ids.shape[0]), max(self.seq, ids.shape[1])

    def remove(self):
        self._handle.remove()


def _watch_input_shapes(model) -> _ShapeWatch:
    return _ShapeWatch(model)


@contextlib.contextmanager
def _precompute_phase(phases):
    """Bracket TRL's ``_precompute_ref_logps`` (called from the trainer constructors) as a phase."""
    from trl import DPOTrainer, KTOTrainer

    originals = {cls: cls.__dict__["_precompute_ref_logps"] for cls in (DPOTrainer, KTOTrainer)}

    def wrap(fn):
        def _precompute_ref_logps(self, *a, **kw):
            with phases.phase("precompute"):
                return fn(self, *a, **kw)

        return _precompute_ref_logps

    for cls, fn in originals.items():
        cls._precompute_ref_logps = wrap(fn)
    try:
        yield
    finally:
        for cls, fn in originals.items():
            cls._precompute_ref_logps = fn


@contextlib.contextmanager
def _datasets_scratch():
    """A temporary directory of datasets' own for this burst, removed at its end.

    TRL's precompute writes its log-prob columns as Arrow files into datasets' session temp dir,
    which is only cleaned at interpreter exit -- never in a forked child that ends with ``_exit``.
    """
    try:
        from datasets import fingerprint as fp

        previous = fp._TEMP_DIR_FOR_TEMP_CACHE_FILES
        fp._TEMP_DIR_FOR_TEMP_CACHE_FILES = None
    except (ImportError, AttributeError):
        yield
        return
    try:
        yield
    finally:
        mine = fp._TEMP_DIR_FOR_TEMP_CACHE_FILES
        fp._TEMP_DIR_FOR_TEMP_CACHE_FILES = previous
        if mine is not None and mine is not previous:
            with contextlib.suppress(Exception):
                mine.cleanup()


def _classify(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MemoryError) or "OutOfMemoryError" in text or "out of memory" in text.lower() \
            or "can't allocate memory" in text:
        return "oom"
    return "error"


def _first_line(exc: BaseException, limit: int = 300) -> str:
    msg = str(exc).strip().splitlines()
    msg = msg[0] if msg else ""
    return f"{type(exc).__name__}: {msg}"[:limit]


def run_burst(sc: Scenario, track: bool = True, progress=None, dataset_dir: str | None = None,
              rank_hooks=None) -> dict:
    """Run ``sc`` here and return the measured record (see ``refplan.harness.runner.COLUMNS``).

    Never raises for a failing scenario: an OOM or crash becomes ``status``/``error``. ``track=False``
    turns the CPU tensor tracker off (for the overhead benchmark). One rank of a sharded burst
    (:mod:`refplan.harness.sharded`) reads the dataset every rank shares from ``dataset_dir`` and
    passes its ``rank_hooks`` (the tracker's resize_ follower and the sharding proof callback).
    """
    t_start = time.perf_counter()
    scratch = tempfile.TemporaryDirectory(prefix="refplan-burst-")  # the Trainer's output_dir; nothing is saved
    rec: dict = {"status": "ok", "error": ""}
    steps: list[float] = []
    logs: list[dict] = []
    phases = recorder = nvml = None
    try:
        import torch

        from refplan.harness import gpu, tracker as trk
        from refplan.harness.recipes.common import load_dataset, load_tokenizer
        from refplan.harness.tiny import resolve_model_dir

        cuda = sc.train.device is Device.CUDA
        if cuda:
            if not torch.cuda.is_available():
                raise RuntimeError("--device cuda but torch sees no CUDA device")
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.empty_cache()
        recipe = importlib.import_module(RECIPES[sc.train.method])
        model_dir = resolve_model_dir(sc.model)
        rec["model_dir"] = str(model_dir)
        tokenizer = load_tokenizer(model_dir)
        if dataset_dir is not None:
            import datasets

            dataset = datasets.load_from_disk(dataset_dir)
        else:
            dataset = load_dataset(sc, tokenizer)

        # REFPLAN_TRACK_CUDA=1 also counts live tensor bytes on CUDA (diagnostics: bench/gpu/diagnose.py)
        tracker = trk.LiveBytes() if (track and (not cuda or os.environ.get("REFPLAN_TRACK_CUDA") == "1")) else None
        nvml = gpu.start_sampler(0) if cuda else None
        phases = trk.Phases(tracker, cuda=cuda, nvml=nvml)
        recorder = _trainer_callback_cls()(cuda, progress)
        gc.collect()
        _build_and_train(sc, recipe, (model_dir, tokenizer, dataset), scratch.name, tracker, phases, recorder, rec,
                         rank_hooks)
        steps, logs = recorder.step_s, recorder.logs
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 -- a failing scenario is a row, not a crash
        rec["status"] = _classify(e)
        rec["error"] = _first_line(e)
        rec["traceback"] = traceback.format_exc(limit=8)
        if phases is not None and phases.current is not None:
            with contextlib.suppress(Exception):
                phases.enter(None)
        if recorder is not None:
            steps, logs = recorder.step_s, recorder.logs
    finally:
        if nvml is not None:
            nvml.stop()
    rec.update(_summarize(sc, phases, steps, logs))
    rec["losses"] = [entry.get("loss") for entry in logs]
    rec["steps_log"] = logs
    rec["step_s"] = steps
    beta = getattr(importlib.import_module(RECIPES[sc.train.method]), "BETA", None) if rec["status"] == "ok" else None
    rec["ref_logps"] = _ref_logps(logs, beta) if sc.train.method.caps.needs_reference and beta else []
    rec["wall_s"] = time.perf_counter() - t_start
    scratch.cleanup()
    return rec


def _build_and_train(sc: Scenario, recipe, inputs, out_dir: str, tracker, phases, recorder, rec: dict,
                     rank_hooks=None) -> None:
    """The recipe's trainer built (phase ``setup``, loads in ``load``) and trained (phase ``train``) under
    the tracker; ``rec`` gets the state sizes, the live bytes before training and the input shapes seen."""
    import torch

    from refplan.harness import tracker as trk

    model_dir, tokenizer, dataset = inputs
    load_stack: list = []

    def on_load(start: bool):
        if start:
            load_stack.append(phases.current)
            phases.enter("load")
        else:
            phases.enter(load_stack.pop())

    built: dict = {}
    callbacks = [recorder] + ([rank_hooks.callback(lambda: built["trainer"])] if rank_hooks is not None else [])
    with contextlib.ExitStack() as stack:
        if tracker is not None:
            stack.enter_context(tracker)
            if rank_hooks is not None:
                stack.enter_context(rank_hooks.track(tracker))
        stack.enter_context(trk.register_loaded_models(tracker, on_load))
        stack.enter_context(_precompute_phase(phases))
        stack.enter_context(_datasets_scratch())
        phases.enter("setup")
        trainer = built["trainer"] = recipe.build_trainer(sc, model_dir, tokenizer, dataset, out_dir,
                                                          callbacks=callbacks)
        ref = getattr(trainer, "ref_model", None)
        if tracker is not None:  # idempotent: catches anything loaded outside from_pretrained
            tracker.register_module(trainer.model)
            if ref is not None:
                tracker.register_module(ref)
        rec["ref_state_bytes"] = trk.module_state_bytes(ref) if ref is not None else 0
        rec["policy_state_bytes"] = trk.module_state_bytes(trainer.model)
        shapes = _watch_input_shapes(trainer.model)
        phases.enter("train")
        rec["loaded_bytes"] = (tracker.live if tracker is not None
                               else torch.cuda.memory_allocated() if sc.train.device is Device.CUDA else None)
        trainer.train()
        phases.enter(None)
    rec["rows_seen"], rec["seq_seen"] = shapes.rows, shapes.seq
    shapes.remove()
    rec["ref_kept"] = ref is not None


def _ref_logps(logs: list[dict], beta: float) -> list[list[float]]:
    """Per step [ref chosen mean, ref rejected mean], from TRL's logged batch means."""
    out = []
    for entry in logs:
        row = []
        for side in ("chosen", "rejected"):
            lp, rw = entry.get(f"logps/{side}"), entry.get(f"rewards/{side}")
            if lp is not None and rw is not None:
                row.append(lp - rw / beta)
        out.append(row)
    return out


def _summarize(sc: Scenario, phases, steps: list[float], logs: list[dict]) -> dict:
    p = phases.peaks if phases is not None else {}

    def get(phase, counter):
        return p.get(phase, {}).get(counter)

    cuda = sc.train.device is Device.CUDA
    counter = "torch_allocated_bytes" if cuda else "live_bytes"
    setup, pre, train = get("setup", counter), get("precompute", counter), get("train", counter)
    measured = [v for v in (pre, train) if v is not None]
    rss = [v.get("rss_bytes") for v in p.values() if v.get("rss_bytes") is not None]

    def over_run(c):
        vals = [get(ph, c) for ph in ("precompute", "train") if get(ph, c) is not None]
        return max(vals) if vals else None

    timed = steps[WARMUP_STEPS:] if len(steps) > WARMUP_STEPS else steps
    median = statistics.median(timed) if timed else None
    tokens_per_step = sc.train.tokens_per_forward
    nt = [e["num_tokens"] for e in logs if "num_tokens" in e]
    if len(nt) >= 2 and sc.dataset != "synthetic":
        tokens_per_step = statistics.median([b - a for a, b in zip(nt, nt[1:])])
    return {
        "memory_source": "cuda-allocator" if cuda else "tracker" if get("train", "live_bytes")
        is not None else "",
        "peak_bytes": max(measured) if measured else None,
        "peak_setup_bytes": setup,
        "peak_precompute_bytes": pre,
        "peak_train_bytes": train,
        "nvml_peak_bytes": over_run("nvml_bytes"),
        "torch_max_allocated_bytes": over_run("torch_allocated_bytes"),
        "torch_max_reserved_bytes": over_run("torch_reserved_bytes"),
        "rss_peak_bytes": max(rss) if rss else None,
        "median_step_s": median,
        "step_spread_pct": 100.0 * (max(timed) - min(timed)) / median if median else None,
        "step_clock": "wall" if cuda else "process-cpu",
        "tokens_per_s": tokens_per_step / median if median else None,
        "samples_per_s": sc.train.batch / median if median else None,
        "loss_first": logs[0].get("loss") if logs else None,
        "loss_last": logs[-1].get("loss") if logs else None,
        "phases": p,
    }


def planner_estimate(sc: Scenario, model_dir: str | None) -> int | None:
    """The planner's peak for this scenario, or None if the planner is missing or fails (a model
    without a formula family: the trace engine's, as ``refplan estimate`` gives it)."""
    if not model_dir:
        return None
    try:
        from refplan.query import estimate_one
        from refplan.resolve import resolve_model

        return int(estimate_one(resolve_model(model_dir), sc.train).peak_bytes)
    except Exception:
        return None


def main(argv=None) -> int:
    """``python -m refplan.harness.burst SCENARIO_JSON``: one burst here, result JSON on stdout."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    sc = Scenario.from_dict(json.loads(argv[0]))
    rec = run_burst(sc)
    rec["est_peak_bytes"] = planner_estimate(sc, rec.get("model_dir"))
    sys.stdout.write(json.dumps(rec, default=str) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    raise SystemExit(main())
