"""Live tensor bytes on CPU, exactly, by phase.

:class:`LiveBytes` is a ``TorchDispatchMode`` that sees the output of every aten op, records each
new untyped storage once (by ``nbytes``) and releases it when the storage dies (a ``weakref``
callback on the storage, the mechanism of ``weakref.finalize`` at a third of its cost). bitsandbytes'
custom ops are run with the mode still active, so their kernels' temporaries count too (see
:func:`_run_inside`). Views share
their base's storage and are not counted twice; in-place ops return a storage already seen. Storages that never pass through the dispatcher -- weights that ``from_pretrained``
reads from safetensors -- are added with :meth:`LiveBytes.register_module` (the harness registers
every model ``from_pretrained`` returns, TRL's own reference reload included, see
:func:`register_loaded_models`).

Wrapper tensor subclasses (DTensor: FSDP2's parameters, gradients and optimizer state) are counted
by the local tensors they hold, never by their own placeholder storage (which reports the global
size); their ops are handed back to the subclass with the mode still active, so the ops on local
shards are seen like any other.

What is counted: tensor storage bytes on every device (the harness enables the tracker for CPU
runs). Not counted: allocator slack and fragmentation, Python objects, storages created before the
mode was entered and never registered, and memory owned by libraries outside torch tensors
(oneDNN scratch, tokenizers).

:class:`Phases` keeps per-phase peaks of the live count, of RSS (``VmHWM``, reset per phase through
``/proc/self/clear_refs``) and, on CUDA, of ``torch.cuda.max_memory_allocated`` / ``reserved``.
"""

from __future__ import annotations

import contextlib
import functools
import re
import weakref

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode


class LiveBytes(TorchDispatchMode):
    """Count live tensor-storage bytes; ``peak`` is the high-water mark since the last :meth:`reset_peak`."""

    #: count fake tensors' storages as if real: the trace engine's whole step runs on fake tensors
    #: (refplan.trace); a real run sees them only inside DTensor's sharding propagation, holding nothing
    counts_fake = False

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}  # StorageImpl address -> nbytes counted
        self._refs: dict[int, weakref.ref] = {}  # keeps the release callbacks alive
        self._inplace: dict = {}  # op -> True when every output is an input written in place

    # -- counting -----------------------------------------------------------------------------------
    # No lock: the GIL serializes these dict updates, and a release callback that runs inside
    # add_storage (a storage freed by a GC pass) only touches other keys.

    def _release(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)
        self._refs.pop(key, None)

    def add_storage(self, storage: torch.UntypedStorage) -> None:
        key = storage._cdata
        n = storage.nbytes()
        old = self._sizes.get(key)
        if old == n:
            return
        if old is None:
            # weakref.ref with a callback is weakref.finalize's mechanism, at a third of its cost
            self._refs[key] = weakref.ref(storage, lambda _ref, k=key: self._release(k))
            old = 0
        self._sizes[key] = n  # new, or resized in place (``out=`` variants, ``resize_``)
        self.live += n - old
        if self.live > self.peak:
            self.peak = self.live

    def add_tensor(self, t: torch.Tensor) -> None:
        if t.is_meta or (isinstance(t, FakeTensor) and not self.counts_fake):
            return  # DTensor's sharding propagation makes fake tensors: they hold no memory
        if _is_wrapper_subclass(t):  # count the local tensors it holds, not its data-less wrapper storage
            for name in t.__tensor_flatten__()[0]:
                inner = getattr(t, name, None)
                if isinstance(inner, torch.Tensor):
                    self.add_tensor(inner)
            return
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse tensors, subclasses without a storage
            return
        self.add_storage(storage)

    def register_module(self, module: torch.nn.Module) -> None:
        """Add a module's parameters, buffers and bitsandbytes quantization state (idempotent: a storage
        is counted once)."""
        for t in module_tensors(module):
            self.add_tensor(t)

    def reset_peak(self) -> None:
        self.peak = self.live

    # -- dispatch -----------------------------------------------------------------------------------

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps every __torch_dispatch__ call in a dynamo-disable frame unless a mode opts out;
        # nothing in a burst is compiled, and the wrapper costs about as much as the bookkeeping.
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if types and any(_dispatches_itself(t) for t in types):
            fake = all(issubclass(t, FakeTensor) for t in types if _dispatches_itself(t))
            if fake and not self.counts_fake:
                # fake tensors hold no memory (DTensor's sharding propagation runs ops on them)
                return func(*args, **kwargs) if kwargs else func(*args)
            # A tensor subclass with its own __torch_dispatch__ (DTensor: FSDP2's parameters, gradients and
            # Adam state) is a wrapper whose untyped storage has no data but reports the *global* nbytes;
            # counting it adds a full unsharded copy that never dies. NotImplemented hands the op to the
            # subclass with this mode still on the stack, so the ops on its local shards come back here
            # and are counted instead (FakeTensorMode's protocol for foreign subclasses).
            if not fake:
                return NotImplemented
        if func.namespace == "bitsandbytes":
            out = _run_inside(self, func, args, kwargs or {})
        else:
            out = func(*args, **kwargs) if kwargs else func(*args)
        inplace = self._inplace.get(func)
        if inplace is None:
            inplace = self._inplace[func] = _writes_inputs_in_place(func)
        if inplace:  # in-place ops return their input, already counted
            return out
        if type(out) is torch.Tensor:
            self.add_tensor(out)
        elif isinstance(out, (tuple, list)):
            for o in out:
                if isinstance(o, torch.Tensor):
                    self.add_tensor(o)
                elif isinstance(o, (tuple, list)):
                    for oo in o:
                        if isinstance(oo, torch.Tensor):
                            self.add_tensor(oo)
        elif isinstance(out, torch.Tensor):
            self.add_tensor(out)
        return out


