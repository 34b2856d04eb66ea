"""Granite 3.x (``GraniteForCausalLM``): the Llama decoder (RMSNorm pre-norm, GQA, RoPE, gated MLP,
``attention_bias`` on q/k/v/o, ``mlp_bias``) with four scalar multipliers -- embeddings times
``embedding_multiplier``, each sublayer's output times ``residual_multiplier`` before the residual
add, ``attention_multiplier`` as the attention scale, logits divided by ``logits_scaling``. A
multiply by a Python scalar keeps nothing for backward, and the scaled logits replace the
unscaled ones (TRL's fused head applies the scale per tile), so none of them moves memory.

Source: transformers 5.24 ``models/granite/{configuration,modeling}_granite.py``: the config-class
defaults below; ``GraniteAttention`` (``scaling = attention_multiplier``), ``GraniteMLP``,
``GraniteDecoderLayer`` (``residual + hidden_states * residual_multiplier``), ``GraniteModel``
(``inputs_embeds * embedding_multiplier``), ``GraniteForCausalLM`` (``logits / logits_scaling``).
"""

from refplan.families._blocks import decoder

MODEL_TYPES = ("granite",)
DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": None, "head_dim": None, "hidden_act": "silu",
    "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
}


def build(r) -> dict:
    bias = r.bool("attention_bias")
    return decoder(r, qkv_bias=bias, o_bias=bias, mlp_bias=r.bool("mlp_bias"))
