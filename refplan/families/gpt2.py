"""GPT-2 (``GPT2LMHeadModel``): Conv1D projections with biases (PEFT treats them as linears),
LayerNorm, learned absolute positions, a fused ``c_attn`` whose q/k/v views keep its output alive,
and ``gelu_new`` written in Python.

Source: transformers 5.24 ``models/gpt2``.
"""

from refplan.errors import PlanError
from refplan.families._blocks import layernorm
from refplan.model import Layer, Linear, MlpStyle, NormStyle, Positions, Role, Structure

MODEL_TYPES = ("gpt2",)
DEFAULTS = {
    "n_positions": 1024, "n_inner": None, "activation_function": "gelu_new",
    "tie_word_embeddings": True, "add_cross_attention": False,
}


def build(r) -> dict:
    if r.bool("add_cross_attention"):
        raise PlanError(r.where, "gpt2 with add_cross_attention is an encoder-decoder setup; refplan plans "
                                 "decoder-only models")
    h, n_layers, heads, vocab = r.int("n_embd"), r.int("n_layer"), r.int("n_head"), r.int("vocab_size")
    positions = r.int("n_positions")
    if h % heads:
        raise PlanError(r.where, f"n_embd {h} is not a multiple of n_head {heads}")
    inner = r.opt_int("n_inner") or 4 * h
    linears = (
        Linear("c_attn", Role.QKV, h, 3 * h, True),
        Linear("c_proj", Role.O, h, h, True),
        Linear("c_fc", Role.MLP_IN, h, inner, True),
        Linear("c_proj", Role.MLP_DOWN, inner, h, True),
    )
    norms = (layernorm("ln_1", h), layernorm("ln_2", h))
    structure = Structure(norm=NormStyle.LAYER, mlp=MlpStyle.PLAIN_PY_GELU, positions=Positions.LEARNED,
                          learned_positions=positions)
    return dict(
        hidden_size=h, num_layers=n_layers, num_heads=heads, num_kv_heads=heads, head_dim=h // heads,
        vocab_size=vocab, intermediate_size=inner, tie_word_embeddings=r.bool("tie_word_embeddings"),
        layers=tuple(Layer(linears, norms, inner) for _ in range(n_layers)),
        embed_params=vocab * h + positions * h, final_norm=layernorm("ln_f", h),
        hidden_act=r.str("activation_function"), structure=structure,
    )
