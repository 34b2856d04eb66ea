"""Phi-1 / Phi-1.5 / Phi-2 (``PhiForCausalLM``): a parallel block -- attention and MLP both read the
one ``input_layernorm`` output (LayerNorm) and are added to the residual together --, q/k/v/dense
projections with biases, partial rotary (``partial_rotary_factor``, 0.5 by default), optional
per-head LayerNorms on q and k (``qk_layernorm``), a plain ``fc1`` -> act -> ``fc2`` MLP, a final
LayerNorm and an LM head with a bias.

Source: transformers 5.24 ``models/phi/{configuration,modeling}_phi.py``: the config-class defaults
below (``num_key_value_heads`` defaults to the heads; ``partial_rotary_factor`` to 0.5);
``PhiAttention`` (``q_proj``/``k_proj``/``v_proj``/``dense`` with bias; ``q_layernorm`` /
``k_layernorm`` over ``hidden_size // num_attention_heads``; the rotated slice concatenated back with
the pass-through slice), ``PhiMLP``, ``PhiDecoderLayer`` (``input_layernorm``, ``resid_dropout``),
``PhiModel`` (``final_layernorm``), ``PhiForCausalLM`` (``lm_head`` with ``bias=True``).
"""

from refplan.families._blocks import Mlp, decoder, heads, layernorm, plain_mlp_style, qkvo
from refplan.model import Linear, NormStyle, QKNorm, Role, Structure

MODEL_TYPES = ("phi",)
DEFAULTS = {
    "vocab_size": 51200, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
    "num_attention_heads": 32, "num_key_value_heads": None, "head_dim": None, "hidden_act": "gelu_new",
    "tie_word_embeddings": False, "rope_parameters": None, "partial_rotary_factor": 0.5, "qk_layernorm": False,
}


def build(r) -> dict:
    h, n_layers, inter = r.int("hidden_size"), r.int("num_hidden_layers"), r.int("intermediate_size")
    n, kv, hd = heads(r, h)
    attn = tuple(Linear("dense", Role.O, l.in_features, l.out_features, True) if l.role is Role.O else l
                 for l in qkvo(h, n, kv, hd, True, True))
    mlp = Mlp((Linear("fc1", Role.MLP_IN, h, inter, True), Linear("fc2", Role.MLP_DOWN, inter, h, True)), inter)
    rope = r.get("rope_parameters")
    rotary = r.opt_float("partial_rotary_factor")
    if isinstance(rope, dict) and "partial_rotary_factor" in rope:
        rotary = float(rope["partial_rotary_factor"])
    qk_ln = r.bool("qk_layernorm")
    attn_norms = (layernorm("q_layernorm", h // n), layernorm("k_layernorm", h // n)) if qk_ln else ()
    structure = Structure(norm=NormStyle.LAYER, mlp=plain_mlp_style(r.str("hidden_act")),
                          qk_norm=QKNorm.PER_HEAD if qk_ln else QKNorm.NONE,
                          rotary_fraction=rotary, rotary_concat=True, parallel_residual=True, shared_block_norm=True)
    fields = decoder(r, attn=attn, attn_norms=attn_norms, block_norms=("input_layernorm",), mlps=[mlp] * n_layers,
                     structure=structure, norm=layernorm)
    fields["final_norm"] = layernorm("final_layernorm", h)
    fields["head_bias"] = True
    return fields