_RESIZING = {"resize_", "resize_as_", "set_"}


def _dispatches_itself(cls) -> bool:
    """A tensor class with its own ``__torch_dispatch__`` (DTensor, FakeTensor); ``nn.Parameter`` has
    torch's disabled one and is dispatched like a plain tensor."""
    return getattr(cls, "__torch_dispatch__", None) is not torch._C._disabled_torch_dispatch_impl


def _is_wrapper_subclass(t: torch.Tensor) -> bool:
    """True for a traceable wrapper subclass (DTensor): its own storage is a placeholder, its data lives in
    the inner tensors ``__tensor_flatten__`` names. ``nn.Parameter`` and bitsandbytes' parameters are not."""
    return type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__") and torch._C._dispatch_keys(t).has(
        torch._C.DispatchKey.Python)


#: backend dispatch keys of the devices a bitsandbytes kernel may run on
_BACKEND_KEYS = {"cpu": torch._C.DispatchKey.CPU, "cuda": torch._C.DispatchKey.CUDA}


def _run_inside(mode: TorchDispatchMode, func, args, kwargs):
    """Run a bitsandbytes custom op with ``mode`` still on the stack, so that the tensors its kernel makes
    -- outputs and temporaries (a dequantized weight inside ``gemm_4bit``, the fp32 absmax of a nested
    state) -- are counted like any other op's.

    A dispatch mode normally sees a custom op as one call and its outputs only: the kernel runs with
    the mode popped. Here the op is re-dispatched straight to its backend kernel (below the Python key,
    so it does not come back here) with the mode pushed again; the kernel's own aten and bitsandbytes
    calls then pass through the mode. Ops on another device run as usual."""
    device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), None)
    key = _BACKEND_KEYS.get(device)
    if key is None:
        return func(*args, **kwargs)
    with mode:
        return func.redispatch(torch._C.DispatchKeySet(key), *args, **kwargs)


def _writes_inputs_in_place(func) -> bool:
    """True when every output of an aten op is an input written in place (``Tensor(a!)``) and the op
    cannot grow that storage (``out=`` overloads and ``resize_``/``set_`` can). Views are still
    looked at: ``lift_fresh`` (``torch.tensor(...)``) and views of tensors made outside the
    dispatcher are the first time their storage is seen."""
    try:
        schema = func._schema
    except AttributeError:
        return False
    if schema.overload_name == "out" or schema.name.split("::")[-1] in _RESIZING:
        return False
    returns = schema.returns
    return bool(returns) and all(r.alias_info is not None and r.alias_info.is_write for r in returns)


