"""The trace engine: the recipe's real TRL training step on fake tensors, measured with the live-bytes tracker.

``trace_estimate(model, train)`` builds the trainer the bench recipe builds for ``train``
(:mod:`refplan.trace.trainer`), builds the model on the meta device (LoRA wrapped there), swaps every
parameter and buffer for a ``FakeTensorMode`` tensor on the fake **CPU** device
(:mod:`refplan.trace.fake`), puts the fake models in the trainer and runs the trainer's own step
(:mod:`refplan.trace.step`): ``training_step`` with TRL's ``compute_loss`` (the real transformers
modeling code, PEFT, TRL's fused log-prob head, the reference forwards, the loss and its logging
metrics), ``accelerator.backward``, the Trainer's gradient clipping, the configured optimizer (the
HF default ``adamw_torch_fused``) and ``zero_grad`` -- under :class:`refplan.trace.tracker.SegmentTracker`.
Fake tensors carry shapes and storages but no data, so a 70B step costs a few hundred MB of RSS. The
tracker counts the storages the aten ops return, the same level it sees on a real CPU run, so a trace
is a CPU burst without the arithmetic. The values TRL's code branches on or sizes tensors by (masks,
labels) are known from the batch (:mod:`refplan.trace.values`).

Why a trainer built on a stand-in and then given the traced models, rather than the traced model passed to
TRL's constructor or ``compute_loss`` called on a hand-made object with the attributes it reads: TRL's
constructor cannot take a fake or meta model (it reloads the reference from disk, precomputes over a
dataset, PEFT cannot wrap a fake model), and a hand-made object would copy the constructor's reading of
the config -- the bookkeeping this engine replaced. Built on a tiny real model, the trainer is exactly the
recipe's; the few things TRL derives from the model itself come along: the fused head's outputs
(recorded and replayed) and the MoE router's auxiliary loss (the stand-in's config carries the traced
model's router fields). See :mod:`refplan.trace.trainer`.

The step is traced at two depths and each layer segment's peak extrapolated to the real depth
(:mod:`refplan.trace.extrapolate`); the tracker's segments and layer hooks are in
:mod:`refplan.trace.tracker`.

Differences from a real run, by design or by device:

- Fake CPU, not CUDA: TRL's fused head uses its torch fallback (``_use_triton`` is False on CPU), so
  it scores every position (not only completion tokens) and its tile folds build fp32 temporaries a
  Triton kernel would not; SDPA takes the CPU flash path (out + logsumexp); no caching-allocator
  slack, no CUDA context (add the planner's CUDA terms for a GPU figure).
- transformers treats fake tensors as "tracing" and would always build an explicit attention mask;
  ``fast_all`` and ``is_tracing`` in ``masking_utils`` are answered from what the batch holds
  (all ones unless ``train.padded``), as a real run decides them.
- ``.item()`` on a value the trace does not know (a loss, a reward: logging only) answers 0.
- One precompute batch is traced, not the pass over the dataset (the real pass also holds the next batch
  and the gathered log-probs); the Trainer loop's own bookkeeping (the running-loss scalar, the
  learning-rate scheduler) is left out, and the step's detached loss is dropped after the optimizer step.
- A fp32 MoE runs transformers' ``grouped_mm_fallback`` op instead of ``aten._grouped_mm``, whose
  meta kernel accepts bf16 only (the CPU kernel takes fp32 too); same outputs and saved tensors.
- fp16 mixed precision autocasts and runs a GradScaler, as accelerate does on CUDA (on the CPU it does
  neither).
- Not supported: QLoRA and k-bit references (bitsandbytes' kernels need real data), flash-attention 2, sharding (ZeRO/FSDP),
  bitsandbytes and Adafactor optimizers (Adafactor branches on tensor values), a model loaded in fp16
  (the GradScaler refuses fp16 gradients, on CUDA too).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import replace

from refplan import terms
from refplan.errors import PlanError
from refplan.methods import Finetune
from refplan.model import ModelSpec
from refplan.result import Estimate, Phase
from refplan.settings import Device, Dtype
from refplan.spec import TrainSpec
from refplan.trace.extrapolate import (PHASES, STATIC, STEP_TENSORS, Trace, estimate_from_peaks, estimate_from_trace,
                                       extrapolate, extrapolation_depths, layer_pattern)

__all__ = ["PHASES", "STATIC", "STEP_TENSORS", "Trace", "check_traceable", "decoder_config", "estimate_from_trace",
           "check_fallback", "extrapolate", "extrapolation_depths", "fallback_estimate", "layer_pattern", "peak_inventory", "trace",
           "trace_estimate"]


def check_traceable(train: TrainSpec, *, any_device: bool = False) -> None:
    """Refuse what the fake CPU device cannot run, naming the flag (``any_device``: a CUDA setup is
    accepted, for :func:`fallback_estimate`, which traces it on the CPU device)."""
    if train.finetune is Finetune.QLORA:
        raise PlanError("--finetune", "the trace engine cannot run QLoRA (bitsandbytes' kernels do not run on fake "
                                      "tensors); use the formula engine (measured on CPU bursts: refplan validate "
                                      "--quantized)")
    if train.ref_quant != "none":
        raise PlanError("--ref-quant", "the trace engine cannot run a k-bit reference (bitsandbytes' kernels do not "
                                       "run on fake tensors); use the formula engine")
    if train.attn == "flash":
        raise PlanError("--attn", "the trace engine runs sdpa or eager attention (flash-attention 2 needs CUDA)")
    if train.dtype is Dtype.FP16:
        raise PlanError("--dtype", "a model loaded in fp16 does not train with fp16=True: the GradScaler refuses "
                                   "fp16 gradients (torch: 'Attempting to unscale FP16 gradients'); use --dtype "
                                   "fp32 --autocast fp16, or bf16")
    if train.optim not in ("adamw", "sgd"):
        raise PlanError("--optim", f"the trace engine runs adamw (torch fused) or sgd, not {train.optim!r}")
    if train.gpus > 1 or train.sharding.value != "none":
        raise PlanError("--gpus", "the trace engine traces one unsharded device; drop --gpus/--zero/--fsdp")
    if train.device != "cpu" and not any_device:
        raise PlanError("--device", "the trace engine measures live tensor bytes on the fake CPU device; use "
                                    "--device cpu (CUDA adds its context, allocator slack and Triton kernels)")


def trace_estimate(model: ModelSpec, train: TrainSpec, *, layers: int | None = None) -> Estimate:
    """Peak live tensor bytes of one steady-state training step, measured on fake tensors.

    ``layers=None``: trace ``n1`` and ``n2`` layers (see the module docstring) and extrapolate each
    phase to ``model.num_layers``; ``layers=N``: trace exactly ``N`` layers (``N ==
    model.num_layers`` is the full trace). Phase components: the static terms (weights, optimizer
    state, batch) and ``"step tensors"`` (activations, gradients, log-prob path, temporaries).
    """
    check_traceable(train)
    if layers is not None:
        return estimate_from_trace(train, trace(model, train, layers))
    n1, n2, period = extrapolation_depths(model)
    if model.num_layers <= n2:
        return estimate_from_trace(train, trace(model, train, model.num_layers))
    t1, t2 = trace(model, train, n1), trace(model, train, n2)
    peaks, static = extrapolate(t1, t2, model.num_layers, period)
    return estimate_from_peaks(train, peaks, static)


def fallback_estimate(model: ModelSpec, train: TrainSpec) -> Estimate:
    """The estimate of a row only the trace engine plans (a model without a formula family,
    ``model.trace_only``, or a setting the formula has no term for: ``refplan.query.needs_trace``), on
    either device.

    ``--device cpu``: :func:`trace_estimate` as it stands (live tensor bytes of a CPU run).
    ``--device cuda``: the same trace of the CPU code path, plus the CUDA-only terms the formula engine
    adds to every phase (``refplan.planner._phase``: the cuBLAS workspace, the caching allocator's
    slack on the allocated bytes, the CUDA context; :mod:`refplan.terms`). What the CPU path does
    differently from CUDA stays in the figure -- TRL's fused log-prob head scores every position with
    fp32 tile temporaries instead of the Triton kernel's completion tokens, SDPA's CPU kernels --
    and this sum is not measured on a GPU.
    """
    check_fallback(model, train)
    try:
        est = trace_estimate(model, replace(train, device=Device.CPU))
    except ValueError as err:
        if "arget modules" in str(err):  # PEFT: "Target modules {...} not found in the base model"
            raise PlanError("--lora-targets", " ".join(str(err).split())) from None
        raise
    if train.device is Device.CPU:
        return est
    return replace(est, phases=tuple(_with_cuda_terms(p) for p in est.phases))


def check_fallback(model: ModelSpec, train: TrainSpec) -> None:
    """:func:`check_traceable` for a row only the trace engine plans, on either device, saying why."""
    try:
        check_traceable(train, any_device=True)
    except PlanError as err:
        from refplan.query import untraced_setting

        why = (f"model_type {model.family!r} has no formula family" if model.trace_only else
               untraced_setting([train]))
        raise PlanError(err.where, f"{err.message} ({why}: only the trace engine plans it)") from None


def _with_cuda_terms(phase: Phase) -> Phase:
    """``phase`` plus the CUDA-only components, computed as ``refplan.planner._phase`` computes them."""
    allocated = phase.total_bytes + terms.CUBLAS_WORKSPACE_BYTES
    extra = (("cublas workspace", terms.CUBLAS_WORKSPACE_BYTES),
             ("allocator slack", allocated * terms.ALLOCATOR_SLACK_NUM // terms.ALLOCATOR_SLACK_DEN),
             ("cuda context", terms.CUDA_CONTEXT_BYTES))
    return Phase(phase.name, phase.components + extra)


def trace(model: ModelSpec, train: TrainSpec, layers: int, *, inventory_phase: str | None = None,
          inventory_bytes: int | None = None, real: bool = False) -> Trace:
    """Run the two-step trace at ``layers`` decoder layers and return its per-segment peaks.

    With ``inventory_phase``/``inventory_bytes``, the tracker also labels every storage with the op
    and place that created it, and snapshots the live set the first time the measured step's
    ``inventory_phase`` reaches ``inventory_bytes`` (``Trace.inventory``).

    ``real=True`` runs the same step on real CPU tensors (random weights) instead of fake ones: the
    check that fake and real agree, for small models only.
    """
    check_traceable(train)
    if not 1 <= layers <= model.num_layers:
        raise PlanError("--layers", f"trace between 1 and {model.num_layers} layers (got {layers})")
    import torch

    if not torch.cuda.is_available():
        # transformers imports DeepSpeed when it is installed, and DeepSpeed, finding no accelerator, says so
        # in a warning on stdout (real_accelerator.get_accelerator) -- into --format json; cpu is its own pick
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from refplan.activations import attention_impl
    from refplan.trace import fake, step

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed's import logs to stdout, where --format json goes
        fake.preload()
    impl = attention_impl(model, train)
    attn = "eager" if impl in ("eager", "falcon") else impl
    inventory = (inventory_phase, inventory_bytes) if inventory_phase else None
    threads = torch.get_num_threads()
    if real:
        torch.set_num_threads(1)  # tiny real ops: worker threads only spin, badly on a shared machine
    try:
        with fake.quiet(), contextlib.redirect_stdout(sys.stderr):
            segments, static, inventory = step.run(model, train, layers, attn, inventory, real)
    finally:
        torch.set_num_threads(threads)
    return Trace(layers, segments, static, time.perf_counter() - t0, inventory)


def peak_inventory(model: ModelSpec, train: TrainSpec, phase: str, layers: int) -> list[tuple[str, int]]:
    """What is live at ``phase``'s peak in an ``layers``-layer trace: (label, bytes), largest first.

    Labels read ``<phase created> / <segment> / <aten op>`` (weights: ``setup / <component>``).
    Runs the trace twice: once for the peak, once to snapshot the live set when it is reached.
    """
    first = trace(model, train, layers)
    target = first.phase_peak(phase)
    if target is None:
        raise PlanError("--phase", f"no phase {phase!r} in this step")
    second = trace(model, train, layers, inventory_phase=phase, inventory_bytes=target)
    return sorted((second.inventory or {}).items(), key=lambda kv: -kv[1])


def decoder_config(model: ModelSpec, layers: int):
    """The transformers config of the text decoder, cut to ``layers`` decoder layers."""
    from refplan.trace.fake import decoder_config as cut

    return cut(model, layers)
