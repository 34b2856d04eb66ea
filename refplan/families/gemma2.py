"""Gemma 2 (``Gemma2ForCausalLM``): sandwich norms, alternating sliding / full layers, soft-capped
attention scores (eager attention only in transformers 5.x) and final logits.

Source: transformers 5.24 ``models/gemma2``.
"""

from refplan.families._blocks import decoder, layer_types, windowing
from refplan.model import AttentionKernel, NormPlacement, NormStyle, Structure

MODEL_TYPES = ("gemma2",)
DEFAULTS = {
    "num_key_value_heads": 4, "head_dim": 256, "tie_word_embeddings": True,
    "hidden_activation": "gelu_pytorch_tanh", "attention_bias": False, "sliding_window": 4096,
    "layer_types": None, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
}
SANDWICH_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm")


def build(r) -> dict:
    bias = r.bool("attention_bias")
    h, n_layers = r.int("hidden_size"), r.int("num_hidden_layers")
    window = r.opt_int("sliding_window")
    types = layer_types(r, n_layers, window, lambda i: bool((i + 1) % 2))
    structure = Structure(norm=NormStyle.RMS_GEMMA, placement=NormPlacement.SANDWICH,
                          attention=AttentionKernel.EAGER_ONLY, embed_scale=h**0.5,
                          attn_softcap=r.opt_float("attn_logit_softcapping"),
                          final_softcap=r.opt_float("final_logit_softcapping"), **windowing(window, types))
    return decoder(r, qkv_bias=bias, o_bias=bias, block_norms=SANDWICH_NORMS, act_key="hidden_activation",
                   structure=structure)
