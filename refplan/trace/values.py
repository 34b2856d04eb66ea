"""Values the trace knows: the batch's token ids, masks and labels, so that TRL's own step code runs on
fake tensors.

A fake tensor has no data, so ``FakeTensorMode`` refuses an op whose result depends on values: ``.item()``
(``aten._local_scalar_dense``), ``torch.nonzero``, indexing with a boolean mask. TRL's loss code has
such ops -- KTO splits its batch with ``nonzero`` on the labels, DPO and KTO average their logging
metrics with boolean masks and ``.item()`` -- and the memory they allocate depends on the mask's count.

:class:`KnownValues` sits between the tracker and ``FakeTensorMode`` and keeps a real *shadow* for
every small tensor whose values follow from the batch: a factory op with a non-float dtype (``zeros``,
``ones``, ``arange``: ids, masks, labels, positions) or any op whose tensor inputs all have shadows
(``masked_fill``, ``chunk``, ``sum``, ``==`` on masks). The shadow op runs on real CPU tensors outside
every mode, so it is neither traced nor counted. With shadows, a value-dependent op gets its real
answer: ``nonzero`` and mask indexing produce fake outputs of the real shapes, ``.item()`` the real
number. A value-dependent op on a tensor without a shadow (a loss, a log-prob) only feeds logging:
``.item()`` answers 0 and boolean tests answer False; a shape-dependent one there is an error.
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils.weak import WeakIdKeyDictionary

aten = torch.ops.aten

#: largest tensor (elements) given a shadow: masks and ids of a batch, not [B, 1, S, S] attention masks
SHADOW_LIMIT = 1 << 22
#: factories whose values are undefined: their results get no shadow
_UNDEFINED = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default,
              aten.new_empty.default, aten.new_empty_strided.default}


class KnownValues(TorchDispatchMode):
    """Shadow values for the batch-derived tensors of a fake-tensor step (enter it after ``FakeTensorMode``
    and before the tracker, so the tracker counts what it returns)."""

    def __init__(self):
        super().__init__()
        self._shadow = WeakIdKeyDictionary()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = _tensor_args(args, kwargs)
        known = all(self._known(t) for t in tensors)
        kind = _kind(func)
        if kind is _VALUE:
            return self._real(func, args, kwargs) if known else _placeholder(func)
        if kind is _INDEX:
            return self._index(func, args, kwargs, known)
        if kind is _SHAPE:
            if not known:
                raise RuntimeError(f"trace: {func} needs the values of a tensor the trace does not know")
            return self._dynamic(func, args, kwargs)
        out = func(*args, **kwargs)
        if (known and tensors) or (not tensors and func not in _UNDEFINED and _small_exact(out)):
            self._follow(func, args, kwargs, out)
        elif kind is _MUTATES:
            for t in tensors:  # written with values the trace does not know
                self._shadow.pop(t, None)
        return out

    # -- shadows ------------------------------------------------------------------------------------

    def _known(self, t: torch.Tensor) -> bool:
        """``t`` has a shadow, or is a real tensor (a constant such as ``torch.tensor(0.5)`` being lifted)."""
        return t in self._shadow or not isinstance(t, FakeTensor)

    def _real(self, func, args, kwargs):
        """``func`` on the shadows, outside every mode."""
        def real(x):
            return self._shadow.get(x, x) if isinstance(x, torch.Tensor) else x

        with _disable_current_modes():
            return func(*pytree.tree_map(real, args), **pytree.tree_map(real, kwargs))

    def _follow(self, func, args, kwargs, out) -> None:
        fakes = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.numel() > SHADOW_LIMIT for t in fakes):
            return
        reals = [t for t in pytree.tree_leaves(self._real(func, args, kwargs)) if isinstance(t, torch.Tensor)]
        for fake, real in zip(fakes, reals, strict=True):
            self._shadow[fake] = real

    def _fake_like(self, real: torch.Tensor, device) -> torch.Tensor:
        """A fake tensor with ``real``'s shape, dtype and values (as its shadow)."""
        fake = torch.empty(real.shape, dtype=real.dtype, device=device)
        self._shadow[fake] = real
        return fake

    # -- value-dependent shapes ---------------------------------------------------------------------

    def _dynamic(self, func, args, kwargs):
        device = next(t for t in pytree.tree_leaves(args) if isinstance(t, torch.Tensor)).device
        return pytree.tree_map(lambda r: self._fake_like(r, device) if isinstance(r, torch.Tensor) else r,
                               self._real(func, args, kwargs))

    def _index(self, func, args, kwargs, known):
        """``x[mask]``: a known boolean mask becomes the integer indices it selects (``nonzero`` inside the
        kernel, never a live tensor), so the result has the real shape even when ``x`` is unknown."""
        if known:
            return self._dynamic(func, args, kwargs)
        x, indices = args
        converted = []
        for idx in indices:
            if idx is not None and idx.dtype in (torch.bool, torch.uint8):
                if not self._known(idx):
                    raise RuntimeError("trace: boolean indexing with a mask the trace does not know")
                with _disable_current_modes():
                    columns = self._shadow.get(idx, idx).nonzero().unbind(1)
                converted += [self._fake_like(c, x.device) for c in columns]
            else:
                converted.append(idx)
        return func(x, converted, **kwargs)


_VALUE, _INDEX, _SHAPE, _MUTATES, _PLAIN = "value", "index", "shape", "mutates", "plain"
_KINDS: dict = {}


def _kind(func) -> str:
    """How an op depends on values: its result is a value (``.item()``), boolean indexing, a shape that
    depends on values (``nonzero``), an in-place write, or none of these. Cached per op."""
    kind = _KINDS.get(func)
    if kind is None:
        tags = func.tags
        kind = (_VALUE if torch.Tag.data_dependent_output in tags else _INDEX if func is aten.index.Tensor
                else _SHAPE if torch.Tag.dynamic_output_shape in tags else _MUTATES if func._schema.is_mutable
                else _PLAIN)
        _KINDS[func] = kind
    return kind


def _tensor_args(args, kwargs) -> list:
    """The tensors among an aten op's arguments (tensors, or lists of tensors)."""
    out = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if isinstance(x, torch.Tensor))
    return out


def _small_exact(out) -> bool:
    """A factory result worth a shadow: small, and ids / masks / positions rather than float data."""
    return (isinstance(out, torch.Tensor) and out.numel() <= SHADOW_LIMIT
            and not (out.is_floating_point() or out.is_complex()))


def _placeholder(func):
    """The answer of a value-dependent op on a tensor the trace does not know (logging only)."""
    ret = func._schema.returns[0].type
    if isinstance(ret, torch.BoolType):
        return False
    return 0
