"""BLOOM (``BloomForCausalLM``): ALiBi (linear biases added to the attention scores, no rotary
tables), a LayerNorm on the embeddings, LayerNorm blocks, a fused ``query_key_value`` with biases
and its own eager attention math, a biased 4 x hidden MLP with a custom GELU, tied embeddings.

Source: transformers 5.24 ``models/bloom/{configuration,modeling}_bloom.py``: the config-class
defaults below (``attribute_map``: ``num_hidden_layers`` -> ``n_layer``, ``num_attention_heads`` ->
``n_head``; ``n_embed`` is read as ``hidden_size``); ``BloomModel.__init__`` (``word_embeddings``,
``word_embeddings_layernorm``, ``h``, ``ln_f``), ``BloomBlock`` (``input_layernorm``,
``post_attention_layernorm``), ``BloomAttention`` (``query_key_value`` [h, 3h], ``dense``;
``_reshape`` then ``reshape`` copies q, k and v out of the fused output; ``alibi.baddbmm``, fp32
softmax, ``bmm``, ``_merge_heads`` copies the output), ``BloomMLP`` (``dense_h_to_4h``,
``GeLUFunction`` saving its input, ``dense_4h_to_h``). BloomPreTrainedModel supports no SDPA: eager
always.
"""

from refplan.errors import PlanError
from refplan.families._blocks import layernorm
from refplan.model import AttentionKernel, Layer, Linear, MlpStyle, NormStyle, Positions, Role, Structure

MODEL_TYPES = ("bloom",)
DEFAULTS = {
    "vocab_size": 250880, "hidden_size": 64, "n_layer": 2, "n_head": 8, "tie_word_embeddings": True,
    "pretraining_tp": 1, "slow_but_exact": False,
}
KEY_ALIASES = {
    "hidden_size": ("n_embed",),
    "n_layer": ("num_hidden_layers",),
    "n_head": ("num_attention_heads",),
}


def build(r) -> dict:
    h, n_layers, heads, vocab = r.int("hidden_size"), r.int("n_layer"), r.int("n_head"), r.int("vocab_size")
    if h % heads:
        raise PlanError(r.where, f"hidden_size {h} is not a multiple of n_head {heads}")
    linears = (
        Linear("query_key_value", Role.QKV, h, 3 * h, True),
        Linear("dense", Role.O, h, h, True),
        Linear("dense_h_to_4h", Role.MLP_IN, h, 4 * h, True),
        Linear("dense_4h_to_h", Role.MLP_DOWN, 4 * h, h, True),
    )
    notes = (("pretraining_tp_slow_but_exact", r.raw("pretraining_tp")),) if (
        r.int("pretraining_tp") > 1 and r.bool("slow_but_exact")) else ()
    # GeLUFunction.backward = bloom_gelu_back(g, x): tanh_out, 0.5 * x, 1 - tanh_out ** 2, the polynomial and
    # their product alive at once beside g (measured: CPU trace, SimPO/ORPO full with checkpointing)
    structure = Structure(norm=NormStyle.LAYER, mlp=MlpStyle.PLAIN, positions=Positions.ALIBI,
                          attention=AttentionKernel.EAGER_ONLY, act_backward_live=6, notes=notes)
    return dict(
        hidden_size=h, num_layers=n_layers, num_heads=heads, num_kv_heads=heads, head_dim=h // heads,
        vocab_size=vocab, intermediate_size=4 * h, tie_word_embeddings=r.bool("tie_word_embeddings"),
        layers=tuple(Layer(linears, (layernorm("input_layernorm", h), layernorm("post_attention_layernorm", h)),
                           4 * h) for _ in range(n_layers)),
        embed_params=vocab * h, embed_norm=layernorm("word_embeddings_layernorm", h),
        final_norm=layernorm("ln_f", h), hidden_act="gelu_pytorch_tanh", structure=structure,
    )
