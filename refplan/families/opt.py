"""OPT (``OPTForCausalLM``): learned absolute positions with an offset of 2 (the table has
``max_position_embeddings + 2`` rows, ids from ``cumsum(attention_mask) - 1`` per row), LayerNorm
before each sublayer, separate q/k/v/out projections with biases (``enable_bias``), a ReLU MLP
(``fc1``/``fc2``, ``ffn_dim``), tied embeddings, and ``F.dropout`` with the config's ``dropout`` on the
attention and MLP outputs -- calls TRL's ``disable_dropout`` (``nn.Dropout`` modules only) leaves on.

Source: transformers 5.24 ``models/opt/{configuration,modeling}_opt.py``: the config-class defaults
below; ``OPTLearnedPositionalEmbedding`` (``offset = 2``), ``OPTAttention`` (``q_proj`` output scaled,
then SDPA through the attention interface), ``OPTDecoderLayer`` (``self_attn_layer_norm``, ``fc1``,
``fc2``, ``final_layer_norm``, the two ``nn.functional.dropout`` calls), ``OPTDecoder`` (``embed_tokens``,
``embed_positions``, ``final_layer_norm``; ``project_in`` / ``project_out`` when
``word_embed_proj_dim`` differs from ``hidden_size``).

Not planned yet (refused, naming the key): ``word_embed_proj_dim != hidden_size`` and
``do_layer_norm_before = false`` (OPT-350m's projected, post-norm layout), LayerNorms without weights
(``layer_norm_elementwise_affine = false``) and ``_remove_final_layer_norm``.
"""

from refplan.errors import PlanError
from refplan.families._blocks import layernorm, plain_mlp_style
from refplan.model import Layer, Linear, NormStyle, Positions, Role, Structure

MODEL_TYPES = ("opt",)
DEFAULTS = {
    "vocab_size": 50272, "hidden_size": 768, "num_hidden_layers": 12, "ffn_dim": 3072,
    "max_position_embeddings": 2048, "do_layer_norm_before": True, "_remove_final_layer_norm": False,
    "word_embed_proj_dim": None, "dropout": 0.1, "num_attention_heads": 12, "activation_function": "relu",
    "enable_bias": True, "layer_norm_elementwise_affine": True, "tie_word_embeddings": True,
}


def build(r) -> dict:
    h, n_layers, heads, vocab = (r.int("hidden_size"), r.int("num_hidden_layers"), r.int("num_attention_heads"),
                                 r.int("vocab_size"))
    if h % heads:
        raise PlanError(r.where, f"hidden_size {h} is not a multiple of num_attention_heads {heads}")
    proj = r.opt_int("word_embed_proj_dim") or h
    if proj != h:
        raise PlanError(r.where, f"key 'word_embed_proj_dim' {proj} differs from hidden_size {h} (OPT-350m's "
                                 "projected embeddings): not planned yet")
    if not r.bool("do_layer_norm_before"):
        raise PlanError(r.where, "key 'do_layer_norm_before' false (post-norm OPT): not planned yet")
    if not r.bool("layer_norm_elementwise_affine"):
        raise PlanError(r.where, "key 'layer_norm_elementwise_affine' false: not planned yet")
    bias, ffn, positions = r.bool("enable_bias"), r.int("ffn_dim"), r.int("max_position_embeddings") + 2
    linears = (
        Linear("k_proj", Role.K, h, h, bias), Linear("v_proj", Role.V, h, h, bias),
        Linear("q_proj", Role.Q, h, h, bias), Linear("out_proj", Role.O, h, h, bias),
        Linear("fc1", Role.MLP_IN, h, ffn, bias), Linear("fc2", Role.MLP_DOWN, ffn, h, bias),
    )
    act = r.str("activation_function")
    dropout = r.opt_float("dropout") or 0.0
    structure = Structure(norm=NormStyle.LAYER, mlp=plain_mlp_style(act),
                          positions=Positions.LEARNED, learned_positions=positions, positions_per_row=True,
                          functional_dropouts=2 if dropout > 0 else 0)
    if r.bool("_remove_final_layer_norm"):
        raise PlanError(r.where, "key '_remove_final_layer_norm' true: not planned yet")
    return dict(
        hidden_size=h, num_layers=n_layers, num_heads=heads, num_kv_heads=heads, head_dim=h // heads,
        vocab_size=vocab, intermediate_size=ffn, tie_word_embeddings=r.bool("tie_word_embeddings"),
        layers=tuple(Layer(linears, (layernorm("self_attn_layer_norm", h), layernorm("final_layer_norm", h)), ffn)
                     for _ in range(n_layers)),
        embed_params=vocab * h + positions * h, final_norm=layernorm("final_layer_norm", h), hidden_act=act,
        structure=structure,
    )
