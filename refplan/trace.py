"""The trace engine: one real TRL training step on fake tensors, measured with the live-bytes tracker.

``trace_estimate(model, train)`` builds the model on the meta device (LoRA wrapped there), swaps
every parameter and buffer for a ``FakeTensorMode`` tensor on the fake **CPU** device, and runs
the step the way TRL 1.16 runs it -- the real transformers modeling code, PEFT, TRL's fused log-prob
head (``add_fused_lm_head`` / ``ChunkedLogProbFunction``), ORPO's and CPO's own
``concatenated_forward``, autograd, ``torch.optim.AdamW(fused=True)`` -- under
:class:`refplan.harness.tracker.LiveBytes`. Fake tensors carry shapes and storages but no data, so
a 70B step costs a few hundred MB of RSS. The tracker counts the storages the aten ops return, the
same level it sees on a real CPU run, so a trace is a CPU burst without the arithmetic.

The timeline, per phase (names as in :mod:`refplan.planner`):

- ``precompute`` (strategy precompute): the policy's no-grad forward over a precompute batch,
  before the optimizer exists (TRL ``compute_ref_log_probs``: adapters disabled, autocast);
- ``policy forward``: KTO's no-grad KL forward, then the policy forward with grad;
- ``reference forward``: the no-grad reference forward(s) after it (dpo_trainer ``_compute_loss``:
  a separate copy, PEFT ``disable_adapter()``, or the frozen "ref" adapter via ``set_adapter``;
  KTO adds the reference KL forward), then the loss;
- ``backward``; ``optimizer step``: ``clip_grad_norm_`` (max 1.0), the AdamW step, and
  ``zero_grad(set_to_none=True)``.

Two steps run and the second is measured, so AdamW's state exists during its forward and backward.
Two batches are live (the dataloader prefetches the next). Where accelerate would run the model
under mixed precision (``bf16=True`` / ``fp16=True``: a bf16/fp16 load dtype, or ``--autocast``),
the policy's and the reference's forwards are wrapped the way ``Accelerator.prepare_model`` wraps
them: ``torch.autocast`` plus ``convert_outputs_to_fp32``.

Per-layer extrapolation (``layers=None``): the model is traced at ``n1`` and ``n2 = n1 + P``
decoder layers, where the layer list is ``k`` special layers followed by a pattern of period ``P``
(``P = 1`` for a plain decoder; ``k = first_k_dense_replace`` for DeepSeek; a sliding/full
``layer_types`` pattern sets ``P``), ``n1 >= k + P`` and ``L - n1`` is a multiple of ``P``. ``k`` is
at least 1: the first layer is special in memory whatever its shape (its input is the embedding
output, which the model keeps referenced; with PEFT it needs no grad), so a plain decoder is traced
at 2 and 3 layers. Within each phase the tracker keeps one peak per *segment* -- before the first
layer, inside each decoder layer's forward (or backward), after the last -- and each segment's peak
is affine in the layer count, while the phase peak (a maximum over segments) is not: in a full
fine-tune backward the peak moves from the LM head to the embedding as gradients outgrow the freed
activations (Llama-3.1-8B, 1 pair x 512: between 4 and 5 layers). So every segment is extrapolated
on its own (layers keyed by position from the bottom and from the top) and the phase peak is their
maximum at the real depth. ``bench/trace_check.py`` checks it against full traces.

Differences from a real run, by design or by device:

- Fake CPU, not CUDA: TRL's fused head uses its torch fallback (``_use_triton`` is False on CPU), so
  it scores every position (not only completion tokens) and its tile folds build fp32 temporaries a
  Triton kernel would not; SDPA takes the CPU flash path (out + logsumexp); no caching-allocator
  slack, no CUDA context (add the planner's CUDA terms for a GPU figure).
- transformers treats fake tensors as "tracing" and would always build an explicit attention mask;
  ``fast_all`` and ``is_tracing`` in ``masking_utils`` are answered from what the batch holds
  (all ones unless ``train.padded``), as a real run decides them.
- Logging-only code that needs values (``.item()``, boolean indexing, ``nonzero``) is left out, or,
  for KTO's chosen/rejected split, replaced by fixed halves; these touch [rows, seq] tensors at most.
- A fp32 MoE runs transformers' ``grouped_mm_fallback`` op instead of ``aten._grouped_mm``, whose
  meta kernel accepts bf16 only (the CPU kernel takes fp32 too); same outputs and saved tensors.
- Not supported: QLoRA and k-bit references (bitsandbytes), flash-attention 2, sharding (ZeRO/FSDP),
  bitsandbytes and Adafactor optimizers (Adafactor branches on tensor values).
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
import warnings
from dataclasses import dataclass, field

from refplan.errors import PlanError
from refplan.methods import Finetune, Method, Strategy
from refplan.model import ModelSpec
from refplan.result import Estimate, Phase
from refplan.spec import TrainSpec

PHASES = ("precompute", "policy forward", "reference forward", "backward", "optimizer step")
#: static components, in the order they are reported; the rest of a phase's peak is "step tensors"
STATIC = ("policy weights", "lora weights", "reference weights", "optimizer state", "batch")
STEP_TENSORS = "step tensors"
LEARNING_RATE = 1e-5
MAX_GRAD_NORM = 1.0  # TrainingArguments.max_grad_norm default
BETA = 0.1


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Trace:
    """One traced step at ``layers`` decoder layers.

    ``segments`` maps (phase, segment) to the live-bytes peak inside it; a segment is ``"pre"``
    (before the first decoder layer), ``("layer", i)`` (inside layer i's forward, or its backward)
    or ``"post"`` (after the last layer: final norm, head, loss). ``static`` holds the bytes of the
    components that do not change within the measured step.
    """

    layers: int
    segments: dict = field(hash=False)
    static: dict = field(hash=False)
    seconds: float = 0.0
    #: :func:`trace` with ``inventory_phase``: bytes live at that phase's target, by creator label
    inventory: dict | None = field(default=None, hash=False)

    def phase_peak(self, phase: str) -> int | None:
        vals = [v for (ph, _), v in self.segments.items() if ph == phase]
        return max(vals) if vals else None


def _static_for(phase: str, static: dict) -> dict:
    if phase == "precompute":
        keep = ("policy weights", "lora weights", "precompute batch")
        out = {k: static.get(k, 0) for k in keep}
        out["batch"] = out.pop("precompute batch")
        return out
    return {k: static.get(k, 0) for k in STATIC}


def _estimate(train: TrainSpec, peaks: dict[str, int], static: dict) -> Estimate:
    phases = []
    for name in PHASES:
        if name not in peaks:
            continue
        parts = {k: v for k, v in _static_for(name, static).items() if v}
        parts[STEP_TENSORS] = peaks[name] - sum(parts.values())
        phases.append(Phase(name, tuple(parts.items())))
    return Estimate(train.method.value, train.strategy.value, train.finetune.value, tuple(phases))


def estimate_from_trace(train: TrainSpec, tr: Trace) -> Estimate:
    """The Estimate of one trace as it stands (no extrapolation)."""
    return _estimate(train, {ph: tr.phase_peak(ph) for ph in PHASES if tr.phase_peak(ph) is not None}, tr.static)


def _canonical(seg, n: int, n_bottom: int, n_top: int) -> list:
    """Keys a segment of an ``n``-layer trace stands for: a layer by its position from the bottom
    (the first ``n_bottom``: special layers and one period) and from the top (the last ``n_top``:
    one period). Every other layer of a kind lies between its kind's bottom-most and top-most
    instance, and its segment peak is affine in its position, so it never exceeds both."""
    if not isinstance(seg, tuple):
        return [seg]
    i = seg[1]
    keys = []
    if i < n_bottom:
        keys.append(("bottom", i))
    if n - 1 - i < n_top:
        keys.append(("top", n - 1 - i))
    return keys


def extrapolate(t1: Trace, t2: Trace, layers: int, period: int = 1) -> tuple[dict[str, int], dict]:
    """Per-phase peaks and static components at ``layers`` from traces at ``t1.layers`` and
    ``t2.layers = t1.layers + period``: each segment and each static term is extrapolated linearly,
    then each phase takes its largest segment. Exact when ``layers - t1.layers`` is a multiple of
    ``period``; otherwise interpolated."""
    n1, n2 = t1.layers, t2.layers
    assert n2 - n1 == period, (n1, n2, period)
    steps_num, steps_den = layers - n1, period

    def lin(a: int, b: int) -> int:
        return a + ((b - a) * steps_num + steps_den // 2) // steps_den

    def canon(tr: Trace) -> dict:
        out: dict = {}
        for (ph, seg), v in tr.segments.items():
            for key in _canonical(seg, tr.layers, n1, period):
                out[(ph, key)] = max(out.get((ph, key), 0), v)
        return out

    c1, c2 = canon(t1), canon(t2)
    peaks: dict[str, int] = {}
    for key in c1.keys() & c2.keys():
        ph = key[0]
        peaks[ph] = max(peaks.get(ph, 0), lin(c1[key], c2[key]))
    static = {k: lin(t1.static.get(k, 0), t2.static.get(k, 0)) for k in t1.static.keys() | t2.static.keys()}
    return peaks, static


# --------------------------------------------------------------------------------------------------
# layer pattern
# --------------------------------------------------------------------------------------------------

def layer_pattern(model: ModelSpec) -> tuple[int, int]:
    """``(k, P)``: the first ``k`` layers are special, the rest repeat with period ``P``.

    A layer's signature is its shape record (:class:`refplan.model.Layer`: dense or MoE, widths)
    and its attention type (``layer_types``: sliding or full). The smallest ``k + 2P`` wins.
    """
    types = model.structure.layer_types or [None] * model.num_layers
    sig = [(layer, types[i] if i < len(types) else None) for i, layer in enumerate(model.layers)]
    n = len(sig)
    best = None
    for period in range(1, 9):
        for k in range(0, 9):
            if k + 2 * period > n:
                break
            if all(sig[i] == sig[i + period] for i in range(k, n - period)):
                if best is None or k + 2 * period < best[0] + 2 * best[1]:
                    best = (k, period)
                break
    return best if best is not None else (n, 1)


# --------------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------------

def check_traceable(train: TrainSpec) -> None:
    """Refuse what the fake CPU device cannot run, naming the flag."""
    if train.finetune is Finetune.QLORA:
        raise PlanError("--finetune", "the trace engine cannot run QLoRA (bitsandbytes needs CUDA); use the "
                                      "formula engine or --finetune lora")
    if train.ref_quant != "none":
        raise PlanError("--ref-quant", "the trace engine cannot run a k-bit reference (bitsandbytes needs CUDA)")
    if train.attn == "flash":
        raise PlanError("--attn", "the trace engine runs sdpa or eager attention (flash-attention 2 needs CUDA)")
    if train.optim not in ("adamw", "sgd"):
        raise PlanError("--optim", f"the trace engine runs adamw (torch fused) or sgd, not {train.optim!r}")
    if train.gpus > 1 or train.sharding.value != "none":
        raise PlanError("--gpus", "the trace engine traces one unsharded device; drop --gpus/--zero/--fsdp")
    if train.device != "cpu":
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
    return _estimate(train, peaks, static)


def extrapolation_depths(model: ModelSpec) -> tuple[int, int, int]:
    """``(n1, n2, P)``: the two depths :func:`trace_estimate` traces, ``P`` apart, with
    ``n1 >= k + P`` and ``num_layers - n1`` a multiple of ``P`` (so the top layers of the traces
    have the kinds of the real model's top layers)."""
    k, period = layer_pattern(model)
    # layer 0 is special in memory even when its shape is not: its input is the embedding output,
    # which the model's forward keeps referenced (and with PEFT it does not require grad)
    k = max(k, 1)
    n1 = k + period + (model.num_layers - k - period) % period
    return n1, n1 + period, period


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

    t0 = time.perf_counter()
    _preload()
    threads = torch.get_num_threads()
    if real:
        torch.set_num_threads(1)  # tiny real ops: worker threads only spin, badly on a shared machine
    try:
        with _quiet():
            runner = _StepRunner(model, train, layers, inventory_phase, inventory_bytes, real)
            segments, static, inventory = runner.run()
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


def _preload() -> None:
    """Import everything a step touches before the modes are entered: module-level tensors
    (``torch.tensor`` defaults in peft, trl) would otherwise be counted once, by the first trace."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import accelerate.utils  # noqa: F401
    import peft  # noqa: F401
    import peft.tuners  # noqa: F401  (every tuner's layer module)
    import trl.experimental.cpo  # noqa: F401
    import trl.experimental.orpo  # noqa: F401
    import trl.models.utils  # noqa: F401
    import trl.trainer.utils  # noqa: F401
    from transformers import masking_utils  # noqa: F401


@contextlib.contextmanager
def _quiet():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            hf_logging.set_verbosity(level)


# --------------------------------------------------------------------------------------------------
# the tracker with segments
# --------------------------------------------------------------------------------------------------

def _segment_tracker_cls():
    from refplan.harness.tracker import LiveBytes

    class SegmentTracker(LiveBytes):
        """LiveBytes with a peak per (phase, segment) of the measured step; optional op labels."""

        def __init__(self, label_ops: bool = False):
            super().__init__()
            self.phase: str | None = None  # None: not measured (setup, warm-up step)
            self.created_in = "setup"
            self.segment = "pre"
            self.in_backward = False
            self.segments: dict = {}
            self.label_ops = label_ops
            self.labels: dict[int, str] = {}
            self._op = None
            self.snapshot_when: tuple[str, int] | None = None
            self.snapshot: dict[str, int] | None = None

        # -- segments
        def _flush(self):
            if self.phase is not None:
                key = (self.phase, self.segment)
                self.segments[key] = max(self.segments.get(key, 0), self.peak)
            self.reset_peak()

        def set_segment(self, seg) -> None:
            if seg != self.segment:
                self._flush()
                self.segment = seg

        def set_phase(self, phase: str | None, created_in: str, backward: bool = False) -> None:
            self._flush()
            # the backward starts at the head ("post") and ends at the embedding ("pre")
            self.segment = "post" if backward else "pre"
            self.phase, self.created_in, self.in_backward = phase, created_in, backward
            if self.label_ops:
                self._maybe_snapshot()  # a phase whose peak is the live set it starts with

        # -- labels (inventory runs only)
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not self.label_ops:
                return super().__torch_dispatch__(func, types, args, kwargs)
            self._op = func
            try:
                return super().__torch_dispatch__(func, types, args, kwargs)
            finally:
                self._op = None

        def add_storage(self, storage) -> None:
            if not self.label_ops:
                return super().add_storage(storage)
            key = storage._cdata
            new = key not in self._sizes
            super().add_storage(storage)
            if new:
                seg = self.segment if not isinstance(self.segment, tuple) else f"layer {self.segment[1]}"
                op = "?" if self._op is None else str(self._op.overloadpacket).replace("aten.", "")
                self.labels[key] = f"{self.created_in} / {seg} / {op}"
            self._maybe_snapshot()

        def _maybe_snapshot(self) -> None:
            want = self.snapshot_when
            if want is not None and self.snapshot is None and self.phase == want[0] and self.live >= want[1]:
                snap: dict[str, int] = {}
                for k, n in self._sizes.items():
                    lab = self.labels.get(k, "?")
                    snap[lab] = snap.get(lab, 0) + n
                self.snapshot = snap

        def _release(self, key: int) -> None:
            super()._release(key)
            self.labels.pop(key, None)

        def register_labeled(self, tensors, label: str) -> None:
            for t in tensors:
                self.add_tensor(t)
                if self.label_ops:
                    self.labels[t.untyped_storage()._cdata] = label

    return SegmentTracker


# --------------------------------------------------------------------------------------------------
# building the models
# --------------------------------------------------------------------------------------------------

def _torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def decoder_config(model: ModelSpec, layers: int):
    """The transformers config of the text decoder, cut to ``layers`` decoder layers (per-layer
    lists such as ``layer_types`` and ``mlp_only_layers`` cut to match)."""
    from transformers import AutoConfig

    cfg = copy.deepcopy(model.config)
    if cfg.get("model_type") == "gemma3":
        text = dict(cfg.get("text_config") or {})
        if "tie_word_embeddings" not in text and "tie_word_embeddings" in cfg:
            text["tie_word_embeddings"] = cfg["tie_word_embeddings"]
        cfg = text
    model_type = cfg.pop("model_type", None)
    if model.generic_fallback or model_type in (None, "RefinedWebModel", "RefinedWeb"):
        model_type = model.family if not model.generic_fallback else "llama"
    for key in ("architectures", "auto_map", "quantization_config", "torch_dtype", "dtype"):
        cfg.pop(key, None)
    try:
        hf = AutoConfig.for_model(model_type, **cfg)
    except (ValueError, KeyError) as err:
        raise PlanError("--model", f"transformers cannot build a {model_type!r} config ({err})") from None
    full = hf.num_hidden_layers
    hf.num_hidden_layers = layers
    if isinstance(getattr(hf, "layer_types", None), list) and len(hf.layer_types) == full:
        hf.layer_types = hf.layer_types[:layers]
    if isinstance(getattr(hf, "mlp_only_layers", None), list):
        hf.mlp_only_layers = [i for i in hf.mlp_only_layers if i < layers]
    hf.use_cache = False
    return hf


def _lora_config(train: TrainSpec):
    from peft import LoraConfig

    targets = "all-linear" if train.lora_targets == ("all-linear",) else list(train.lora_targets)
    return LoraConfig(r=train.lora_r, lora_alpha=2 * train.lora_r, lora_dropout=0.0, target_modules=targets,
                      task_type="CAUSAL_LM")


def _build_meta(hf_config, dtype: str, attn: str):
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config, dtype=_torch_dtype(dtype), attn_implementation=attn)


def _fake_parameters(module, memo: dict, real: bool = False) -> None:
    """Swap every meta parameter and buffer for a tensor on the (fake) CPU device.

    Runs under FakeTensorMode (``real=False``: no data) or not (random weights, zero buffers). Shared
    (tied) parameters stay shared through ``memo``."""
    import torch

    for mod in module.modules():
        for name, p in list(mod._parameters.items()):
            if p is None:
                continue
            new = memo.get(id(p))
            if new is None:
                data = torch.empty(p.shape, dtype=p.dtype, device="cpu")
                if real:
                    data.normal_(0.0, 0.02)
                new = torch.nn.Parameter(data, requires_grad=p.requires_grad)
                memo[id(p)] = new
            mod._parameters[name] = new
        for name, b in list(mod._buffers.items()):
            if b is None:
                continue
            new = memo.get(id(b))
            if new is None:
                new = torch.zeros(b.shape, dtype=b.dtype, device="cpu") if real else \
                    torch.empty(b.shape, dtype=b.dtype, device="cpu")
                memo[id(b)] = new
            mod._buffers[name] = new


def _decoder_layers(module) -> list:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in module.modules() if isinstance(m, GradientCheckpointingLayer)]


def _storages(tensors) -> dict[int, int]:
    out = {}
    for t in tensors:
        if t is None:
            continue
        st = t.untyped_storage()
        out[st._cdata] = st.nbytes()
    return out


# --------------------------------------------------------------------------------------------------
# masks: answer transformers' "is there padding?" from what the batch holds
# --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _known_padding(padded: bool):
    """transformers' masking_utils skips the explicit mask when the 2-D mask is all ones -- unless the
    tensor is fake ("tracing"), where it cannot look. Answer for it from the batch we built: every
    mask slice it asks about is all ones unless ``padded`` (an empty slice always is)."""
    from torch._subclasses.fake_tensor import FakeTensor
    from transformers import masking_utils as mu

    orig_tracing, orig_all = mu.is_tracing, mu.fast_all

    def is_tracing(tensor=None):
        return orig_tracing(None if isinstance(tensor, FakeTensor) else tensor)

    def fast_all(tensor):
        if isinstance(tensor, FakeTensor):
            return tensor.numel() == 0 or not padded
        return orig_all(tensor)

    mu.is_tracing, mu.fast_all = is_tracing, fast_all
    try:
        yield
    finally:
        mu.is_tracing, mu.fast_all = orig_tracing, orig_all


@contextlib.contextmanager
def _grouped_mm_any_dtype():
    """torch's meta kernel for ``aten._grouped_mm`` applies the CUDA kernel's checks (bf16 only),
    while the CPU kernel also runs fp32: for a non-bf16 MoE, let transformers route the experts
    through its own ``grouped_mm_fallback`` op, which has a fake kernel and the same inputs,
    outputs and saved tensors."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensor
    from transformers.integrations import moe

    orig = moe._can_use_grouped_mm

    def can_use(input, weight, offs):
        if isinstance(weight, FakeTensor) and weight.dtype != torch.bfloat16:
            return False
        return orig(input, weight, offs)

    moe._can_use_grouped_mm = can_use
    try:
        yield
    finally:
        moe._can_use_grouped_mm = orig


# --------------------------------------------------------------------------------------------------
# the step
# --------------------------------------------------------------------------------------------------

class _StepRunner:
    """Builds the models for one trace and runs precompute + two training steps on fake tensors."""

    def __init__(self, model: ModelSpec, train: TrainSpec, layers: int, inventory_phase, inventory_bytes,
                 real: bool = False):
        self.spec, self.train, self.layers, self.real = model, train, layers, real
        self.inventory = (inventory_phase, inventory_bytes) if inventory_phase else None
        self.peft = train.finetune.peft
        self.mp = train.autocast or (train.dtype if train.dtype != "fp32" else None)

    # ---- setup --------------------------------------------------------------------------------
    def _attn(self) -> str:
        from refplan.activations import attention_impl

        impl = attention_impl(self.spec, self.train)
        return "eager" if impl in ("eager", "falcon") else impl

    def _build(self, hf_config, dtype: str, with_lora: bool):
        import torch

        m = _build_meta(hf_config, dtype, self._attn())
        if with_lora:
            from peft import get_peft_model

            with torch.device("meta"):
                m = get_peft_model(m, _lora_config(self.train))
                if self.train.strategy is Strategy.REF_ADAPTER:
                    # dpo_trainer.py ~683: a frozen copy of the "default" adapter named "ref"
                    m.add_adapter("ref", m.peft_config["default"])
        return m

    def run(self):
        import torch
        from torch._subclasses.fake_tensor import FakeTensorMode

        train, s = self.train, self.train.strategy
        hf_config = decoder_config(self.spec, self.layers)
        policy = self._build(hf_config, train.dtype, self.peft)
        ref = None
        if s in (Strategy.SEPARATE, Strategy.SYNC):
            ref = self._build(hf_config, train.reference_dtype, False)

        tracker = _segment_tracker_cls()(label_ops=self.inventory is not None)
        if self.inventory:
            tracker.snapshot_when = self.inventory
        fake = FakeTensorMode() if not self.real else contextlib.nullcontext()
        with fake, tracker, _known_padding(train.padded), _grouped_mm_any_dtype():
            memo: dict = {}
            _fake_parameters(policy, memo, self.real)
            if ref is not None:
                _fake_parameters(ref, memo, self.real)
            static = self._register_weights(tracker, policy, ref)
            self._prepare(policy, ref, tracker)
            if s is Strategy.PRECOMPUTE:
                self._precompute(tracker, static)
            batches = [self._batch(train.batch) for _ in range(2)]  # current + prefetched
            batch_tensors = self._tensors(batches[0]) + self._tensors(batches[1])
            static["batch"] = sum(_storages(batch_tensors).values())
            tracker.register_labeled(batch_tensors, "batch")
            opt = self._optimizer()
            for step in range(2):
                measured = step == 1
                if measured:
                    static["optimizer state"] = sum(_storages(
                        t for st in opt.state.values() for t in st.values() if torch.is_tensor(t)).values())
                self._step(tracker, opt, batches[step % 2], measured)
            tracker.set_phase(None, "done")
        return dict(tracker.segments), static, tracker.snapshot

    def _register_weights(self, tracker, policy, ref) -> dict:
        pol, lora, refw = [], [], []
        for name, p in policy.named_parameters():
            if ".ref." in name:
                refw.append(p)
            elif "lora_" in name:
                lora.append(p)
            else:
                pol.append(p)
        pol += list(policy.buffers())
        if ref is not None:
            refw += list(ref.parameters()) + list(ref.buffers())
        tracker.register_labeled(pol, "policy weights")
        tracker.register_labeled(lora, "lora weights")
        tracker.register_labeled(refw, "reference weights")
        pol_st, lora_st, ref_st = _storages(pol), _storages(lora), _storages(refw)
        for k in list(ref_st):
            if k in pol_st:  # a storage shared with the policy (never, but count it once)
                del ref_st[k]
        return {"policy weights": sum(pol_st.values()), "lora weights": sum(lora_st.values()),
                "reference weights": sum(ref_st.values())}

    def _prepare(self, policy, ref, tracker) -> None:
        """What the trainers do between loading and the first step (dpo_trainer/kto_trainer
        ``__init__``, ``Trainer._inner_training_loop``, ``Accelerator.prepare_model``)."""
        from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model

        train = self.train
        self.policy, self.ref = policy, ref
        base = policy.get_base_model() if self.peft else policy
        self.base = base
        disable_dropout_in_model(policy)
        if ref is not None:
            disable_dropout_in_model(ref)
        if train.method is Method.KTO:
            add_fused_lm_head(base, outputs=("log_probs", "entropy", "mean_logits"))
        elif train.method.caps.fused_logprob_head:
            add_fused_lm_head(base, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
        if ref is not None and train.method.caps.fused_logprob_head:
            add_fused_lm_head(ref)
        policy.train()
        if ref is not None:
            ref.eval()
        self.gc_kwargs = {"use_reentrant": False}
        if train.grad_ckpt:
            _enable_checkpointing(base, self.gc_kwargs)
            if self.peft:
                base.enable_input_require_grads()  # dpo_trainer.py ~718
        # segment hooks: decoder layers of every model that runs
        self._hook_layers(base, tracker)
        if ref is not None:
            self._hook_layers(ref, tracker)

    def _wrap_mixed_precision(self, module) -> None:
        """``Accelerator.prepare_model`` under bf16/fp16: autocast the forward, outputs to fp32."""
        import torch
        from accelerate.utils import convert_outputs_to_fp32

        if self.mp is None:
            return
        dtype = _torch_dtype(self.mp)
        inner = module.forward

        def forward(*args, **kwargs):
            with torch.autocast("cpu", dtype=dtype):
                return inner(*args, **kwargs)

        module.forward = convert_outputs_to_fp32(forward)

    def _hook_layers(self, module, tracker) -> None:
        layers = _decoder_layers(module)
        n = len(layers)
        if n != self.layers:
            raise RuntimeError(f"found {n} decoder layers in {type(module).__name__}, expected {self.layers}")

        for i, layer in enumerate(layers):
            def pre(mod, args, kwargs, i=i):
                if tracker.in_backward:
                    return None  # checkpoint recompute inside backward
                tracker.set_segment(("layer", i))
                h = args[0] if args else kwargs.get("hidden_states")
                if h is not None and h.requires_grad:
                    # its gradient is complete when this layer's backward is done
                    nxt = ("layer", i - 1) if i > 0 else "pre"
                    h.register_hook(lambda g, nxt=nxt: tracker.set_segment(nxt))
                return None

            def post(mod, args, kwargs, out, i=i, last=i == n - 1):
                if tracker.in_backward:
                    return None
                if last:
                    tracker.set_segment("post")
                    h = out[0] if isinstance(out, (tuple, list)) else out
                    if h is not None and getattr(h, "requires_grad", False):
                        h.register_hook(lambda g, last_i=i: tracker.set_segment(("layer", last_i)))
                return None

            layer.register_forward_pre_hook(pre, with_kwargs=True)
            layer.register_forward_hook(post, with_kwargs=True)

    def _optimizer(self):
        import torch

        params = [p for p in self.policy.parameters() if p.requires_grad]
        if self.train.optim == "sgd":
            return torch.optim.SGD(params, lr=LEARNING_RATE)
        # HF TrainingArguments default optim "adamw_torch_fused"
        return torch.optim.AdamW(params, lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                                 fused=True)

    # ---- batches ------------------------------------------------------------------------------
    def _batch(self, batch: int, precompute: bool = False) -> dict:
        """The collated batch, as TRL's collators build it (int64 ids, masks; completion = second
        half). Values are fake: only shapes matter, except the mask's padding, answered by
        :func:`_known_padding`."""
        import torch

        train, m, seq = self.train, self.train.method, self.train.seq
        half = seq // 2

        def ids(rows):
            return torch.zeros((rows, seq), dtype=torch.long)

        def mask(rows):
            t = torch.ones((rows, seq), dtype=torch.long)
            if train.padded:
                t[0, 0] = 0
            return t

        def completion(rows):
            t = torch.zeros((rows, seq), dtype=torch.long)
            t[:, half:] = 1
            return t

        if m in (Method.DPO, Method.IPO):
            b = {"input_ids": ids(2 * batch), "attention_mask": mask(2 * batch),
                 "completion_mask": completion(2 * batch)}
            if train.strategy is Strategy.PRECOMPUTE and not precompute:
                b["ref_chosen_logps"] = torch.zeros(batch)
                b["ref_rejected_logps"] = torch.zeros(batch)
            return b
        if m is Method.KTO:
            b = {"input_ids": ids(batch), "attention_mask": mask(batch), "completion_mask": completion(batch),
                 "KL_input_ids": ids(batch), "KL_attention_mask": mask(batch),
                 "KL_completion_mask": completion(batch), "label": torch.zeros(batch, dtype=torch.bool)}
            if train.strategy is Strategy.PRECOMPUTE and not precompute:
                b["ref_logps"] = torch.zeros(batch)
                b["ref_KL_logps"] = torch.zeros(batch)
            return b
        # ORPO / CPO collator (experimental DPODataCollatorWithPadding): chosen_*, rejected_*, prompt_*
        b = {}
        for side in ("chosen", "rejected"):
            b[f"{side}_input_ids"] = ids(batch)
            b[f"{side}_attention_mask"] = mask(batch)
            lab = torch.zeros((batch, seq), dtype=torch.long)
            lab[:, :half] = -100
            b[f"{side}_labels"] = lab
        b["prompt_input_ids"] = torch.zeros((batch, half), dtype=torch.long)
        b["prompt_attention_mask"] = torch.ones((batch, half), dtype=torch.long)
        return b

    @staticmethod
    def _tensors(batch: dict) -> list:
        import torch

        return [v for v in batch.values() if torch.is_tensor(v)]

    # ---- phases -------------------------------------------------------------------------------
    def _precompute(self, tracker, static) -> None:
        """TRL ``_precompute_ref_logps`` / ``compute_ref_log_probs``: the policy (adapters disabled)
        in no-grad, under ``accelerator.autocast()``, one precompute batch; before ``prepare``."""
        import torch
        from trl.models.utils import disable_gradient_checkpointing
        from trl.trainer.utils import use_adapter

        train = self.train
        rows = train.precompute_batch or train.batch
        tracker.set_phase("precompute", "precompute")
        batch = self._batch(rows, precompute=True)
        static["precompute batch"] = sum(_storages(self._tensors(batch)).values())
        adapter = use_adapter(self.policy, None) if self.peft else contextlib.nullcontext()
        with torch.no_grad(), disable_gradient_checkpointing(self.base, self.gc_kwargs), adapter, \
                self._autocast():
            labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
            out = self.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                              fused_lm_head=True, use_cache=False)
            logps = out.log_probs[:, -(train.seq - 1):].sum(-1)
            del out
            if train.method is Method.KTO:
                kl_labels = batch["KL_input_ids"].masked_fill(batch["KL_completion_mask"] == 0, -100)
                kl = self.policy(input_ids=batch["KL_input_ids"], attention_mask=batch["KL_attention_mask"],
                                 labels=kl_labels, fused_lm_head=True, use_cache=False).log_probs
                del kl
        del logps, batch
        tracker.set_phase(None, "setup")

    def _autocast(self):
        import torch

        if self.mp is None:
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=_torch_dtype(self.mp))

    def _step(self, tracker, opt, batch, measured: bool) -> None:
        import torch

        if not getattr(self, "_wrapped", False):
            self._wrap_mixed_precision(self.policy)
            if self.ref is not None:
                self._wrap_mixed_precision(self.ref)
            self._wrapped = True
        tag = "" if measured else "warm-up "

        def phase(name, backward=False):
            tracker.set_phase(name if measured else None, tag + name, backward)

        phase("policy forward")
        loss = self._compute_loss(batch, phase)  # locals of the loss die here, as in Trainer.compute_loss
        phase("backward", backward=True)
        loss.backward()
        del loss
        phase("optimizer step")
        params = [p for p in self.policy.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
        if self.train.strategy is Strategy.SYNC:
            _sync_reference(self.policy, self.ref)
        opt.zero_grad(set_to_none=True)
        tracker.set_phase(None, "between steps")

    def _compute_loss(self, batch, phase):
        m = self.train.method
        if m in (Method.DPO, Method.IPO):
            return self._dpo_loss(batch, phase)
        if m is Method.KTO:
            return self._kto_loss(batch, phase)
        return self._pair_logits_loss(batch, phase)

    def _ref_context(self):
        """The reference forward's context (dpo_trainer ``_compute_loss``): no grad, checkpointing off,
        and for PEFT without a separate copy ``use_adapter`` ("ref" adapter, or adapters disabled)."""
        import torch
        from trl.models.utils import disable_gradient_checkpointing
        from trl.trainer.utils import use_adapter

        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(disable_gradient_checkpointing(self.base, self.gc_kwargs))
        if self.ref is None and self.peft:
            name = "ref" if "ref" in self.policy.peft_config else None
            stack.enter_context(use_adapter(self.policy, name))
        return stack

    def _dpo_loss(self, batch, phase):
        """dpo_trainer.py ``_compute_loss`` (sigmoid or IPO loss), without the ``.item()`` logging."""
        import torch.nn.functional as F

        train = self.train
        model_kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
        completion_mask = batch["completion_mask"]
        shift_completion_mask = completion_mask[..., 1:]
        labels = batch["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = self.policy(**model_kwargs, labels=labels, fused_lm_head=True)
        seq_len = shift_completion_mask.size(1)
        per_token_logps = outputs.log_probs[:, -seq_len:]
        logps = per_token_logps.sum(dim=1)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)
        if train.strategy is Strategy.PRECOMPUTE:
            ref_chosen_logps, ref_rejected_logps = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        else:
            phase("reference forward")
            with self._ref_context():
                model = self.ref if self.ref is not None else self.policy
                ref_outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
            ref_logps = ref_outputs.log_probs[:, -seq_len:].sum(dim=1)
            del ref_outputs
            ref_chosen_logps, ref_rejected_logps = ref_logps.chunk(2, dim=0)
        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps
        delta_score = chosen_logratios - rejected_logratios
        if train.method is Method.IPO:
            chosen_mask, rejected_mask = completion_mask.chunk(2, dim=0)
            ipo_delta = (chosen_logratios / chosen_mask.sum(dim=1).clamp(min=1.0)
                         - rejected_logratios / rejected_mask.sum(dim=1).clamp(min=1.0))
            per_sequence_loss = (ipo_delta - 1 / (2 * BETA)) ** 2
        else:
            per_sequence_loss = -F.logsigmoid(BETA * delta_score)
        loss = per_sequence_loss.mean()
        # logging that allocates on the device (its .item() calls are left out)
        entropy_sum = (outputs.entropy[:, -seq_len:].detach() * shift_completion_mask).sum()
        del entropy_sum
        return loss

    def _kl_logps(self, model, batch):
        """kto_trainer.py ``_compute_kl_logps``."""
        import torch

        kl_labels = batch["KL_input_ids"].masked_fill(batch["KL_completion_mask"] == 0, -100)
        with torch.no_grad():
            kl = model(input_ids=batch["KL_input_ids"], attention_mask=batch["KL_attention_mask"], use_cache=False,
                       labels=kl_labels, fused_lm_head=True).log_probs
        return kl[:, -(kl_labels.size(1) - 1):].sum(-1)

    def _kto_loss(self, batch, phase):
        """kto_trainer.py ``_compute_loss`` (loss_type "kto"); the chosen/rejected split is the first
        and second half of the batch (the real one is ``nonzero`` on the labels)."""
        import torch
        import torch.nn.functional as F

        train = self.train
        KL_logps = self._kl_logps(self.policy, batch)
        model_kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
        completion_labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        outputs = self.policy(**model_kwargs, labels=completion_labels, fused_lm_head=True)
        seq_len = batch["input_ids"].size(1) - 1
        completion_logps = outputs.log_probs[:, -seq_len:].sum(-1)
        n = completion_logps.shape[0]
        chosen_idx = torch.arange(0, n // 2)
        rejected_idx = torch.arange(n // 2, n)
        chosen_logps = completion_logps.index_select(0, chosen_idx)
        rejected_logps = completion_logps.index_select(0, rejected_idx)
        if train.strategy is Strategy.PRECOMPUTE:
            ref_chosen_logps = batch["ref_logps"].index_select(0, chosen_idx)
            ref_rejected_logps = batch["ref_logps"].index_select(0, rejected_idx)
            ref_KL_logps = batch["ref_KL_logps"]
        else:
            phase("reference forward")
            with self._ref_context():
                model = self.ref if self.ref is not None else self.policy
                ref_KL_logps = self._kl_logps(model, batch)
                ref_outputs = model(**model_kwargs, labels=completion_labels, fused_lm_head=True)
            ref_completion_logps = ref_outputs.log_probs[:, -seq_len:].sum(-1)
            del ref_outputs
            ref_chosen_logps = ref_completion_logps.index_select(0, chosen_idx)
            ref_rejected_logps = ref_completion_logps.index_select(0, rejected_idx)
        kl = (KL_logps - ref_KL_logps).mean().detach().clamp(min=0)
        chosen_losses = 1 - F.sigmoid(BETA * ((chosen_logps - ref_chosen_logps) - kl))
        rejected_losses = 1 - F.sigmoid(BETA * (kl - (rejected_logps - ref_rejected_logps)))
        losses = torch.cat((chosen_losses, rejected_losses), 0)
        entropy_sum = (outputs.entropy[:, -seq_len:].detach() * batch["completion_mask"][:, 1:]).sum()
        del entropy_sum
        return losses.nanmean()

    def _pair_logits_loss(self, batch, phase):
        """ORPO (``ORPOTrainer.concatenated_forward`` + ``odds_ratio_loss``) and SimPO
        (``CPOTrainer.concatenated_forward`` + ``cpo_loss``, loss_type "simpo", cpo_alpha 0), called
        on a stand-in for the trainer that holds the attributes they read."""
        import types

        import torch

        device = torch.device("cpu")
        acc = types.SimpleNamespace(device=device)
        if self.train.method is Method.ORPO:
            from trl.experimental.orpo import ORPOTrainer as T

            shim = types.SimpleNamespace(is_encoder_decoder=False, padding_value=0, accelerator=acc,
                                         aux_loss_enabled=False, beta=BETA, concatenated_inputs=T.concatenated_inputs,
                                         get_batch_logps=T.get_batch_logps)
            out = T.concatenated_forward(shim, self.policy, batch)
            chosen_logps, rejected_logps, chosen_logits, rejected_logits, nll = out[:5]
            losses, chosen_rewards, rejected_rewards, _, _ = T.odds_ratio_loss(shim, chosen_logps, rejected_logps)
            loss = nll - losses.mean()
        else:
            from trl.experimental.cpo import CPOTrainer as T

            shim = types.SimpleNamespace(is_encoder_decoder=False, pad_token_id=0, accelerator=acc,
                                         aux_loss_enabled=False, beta=2.0, simpo_gamma=0.5, label_smoothing=0.0,
                                         loss_type="simpo", cpo_alpha=0.0, alpha=0.0,
                                         concatenated_inputs=T.concatenated_inputs, get_batch_logps=T.get_batch_logps)
            out = T.concatenated_forward(shim, self.policy, batch)
            chosen_logps, rejected_logps, chosen_logits, rejected_logits, nll = out[:5]
            losses, chosen_rewards, rejected_rewards = T.cpo_loss(shim, chosen_logps, rejected_logps)
            loss = losses.mean() + shim.cpo_alpha * nll
        # get_batch_loss_metrics' device-side reductions (their .item() calls are left out)
        metrics = [chosen_logits.detach().mean(), rejected_logits.detach().mean()]
        del metrics, out, chosen_logits, rejected_logits
        return loss


def _enable_checkpointing(model, kwargs: dict) -> None:
    """``activation_checkpointing_enable`` (transformers >= 5.2x) or its older name."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _sync_reference(policy, ref, alpha: float = 0.6) -> None:
    """TR-DPO's ``SyncRefModelCallback._sync_target_model``: in place, no temporaries."""
    import torch

    with torch.no_grad():
        for tp, cp in zip(ref.parameters(), policy.parameters()):
            tp.data.mul_(1.0 - alpha).add_(cp.data, alpha=alpha)
