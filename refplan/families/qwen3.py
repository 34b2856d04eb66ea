"""Qwen3 (``Qwen3ForCausalLM``): Qwen2's layout with per-head q/k RMSNorm and optional biases.

Source: transformers 5.24 ``models/qwen3``.
"""

from refplan.families._blocks import decoder, heads, rms, sliding_qwen
from refplan.model import QKNorm, Structure

MODEL_TYPES = ("qwen3",)
DEFAULTS = {
    "num_key_value_heads": 32, "head_dim": 128, "tie_word_embeddings": False, "hidden_act": "silu",
    "attention_bias": False, "use_sliding_window": False, "sliding_window": 4096,
    "max_window_layers": 28, "layer_types": None,
}


def build(r) -> dict:
    bias = r.bool("attention_bias")
    hd = heads(r, r.int("hidden_size"))[2]
    structure = Structure(qk_norm=QKNorm.PER_HEAD, **sliding_qwen(r, r.int("num_hidden_layers")))
    return decoder(r, qkv_bias=bias, o_bias=bias, attn_norms=(rms("q_norm", hd), rms("k_norm", hd)),
                   structure=structure)
