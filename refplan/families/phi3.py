"""Phi-3 (``Phi3ForCausalLM``): fused ``qkv_proj`` and ``gate_up_proj``, optional sliding window.

Source: transformers 5.24 ``models/phi3``.
"""

from refplan.families._blocks import Mlp, all_sliding, decoder, heads, windowing
from refplan.model import Linear, Role, Structure

MODEL_TYPES = ("phi3",)
DEFAULTS = {
    "num_key_value_heads": None, "head_dim": None, "tie_word_embeddings": False,
    "hidden_act": "silu", "sliding_window": None,
}


def build(r) -> dict:
    h, n_layers = r.int("hidden_size"), r.int("num_hidden_layers")
    n, kv, hd = heads(r, h)
    inter = r.int("intermediate_size")
    attn = (Linear("qkv_proj", Role.QKV, h, n * hd + 2 * kv * hd), Linear("o_proj", Role.O, n * hd, h))
    mlp = Mlp((Linear("gate_up_proj", Role.MLP_GATE_UP, h, 2 * inter), Linear("down_proj", Role.MLP_DOWN, inter, h)),
              inter)
    window = r.opt_int("sliding_window")
    return decoder(r, attn=attn, mlps=[mlp] * n_layers,
                   structure=Structure(**windowing(window, all_sliding(window, n_layers))))
