"""SmolLM3 (``SmolLM3ForCausalLM``): the Llama decoder (RMSNorm pre-norm, GQA, gated MLP, ``attention_bias``
on q/k/v/o, ``mlp_bias``, tied embeddings) where every ``no_rope_layer_interval``-th layer applies no
rotary embedding (NoPE: q and k reach attention as views of their projections -- as many bytes as
rotated copies), and a sliding window, when ``use_sliding_window``, on the NoPE layers.

Source: transformers 5.24 ``models/smollm3/{configuration,modeling}_smollm3.py``: the config-class
defaults below; ``SmolLM3Config.__post_init__`` (``no_rope_layers[i] = int((i + 1) % interval != 0)``,
``layer_types``: sliding where ``use_sliding_window``, ``sliding_window`` is set and the layer has no
rope); ``SmolLM3Attention`` (``use_rope = no_rope_layers[layer_idx]``).
"""

from refplan.errors import PlanError
from refplan.families._blocks import SLIDING, decoder, layer_types, windowing
from refplan.model import Structure

MODEL_TYPES = ("smollm3",)
DEFAULTS = {
    "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
    "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": None, "hidden_act": "silu",
    "use_sliding_window": False, "sliding_window": None, "no_rope_layers": None, "no_rope_layer_interval": 4,
    "layer_types": None, "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": True,
}


def build(r) -> dict:
    n_layers = r.int("num_hidden_layers")
    given = r.get("no_rope_layers")
    if given is None:
        interval = r.int("no_rope_layer_interval")
        rope = [int((i + 1) % interval != 0) for i in range(n_layers)]
    elif isinstance(given, list) and len(given) == n_layers:
        rope = [int(bool(x)) for x in given]
    else:
        raise PlanError(r.where, f"key 'no_rope_layers' must list {n_layers} flags (1: the layer uses rope)")
    window = r.opt_int("sliding_window") if r.bool("use_sliding_window") else None
    types = layer_types(r, n_layers, window, lambda i: not rope[i]) if window is not None else None
    if types is not None and SLIDING not in types:
        types = None
    structure = Structure(nope_layers=tuple(i for i, x in enumerate(rope) if not x), **windowing(window, types))
    bias = r.bool("attention_bias")
    return decoder(r, qkv_bias=bias, o_bias=bias, mlp_bias=r.bool("mlp_bias"), structure=structure)
