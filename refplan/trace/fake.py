"""The model on fake tensors: the decoder config cut to a depth, a meta build, every parameter and buffer
swapped for a ``FakeTensorMode`` tensor on the fake **CPU** device, and the two places transformers looks at
values a fake tensor does not have.

Fake tensors carry shapes and storages but no data, so a 70B step costs a few hundred MB of RSS. Fake
``cuda`` fails on CPU-only torch builds, and PEFT cannot wrap an already-fake model (a weakref swap
error), so models are built on the meta device, wrapped there, and only then faked.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings

import torch

from refplan.errors import PlanError
from refplan.model import ModelSpec
from refplan.settings import Dtype

TORCH_DTYPES = {Dtype.FP32: torch.float32, Dtype.BF16: torch.bfloat16, Dtype.FP16: torch.float16}


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


def build_meta(hf_config, dtype: Dtype, attn: str):
    """The causal LM of ``hf_config`` on the meta device (no storage), in ``dtype``."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config, dtype=TORCH_DTYPES[dtype], attn_implementation=attn)


def fake_parameters(module, memo: dict, real: bool = False) -> None:
    """Swap every meta parameter and buffer for a tensor on the (fake) CPU device.

    Runs under FakeTensorMode (``real=False``: no data) or not (random weights, zero buffers). Shared
    (tied) parameters stay shared through ``memo``."""
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


def storages(tensors) -> dict[int, int]:
    """Storage address -> nbytes of ``tensors`` (each storage once)."""
    out = {}
    for t in tensors:
        if t is None:
            continue
        st = t.untyped_storage()
        out[st._cdata] = st.nbytes()
    return out


@contextlib.contextmanager
def known_padding(padded: bool):
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
def grouped_mm_any_dtype():
    """torch's meta kernel for ``aten._grouped_mm`` applies the CUDA kernel's checks (bf16 only),
    while the CPU kernel also runs fp32: for a non-bf16 MoE, let transformers route the experts
    through its own ``grouped_mm_fallback`` op, which has a fake kernel and the same inputs,
    outputs and saved tensors."""
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


def preload() -> None:
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
def quiet():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            hf_logging.set_verbosity(level)
