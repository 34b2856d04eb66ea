"""Mistral (``MistralForCausalLM``): Llama with a sliding window on every layer, no attention biases.

Source: transformers 5.24 ``models/mistral``.
"""

from refplan.families._blocks import all_sliding, decoder, windowing
from refplan.model import Structure

MODEL_TYPES = ("mistral",)
DEFAULTS = {
    "num_key_value_heads": 8, "head_dim": None, "tie_word_embeddings": False,
    "hidden_act": "silu", "sliding_window": 4096,
}


def build(r) -> dict:
    window = r.opt_int("sliding_window")
    n_layers = r.int("num_hidden_layers")
    return decoder(r, structure=Structure(**windowing(window, all_sliding(window, n_layers))))