def quant_state_tensors(module: torch.nn.Module):
    """The tensors bitsandbytes keeps outside parameters and buffers: a ``Params4bit``'s ``quant_state``
    (absmax; the 16-value code; with nested quantization the offset and the second-level absmax and
    code), a ``Linear8bitLt``'s row scales ``SCB`` (and ``CB``, the int8 weight itself)."""
    for m in module.modules():
        w = getattr(m, "weight", None)
        qs = getattr(w, "quant_state", None) or getattr(m, "quant_state", None)
        if qs is not None and hasattr(qs, "absmax"):
            yield from (t for t in (qs.absmax, qs.code, getattr(qs, "offset", None)) if t is not None)
            s2 = getattr(qs, "state2", None) if getattr(qs, "nested", False) else None
            if s2 is not None:
                yield from (t for t in (s2.absmax, s2.code) if t is not None)
        state = getattr(m, "state", None)
        for t in (getattr(w, "SCB", None), getattr(state, "SCB", None), getattr(state, "CB", None)):
            if isinstance(t, torch.Tensor):
                yield t


def module_tensors(module: torch.nn.Module):
    """Every tensor a module holds: parameters, buffers and bitsandbytes' quantization state."""
    yield from (p.data for p in module.parameters())
    yield from module.buffers()
    yield from quant_state_tensors(module)


def module_state_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters, buffers and quantization state, each storage once."""
    seen, total = set(), 0
    for t in module_tensors(module):
        if t.is_meta:
            continue
        st = t.untyped_storage()
        if st._cdata not in seen:
            seen.add(st._cdata)
            total += st.nbytes()
    return total


@contextlib.contextmanager
def register_loaded_models(tracker: LiveBytes | None, on_load=None):
    """Register every model ``PreTrainedModel.from_pretrained`` returns (TRL's reference reload
    included) with the tracker; ``on_load(start: bool)`` brackets each load (the harness's "load"
    phase)."""
    from transformers import PreTrainedModel

    original = PreTrainedModel.__dict__["from_pretrained"]  # a classmethod object
    depth = [0]

    @functools.wraps(original.__func__)
    def from_pretrained(cls, *args, **kwargs):
        depth[0] += 1
        if on_load and depth[0] == 1:
            on_load(True)
        try:
            model = original.__func__(cls, *args, **kwargs)
        finally:
            depth[0] -= 1
        if tracker is not None:
            tracker.register_module(model)
        if on_load and depth[0] == 0:
            on_load(False)
        return model

    PreTrainedModel.from_pretrained = classmethod(from_pretrained)
    try:
        yield
    finally:
        PreTrainedModel.from_pretrained = original


# --------------------------------------------------------------------------------------------------
# phases
# --------------------------------------------------------------------------------------------------

def _vm_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Phases:
    """Per-phase peaks of every memory counter the run has.

    A phase may be entered several times (setup -> precompute -> setup); its peaks are the maximum
    over its visits. ``enter(name)`` closes the current phase and opens ``name``.
    """

    def __init__(self, tracker: LiveBytes | None = None, cuda: bool = False, nvml=None):
        self.tracker = tracker
        self.cuda = cuda
        self.nvml = nvml  # refplan.harness.gpu.NvmlSampler or None
        self.current: str | None = None
        self.peaks: dict[str, dict[str, int]] = {}
        self.live_at_start: dict[str, int] = {}

    def _bump(self, name: str, counter: str, value: int | None) -> None:
        if value is None:
            return
        d = self.peaks.setdefault(name, {})
        d[counter] = max(d.get(counter, value), value)

    def _close(self) -> None:
        name = self.current
        if name is None:
            return
        if self.tracker is not None:
            self._bump(name, "live_bytes", self.tracker.peak)
        self._bump(name, "rss_bytes", _vm_hwm_bytes())
        if self.cuda:
            torch.cuda.synchronize()
            self._bump(name, "torch_allocated_bytes", torch.cuda.max_memory_allocated())
            self._bump(name, "torch_reserved_bytes", torch.cuda.max_memory_reserved())
        if self.nvml is not None:
            self._bump(name, "nvml_bytes", self.nvml.take_peak())

    def enter(self, name: str | None) -> None:
        self._close()
        self.current = name
        if name is None:
            return
        if self.tracker is not None:
            self.tracker.reset_peak()
            self.live_at_start.setdefault(name, self.tracker.live)
        _reset_hwm()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        if self.nvml is not None:
            self.nvml.take_peak()  # start the phase's NVML window now

    @contextlib.contextmanager
    def phase(self, name: str):
        previous = self.current
        self.enter(name)
        try:
            yield
        finally:
            self.enter(previous)

    def peak(self, phase: str, counter: str) -> int | None:
        return self.peaks.get(phase, {}).get(counter)
