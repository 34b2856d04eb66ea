"""StarCoder2 (``Starcoder2ForCausalLM``): GQA attention with RoPE and biases (``use_bias``),
LayerNorm (with bias) before each sublayer, a plain ``c_fc`` -> GELU-tanh -> ``c_proj`` MLP, tied
embeddings, and Mistral's sliding window on every layer when ``sliding_window`` is set.

Source: transformers 5.24 ``models/starcoder2/{configuration,modeling}_starcoder2.py``: the
config-class defaults below, ``Starcoder2Attention`` / ``Starcoder2MLP`` / ``Starcoder2DecoderLayer``
(``nn.LayerNorm(hidden_size, eps=norm_epsilon)``), and ``create_sliding_window_causal_mask`` when
``sliding_window`` is not None.
"""

from refplan.families._blocks import Mlp, all_sliding, decoder, heads, layernorm, qkvo, windowing
from refplan.model import Linear, MlpStyle, NormStyle, Role, Structure

MODEL_TYPES = ("starcoder2",)
DEFAULTS = {
    "vocab_size": 49152, "hidden_size": 3072, "intermediate_size": 12288, "num_hidden_layers": 30,
    "num_attention_heads": 24, "num_key_value_heads": 2, "head_dim": None, "hidden_act": "gelu_pytorch_tanh",
    "sliding_window": None, "use_bias": True, "tie_word_embeddings": True,
}


def build(r) -> dict:
    h, n_layers, inter = r.int("hidden_size"), r.int("num_hidden_layers"), r.int("intermediate_size")
    n, kv, hd = heads(r, h)
    bias = r.bool("use_bias")
    mlp = Mlp((Linear("c_fc", Role.MLP_IN, h, inter, bias), Linear("c_proj", Role.MLP_DOWN, inter, h, bias)), inter)
    window = r.opt_int("sliding_window")
    structure = Structure(norm=NormStyle.LAYER, mlp=MlpStyle.PLAIN, **windowing(window, all_sliding(window, n_layers)))
    return decoder(r, attn=qkvo(h, n, kv, hd, bias, bias), mlps=[mlp] * n_layers, structure=structure, norm=layernorm)
