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

OPT-350m's layout: ``word_embed_proj_dim`` (512) below ``hidden_size`` (1024) -- token embeddings and the
LM head in the narrow width, ``project_in`` / ``project_out`` (no bias) to and from the decoder --
and ``do_layer_norm_before = false``: each LayerNorm after its residual add, no final LayerNorm.
Not planned yet (refused, naming the key): LayerNorms without weights
(``layer_norm_elementwise_affine = false``).
"""

from refplan.errors import PlanError
from refplan.families._blocks import layernorm, plain_mlp_style
from refplan.model import Layer, Linear, NormPlacement, NormStyle, Positions, Role, Structure

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
    if not r.bool("layer_norm_elementwise_affine"):
        raise PlanError(r.where, "key 'layer_norm_elementwise_affine' false (LayerNorms without weights): "
                                 "not planned yet")
    proj = r.opt_int("word_embed_proj_dim") or h
    bias, ffn, positions = r.bool("enable_bias"), r.int("ffn_dim"), r.int("max_position_embeddings") + 2
    linears = (
        Linear("k_proj", Role.K, h, h, bias), Linear("v_proj", Role.V, h, h, bias),
        Linear("q_proj", Role.Q, h, h, bias), Linear("out_proj", Role.O, h, h, bias),
        Linear("fc1", Role.MLP_IN, h, ffn, bias), Linear("fc2", Role.MLP_DOWN, ffn, h, bias),
    )
    outer = () if proj == h else (Linear("project_in", Role.PROJECT_IN, proj, h),
                                  Linear("project_out", Role.PROJECT_OUT, h, proj))
    pre_norm = r.bool("do_layer_norm_before")
    act = r.str("activation_function")
    dropout = r.opt_float("dropout") or 0.0
    structure = Structure(norm=NormStyle.LAYER, placement=NormPlacement.PRE if pre_norm else NormPlacement.POST,
                          mlp=plain_mlp_style(act), positions=Positions.LEARNED, learned_positions=positions,
                          positions_per_row=True, functional_dropouts=2 if dropout > 0 else 0)
    final = layernorm("final_layer_norm", h) if pre_norm and not r.bool("_remove_final_layer_norm") else None
    return dict(
        hidden_size=h, num_layers=n_layers, num_heads=heads, num_kv_heads=heads, head_dim=h // heads,
        vocab_size=vocab, intermediate_size=ffn, tie_word_embeddings=r.bool("tie_word_embeddings"),
        layers=tuple(Layer(linears, (layernorm("self_attn_layer_norm", h), layernorm("final_layer_norm", h)), ffn)
                     for _ in range(n_layers)),
        embed_params=vocab * proj + positions * h, final_norm=final, hidden_act=act, structure=structure,
        embed_dim=proj if proj != h else None, outer_linears=outer,
    )
