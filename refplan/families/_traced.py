"""The :class:`~refplan.model.ModelSpec` of a causal LM without a formula family: what transformers builds.

A ``model_type`` that no module of :mod:`refplan.families` describes is planned by the trace engine
(:mod:`refplan.trace`), which runs TRL's step on the model transformers itself builds from the config.
Its spec is therefore read off that model, built on the meta device (no storage, no weights):

- the parameter count is transformers' own ``sum(p.numel())``, split into the decoder layers (the
  model's ``GradientCheckpointingLayer`` modules, what the trace hooks) and the rest (embeddings,
  final norm, an untied head) -- ``embed_params`` holds the rest, so ``spec.params`` is the total;
- the depth is ``config.num_hidden_layers``, which transformers' ``attribute_map`` answers for
  configs that spell it ``n_layer`` / ``num_layers`` / ``n_layers``;
- each layer's *kind* (``structure.layer_types``) is its parameter names and shapes plus the value
  of every per-layer list the config holds (``layer_types``, ``attention_layers``, ...): the trace
  engine extrapolates in depth over the period of these kinds (:func:`refplan.trace.layer_pattern`);
- a model class without SDPA support runs eager attention (``structure.attention``), as
  ``from_pretrained`` picks it when no implementation is asked.

Nothing here guesses a layout: the memory terms of the formula engine are never applied to this spec
(``trace_only=True``). A config transformers cannot build is a :class:`PlanError` naming the file
with transformers' reason, in one line. Imports torch and transformers (the formula families do not).
"""

from __future__ import annotations

import hashlib
import warnings

from refplan.errors import PlanError
from refplan.model import AttentionKernel, Layer, ModelSpec, Structure

#: config keys that are not the architecture's (dropped before transformers builds the config)
_NOT_ARCHITECTURE = ("architectures", "auto_map", "quantization_config", "torch_dtype", "dtype", "model_type",
                     "transformers_version", "_name_or_path")


def hf_config(config: dict, where: str):
    """The transformers config object of ``config`` (its ``model_type``), or a PlanError with
    transformers' reason."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise PlanError(where, "no model_type: transformers cannot tell which config class reads this file")
    kwargs = {k: v for k, v in config.items() if k not in _NOT_ARCHITECTURE}
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its warnings about token ids outside a small vocabulary
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoConfig.for_model(model_type, **kwargs)
    except Exception as err:  # noqa: BLE001 - transformers' reason, whatever its type, is the message
        raise PlanError(where, f"transformers cannot build a {model_type!r} config: {_one_line(err)}") from None
    finally:
        hf_logging.set_verbosity(level)


def build_meta_model(hf, where: str, attn: str | None = None):
    """``AutoModelForCausalLM.from_config(hf)`` on the meta device, or a PlanError with transformers' reason."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            kwargs = {"attn_implementation": attn} if attn else {}
            return AutoModelForCausalLM.from_config(hf, **kwargs)
    except Exception as err:  # noqa: BLE001
        raise PlanError(where, f"transformers cannot build a causal LM from this {hf.model_type!r} config: "
                               f"{_one_line(err)}") from None
    finally:
        hf_logging.set_verbosity(level)


def decoder_layers(model) -> list:
    """The decoder layers the trace engine hooks (transformers' ``GradientCheckpointingLayer``)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def depth(hf) -> int | None:
    """The config's decoder depth (``num_hidden_layers`` through transformers' attribute map), or None."""
    try:
        n = hf.num_hidden_layers
    except AttributeError:
        return None
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def per_layer_lists(hf, layers: int) -> dict[str, list]:
    """Every list attribute of the config with one entry per decoder layer (``layer_types``,
    GPT-Neo's ``attention_layers``, ...)."""
    return {k: v for k, v in vars(hf).items() if isinstance(v, list) and len(v) == layers and not k.startswith("_")}


def traced_spec(config: dict, model_id: str, source: str) -> ModelSpec:
    """The trace-only ModelSpec of the causal LM transformers builds from ``config``."""
    where = source or "config.json"
    hf = hf_config(config, where)
    model = build_meta_model(hf, where)
    layers = decoder_layers(model)
    n = depth(hf)
    if n is None or n != len(layers):
        found = f"{len(layers)} decoder layers" + (f" but num_hidden_layers = {n}" if n is not None else
                                                   " and no num_hidden_layers")
        raise PlanError(where, f"the trace engine cannot cut this {hf.model_type!r} model in depth: transformers "
                               f"builds {found}")
    lists = per_layer_lists(hf, n)
    kinds, layer_records = [], []
    for i, layer in enumerate(layers):
        shapes = tuple((name, tuple(p.shape)) for name, p in layer.named_parameters())
        kind = repr((shapes, tuple((k, repr(v[i])) for k, v in sorted(lists.items()))))
        kinds.append(hashlib.sha256(kind.encode()).hexdigest()[:12])
        layer_records.append(Layer(linears=(), norms=(), mlp_intermediate=0,
                                   extra_params=sum(p.numel() for p in layer.parameters())))
    total = sum(p.numel() for p in model.parameters())
    in_layers = sum(r.extra_params for r in layer_records)
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied = out_emb is not None and in_emb is not None and out_emb.weight is in_emb.weight
    hidden = getattr(hf, "hidden_size", 0) or 0
    heads = getattr(hf, "num_attention_heads", 0) or 0
    kv_heads = getattr(hf, "num_key_value_heads", None) or heads
    head_dim = getattr(hf, "head_dim", None) or (hidden // heads if heads else 0)
    eager = not getattr(type(model), "_supports_sdpa", False)
    structure = Structure(attention=AttentionKernel.EAGER_ONLY if eager else AttentionKernel.AS_CONFIGURED,
                          layer_types=tuple(kinds),
                          notes=(("trace-only", f"{type(model).__name__}: {total:,} parameters, {n} decoder layers "
                                                f"({type(layers[0]).__name__})"),))
    return ModelSpec(
        model_id=model_id, family=hf.model_type, source=source, hidden_size=hidden, num_layers=n,
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, vocab_size=getattr(hf, "vocab_size", 0) or 0,
        intermediate_size=getattr(hf, "intermediate_size", 0) or 0, tie_word_embeddings=tied,
        layers=tuple(layer_records), embed_params=total - in_layers, final_norm=None, lm_head=None,
        structure=structure, hidden_act=str(getattr(hf, "hidden_act", "") or ""), trace_only=True,
        config=dict(config))


def _one_line(err: Exception) -> str:
    """transformers' reason on one line: its first sentence when the message goes on to list every
    model type it knows."""
    text = " ".join(str(err).split()) or type(err).__name__
    if len(text) > 240 and ". " in text[20:]:
        text = text[:text.index(". ", 20) + 1]
    return text if len(text) <= 300 else text[:297] + "..."
