"""Llama 2 / 3 (``LlamaForCausalLM``): the reference decoder -- RMSNorm pre-norm, GQA, RoPE, gated MLP.

Source: transformers 5.24 ``models/llama/{configuration,modeling}_llama.py``.
"""

from refplan.families._blocks import decoder

MODEL_TYPES = ("llama",)
DEFAULTS = {
    "num_key_value_heads": None, "head_dim": None, "tie_word_embeddings": False,
    "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
}


def build(r) -> dict:
    bias = r.bool("attention_bias")
    return decoder(r, qkv_bias=bias, o_bias=bias, mlp_bias=r.bool("mlp_bias"))
