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
no transformers -- except for a ``model_type`` no module describes: that model is built by transformers
itself and planned by the trace engine (:mod:`refplan.families._traced`), never guessed. ``spec.params`` equals ``sum(p.numel())`` of ``AutoModelForCausalLM.from_config``
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


def spec_from_config(config: dict, model_id: str, source: str) -> ModelSpec:
    """The :class:`ModelSpec` of the causal LM transformers 5.24 builds from ``config``.

    ``source`` says where the config came from (a path, ``hf-cache:...``, ``catalog: ...``) and is
    what errors name. A ``model_type`` without a family module gets the trace-only spec of the model
    transformers builds from ``config`` (``trace_only=True``); a config transformers cannot build is a
    PlanError with its reason.
    """
    where = source or "config.json"
    if not isinstance(config, dict):
        raise PlanError(where, f"expected a JSON object, got {type(config).__name__}")
    module = _BY_MODEL_TYPE.get(config.get("model_type"))
    if module is None:
        from refplan.families._traced import traced_spec

        return traced_spec(config, model_id, source)
    family = module.MODEL_TYPES[0]
    text, where, notes = config, where, ()
    if hasattr(module, "text_config"):
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
    return ModelSpec(model_id=model_id, family=family, source=source, lm_head=lm_head, config=dict(text),
                     **fields)
