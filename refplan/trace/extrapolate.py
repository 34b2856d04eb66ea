"""Per-layer extrapolation of traced steps: the layer pattern, the two traced depths, and each segment's
peak carried linearly to the real depth.

The model is traced at ``n1`` and ``n2 = n1 + P`` decoder layers, where the layer list is ``k`` special
layers followed by a pattern of period ``P`` (``P = 1`` for a plain decoder; ``k =
first_k_dense_replace`` for DeepSeek; a sliding/full ``layer_types`` pattern sets ``P``), ``n1 >= k +
P`` and ``L - n1`` is a multiple of ``P``. ``k`` is at least 1: the first layer is special in memory
whatever its shape (its input is the embedding output, which the model keeps referenced; with PEFT it
needs no grad), so a plain decoder is traced at 2 and 3 layers. Within each phase the tracker keeps one
peak per *segment* -- before the first layer, inside each decoder layer's forward (or backward), after
the last -- and each segment's peak is affine in the layer count, while the phase peak (a maximum over
segments) is not: in a full fine-tune backward the peak moves from the LM head to the embedding as
gradients outgrow the freed activations (Llama-3.1-8B, 1 pair x 512: between 4 and 5 layers). So every
segment is extrapolated on its own (layers keyed by position from the bottom and from the top) and the
phase peak is their maximum at the real depth. ``bench/trace_check.py`` checks it against full traces.

Pure standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from refplan.model import ModelSpec
from refplan.result import Estimate, Phase
from refplan.spec import TrainSpec

PHASES = ("precompute", "policy forward", "reference forward", "backward", "optimizer step")
#: static components, in the order they are reported; the rest of a phase's peak is "step tensors"
STATIC = ("policy weights", "lora weights", "reference weights", "optimizer state", "batch")
STEP_TENSORS = "step tensors"


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


def estimate_from_peaks(train: TrainSpec, peaks: dict[str, int], static: dict) -> Estimate:
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
    return estimate_from_peaks(train, {ph: tr.phase_peak(ph) for ph in PHASES if tr.phase_peak(ph) is not None},
                               tr.static)


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

