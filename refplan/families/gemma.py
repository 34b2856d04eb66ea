"""Gemma 1 (``GemmaForCausalLM``): Llama layout with Gemma's RMSNorm (``1 + weight``, fp32), tied
embeddings scaled by sqrt(hidden_size), GELU-tanh gated MLP.

Source: transformers 5.24 ``models/gemma``.
"""

from refplan.families._blocks import decoder
from refplan.model import NormStyle, Structure

MODEL_TYPES = ("gemma",)
DEFAULTS = {
    "num_key_value_heads": 16, "head_dim": 256, "tie_word_embeddings": True,
    "hidden_act": "gelu_pytorch_tanh", "attention_bias": False,
}


def build(r) -> dict:
    bias = r.bool("attention_bias")
    h = r.int("hidden_size")
    fields = decoder(r, qkv_bias=bias, o_bias=bias,
                     structure=Structure(norm=NormStyle.RMS_GEMMA, embed_scale=h**0.5))
    if fields["hidden_act"] == "gelu":
        fields["hidden_act"] = "gelu_pytorch_tanh"  # GemmaConfig.__post_init__ rewrites the legacy value
    return fields
