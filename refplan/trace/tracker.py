"""The live-bytes tracker with a peak per (phase, segment), and the hooks that move it between segments.

A segment is ``"pre"`` (before the first decoder layer), ``("layer", i)`` (inside layer i's forward, or
its backward) or ``"post"`` (after the last layer: final norm, head, loss). Forward pre/post hooks on the
decoder layers set the segment in the forward; gradient hooks on the layers' input and output hidden
states set it in the backward, which runs from the head ("post") down to the embedding ("pre").
"""

from __future__ import annotations

from transformers.modeling_layers import GradientCheckpointingLayer

from refplan.harness.tracker import LiveBytes


class SegmentTracker(LiveBytes):
    """LiveBytes with a peak per (phase, segment) of the measured step; optional op labels."""

    counts_fake = True  # the traced step's tensors are all fake

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



def decoder_layers(module) -> list:
    return [m for m in module.modules() if isinstance(m, GradientCheckpointingLayer)]


def hook_layers(module, tracker: SegmentTracker, expected: int) -> None:
    """Segment hooks on every decoder layer of ``module`` (``expected`` of them)."""
    layers = decoder_layers(module)
    if len(layers) != expected:
        raise RuntimeError(f"found {len(layers)} decoder layers in {type(module).__name__}, expected {expected}")
    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(_enter_layer(tracker, i), with_kwargs=True)
        if i == len(layers) - 1:
            layer.register_forward_hook(_leave_last_layer(tracker, i), with_kwargs=True)


def _enter_layer(tracker: SegmentTracker, i: int):
    def pre(mod, args, kwargs):
        if tracker.in_backward:
            return None  # checkpoint recompute inside backward
        tracker.set_segment(("layer", i))
        h = args[0] if args else kwargs.get("hidden_states")
        if h is not None and h.requires_grad:
            # its gradient is complete when this layer's backward is done
            nxt = ("layer", i - 1) if i > 0 else "pre"
            h.register_hook(lambda g: tracker.set_segment(nxt))
        return None

    return pre


def _leave_last_layer(tracker: SegmentTracker, i: int):
    def post(mod, args, kwargs, out):
        if tracker.in_backward:
            return None
        tracker.set_segment("post")
        h = out[0] if isinstance(out, (tuple, list)) else out
        if h is not None and getattr(h, "requires_grad", False):
            h.register_hook(lambda g: tracker.set_segment(("layer", i)))
        return None

    return post
