"""GPT-BigCode / StarCoder / SantaCoder (``GPTBigCodeForCausalLM``): GPT-2's block (LayerNorm with
bias, learned absolute positions, plain ``c_fc`` -> act -> ``c_proj`` MLP with biases) with
``nn.Linear`` projections and multi-query attention: one fused ``c_attn`` of width
``hidden + 2 * kv_dim`` (``kv_dim = head_dim`` under ``multi_query``, ``hidden`` otherwise) whose q, k
and v are views -- no rotation copies them, so its whole output stays alive.

Source: transformers 5.24 ``models/gpt_bigcode/{configuration,modeling}_gpt_bigcode.py``: the
config-class defaults below (``attribute_map``: ``hidden_size`` -> ``n_embd`` and so on);
``GPTBigCodeAttention.__init__`` (``c_attn``, ``c_proj``), ``GPTBigCodeMLP`` (``n_inner`` or 4 x
hidden), ``GPTBigCodeBlock`` (``ln_1``, ``ln_2``), ``GPTBigCodeModel`` (``wte``, ``wpe``, ``ln_f`` and
the non-persistent ``bias`` buffer: a [n_positions, n_positions] boolean lower triangle the forward
no longer reads, but every copy of the model holds).
"""

from refplan.errors import PlanError
from refplan.families._blocks import layernorm, plain_mlp_style
from refplan.model import Layer, Linear, NormStyle, Positions, Role, Structure

MODEL_TYPES = ("gpt_bigcode",)
DEFAULTS = {
    "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None,
    "activation_function": "gelu_pytorch_tanh", "multi_query": True, "add_cross_attention": False,
    "tie_word_embeddings": True,
}
KEY_ALIASES = {
    "n_embd": ("hidden_size",),
    "n_positions": ("max_position_embeddings",),
    "n_head": ("num_attention_heads",),
    "n_layer": ("num_hidden_layers",),
}


def build(r) -> dict:
    if r.bool("add_cross_attention"):
        raise PlanError(r.where, "gpt_bigcode with add_cross_attention is an encoder-decoder setup; refplan plans "
                                 "decoder-only models")
    h, n_layers, heads, vocab = r.int("n_embd"), r.int("n_layer"), r.int("n_head"), r.int("vocab_size")
    positions = r.int("n_positions")
    if h % heads:
        raise PlanError(r.where, f"n_embd {h} is not a multiple of n_head {heads}")
    hd = h // heads
    kv = 1 if r.bool("multi_query") else heads
    inner = r.opt_int("n_inner") or 4 * h
    linears = (
        Linear("c_attn", Role.QKV, h, h + 2 * kv * hd, True),
        Linear("c_proj", Role.O, h, h, True),
        Linear("c_fc", Role.MLP_IN, h, inner, True),
        Linear("c_proj", Role.MLP_DOWN, inner, h, True),
    )
    act = r.str("activation_function")
    structure = Structure(norm=NormStyle.LAYER, mlp=plain_mlp_style(act),
                          positions=Positions.LEARNED, learned_positions=positions)
    return dict(
        hidden_size=h, num_layers=n_layers, num_heads=heads, num_kv_heads=kv, head_dim=hd,
        vocab_size=vocab, intermediate_size=inner, tie_word_embeddings=r.bool("tie_word_embeddings"),
        layers=tuple(Layer(linears, (layernorm("ln_1", h), layernorm("ln_2", h)), inner) for _ in range(n_layers)),
        embed_params=vocab * h + positions * h, final_norm=layernorm("ln_f", h), hidden_act=act,
        structure=structure, buffer_bytes=positions * positions,
    )
