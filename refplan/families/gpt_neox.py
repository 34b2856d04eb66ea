"""GPT-NeoX / Pythia (``GPTNeoXForCausalLM``): fused ``query_key_value``, LayerNorm, biased plain MLP,
partial rotary (``rotary_pct``), parallel residual with two LayerNorms.

Source: transformers 5.24 ``models/gpt_neox``.
"""

from refplan.errors import PlanError
from refplan.families._blocks import layernorm
from refplan.model import Layer, Linear, MlpStyle, NormStyle, Role, Structure

MODEL_TYPES = ("gpt_neox",)
DEFAULTS = {
    "tie_word_embeddings": False, "hidden_act": "gelu", "attention_bias": True,
    "use_parallel_residual": True, "rotary_pct": 0.25,
}


def build(r) -> dict:
    h, n_layers, heads = r.int("hidden_size"), r.int("num_hidden_layers"), r.int("num_attention_heads")
    vocab, inter = r.int("vocab_size"), r.int("intermediate_size")
    if h % heads:
        raise PlanError(r.where, f"hidden_size {h} is not a multiple of num_attention_heads {heads}")
    bias = r.bool("attention_bias")
    linears = (
        Linear("query_key_value", Role.QKV, h, 3 * h, bias),
        Linear("dense", Role.O, h, h, bias),
        Linear("dense_h_to_4h", Role.MLP_IN, h, inter, True),
        Linear("dense_4h_to_h", Role.MLP_DOWN, inter, h, True),
    )
    norms = (layernorm("input_layernorm", h), layernorm("post_attention_layernorm", h))
    rope = r.get("rope_parameters")
    rotary = r.opt_float("rotary_pct")
    if isinstance(rope, dict) and "partial_rotary_factor" in rope:
        rotary = float(rope["partial_rotary_factor"])
    structure = Structure(norm=NormStyle.LAYER, mlp=MlpStyle.PLAIN, rotary_fraction=rotary, rotary_concat=True,
                          parallel_residual=r.bool("use_parallel_residual"))
    return dict(
        hidden_size=h, num_layers=n_layers, num_heads=heads, num_kv_heads=heads, head_dim=h // heads,
        vocab_size=vocab, intermediate_size=inter, tie_word_embeddings=r.bool("tie_word_embeddings"),
        layers=tuple(Layer(linears, norms, inter) for _ in range(n_layers)),
        embed_params=vocab * h, final_norm=layernorm("final_layer_norm", h),
        hidden_act=r.str("hidden_act"), structure=structure,
    )
