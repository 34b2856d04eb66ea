"""Build a :class:`~refplan.model.ModelSpec` from a transformers ``config.json`` dict.

One module per family, registered in :data:`REGISTRY`. A family module holds

- ``MODEL_TYPES``: the ``model_type`` values it builds (the first is the family's name; the others
  are aliases such as a multimodal wrapper or a pre-port name);
- ``DEFAULTS``: the transformers 5.24 config-class defaults of the optional keys it reads
  (``models/<family>/configuration_<family>.py``); a key with no default is required;
- ``build(reader) -> dict``: the ModelSpec fields, module by module as the modeling code's
  ``__init__`` builds them, with the decoder's :class:`~refplan.model.Structure`;
- optionally ``KEY_ALIASES`` (older key names) and ``text_config(config, where)`` (the decoder's
  part of a wrapper config).

Adding a family is one module plus one entry in :data:`REGISTRY`. Pure standard library: no torch,
no transformers. ``spec.params`` equals ``sum(p.numel())`` of ``AutoModelForCausalLM.from_config``
(tests check every catalog entry and odd-shaped configs on the meta device).
"""

from __future__ import annotations

from types import ModuleType

from refplan.errors import PlanError
from refplan.families import (bloom, cohere, deepseek_v2, falcon, gemma, gemma2, gemma3, gpt2, gpt_bigcode, gpt_neox,
                              granite, llama, mistral, mixtral, olmo2, opt, phi, phi3, qwen2, qwen2_moe, qwen3,
                              qwen3_moe, smollm3, stablelm, starcoder2)
from refplan.families._reader import Reader
from refplan.model import Linear, ModelSpec, Role

#: family name -> module; every ``model_type`` a module lists resolves to it
REGISTRY: dict[str, ModuleType] = {m.MODEL_TYPES[0]: m for m in (
    llama, mistral, mixtral, qwen2, qwen3, qwen3_moe, gemma, gemma2, gemma3, phi3, olmo2, deepseek_v2, gpt2,
    gpt_neox, falcon, starcoder2, qwen2_moe, gpt_bigcode, bloom, opt, phi, granite, cohere, stablelm, smollm3,
)}
_BY_MODEL_TYPE: dict[str, ModuleType] = {t: m for m in REGISTRY.values() for t in m.MODEL_TYPES}

#: model_type values accepted by :func:`spec_from_config`
SUPPORTED_FAMILIES = tuple(sorted(_BY_MODEL_TYPE))

#: keys every standard decoder config carries; the generic fallback requires all of them
_STANDARD_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


def spec_from_config(config: dict, model_id: str, source: str) -> ModelSpec:
    """The :class:`ModelSpec` of the causal LM transformers 5.24 builds from ``config``.

    ``source`` says where the config came from (a path, ``hf-cache:...``, ``catalog: ...``) and is
    what errors name. An unknown ``model_type`` whose config has the standard keys (``hidden_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``, ``vocab_size``) is planned
    as a Llama-shaped decoder with ``generic_fallback=True``.
    """
    where = source or "config.json"
    if not isinstance(config, dict):
        raise PlanError(where, f"expected a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    module = _BY_MODEL_TYPE.get(model_type)
    generic = module is None
    if generic:
        missing = [k for k in _STANDARD_KEYS if k not in config]
        if missing:
            kind = f"model_type {model_type!r}" if model_type is not None else "a config without model_type"
            raise PlanError(where, f"unsupported {kind} (supported: {', '.join(SUPPORTED_FAMILIES)}); "
                            f"a generic decoder needs key '{missing[0]}'")
        module, family = llama, str(model_type) if model_type is not None else "unknown"
    else:
        family = module.MODEL_TYPES[0]
    text, where, notes = config, where, ()
    if not generic and hasattr(module, "text_config"):
        text, where, notes = module.text_config(config, where)
    reader = Reader(text, module.DEFAULTS, where, getattr(module, "KEY_ALIASES", None))
    fields = module.build(reader)
    if notes:
        s = fields["structure"]
        fields["structure"] = type(s)(**{**s.__dict__, "notes": s.notes + notes})
    h, vocab = fields.get("embed_dim") or fields["hidden_size"], fields["vocab_size"]
    head_bias = fields.get("head_bias", False)
    lm_head = None if fields["tie_word_embeddings"] else Linear("lm_head", Role.LM_HEAD, h, vocab, head_bias,
                                                                lora_target=False)
    return ModelSpec(model_id=model_id, family=family, source=source, lm_head=lm_head, generic_fallback=generic,
                     config=dict(text), **fields)
