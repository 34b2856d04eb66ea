"""Qwen2 / Qwen2.5 (``Qwen2ForCausalLM``): Llama with q/k/v biases (hard-coded: ``attention_bias`` is
ignored) and an optional sliding window above ``max_window_layers``.

Source: transformers 5.24 ``models/qwen2``.
"""

from refplan.families._blocks import decoder, sliding_qwen
from refplan.model import Structure

MODEL_TYPES = ("qwen2",)
DEFAULTS = {
    "num_key_value_heads": 32, "head_dim": None, "tie_word_embeddings": False, "hidden_act": "silu",
    "use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 28, "layer_types": None,
}


def build(r) -> dict:
    n_layers = r.int("num_hidden_layers")
    return decoder(r, qkv_bias=True, structure=Structure(**sliding_qwen(r, n_layers)))
