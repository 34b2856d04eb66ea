"""Falcon (``FalconForCausalLM``): fused ``query_key_value`` (multi-head, multi-query, or grouped in
the new decoder architecture), LayerNorm, parallel attention, its own attention math.

Attention (``FalconAttention.forward``): under ``sdpa`` the model calls
``F.scaled_dot_product_attention`` itself with the mask ``FalconModel.forward`` always builds
(``create_causal_mask(..., allow_is_causal_skip=False)``). The new decoder architecture's
``_split_heads`` materializes K and V per query head (``broadcast_to`` + ``flatten``) before the call;
multi-query hands one K/V head to SDPA, which broadcasts it in its math kernel (probabilities kept,
as in eager attention); multi-head passes views of the fused output.

``FalconLinear`` adds its bias after the matmul (``input @ self.weight.T + self.bias``), outside
autocast's reach: :attr:`Structure.bias_after_matmul`.

Checkpoints saved before the in-library port use ``model_type`` ``RefinedWebModel`` (7B layout) or
``RefinedWeb`` (40B layout, the new decoder architecture) and older key names. Source: transformers
5.24 ``models/falcon``.
"""

from refplan.errors import PlanError
from refplan.families._blocks import layernorm
from refplan.model import AttentionKernel, KVToAttention, Layer, Linear, MlpStyle, NormStyle, Positions, Role, Structure

MODEL_TYPES = ("falcon", "RefinedWebModel", "RefinedWeb")
DEFAULTS = {
    "tie_word_embeddings": True, "activation": "gelu", "num_kv_heads": None,
    "new_decoder_architecture": False, "multi_query": True, "parallel_attn": True, "bias": False,
    "ffn_hidden_size": None, "num_ln_in_parallel_attn": None, "alibi": False,
}
KEY_ALIASES = {
    "hidden_size": ("n_embed",),
    "num_attention_heads": ("n_head",),
    "num_hidden_layers": ("n_layer",),
    "num_kv_heads": ("n_head_kv",),
}


def text_config(config: dict, where: str) -> tuple[dict, str, tuple]:
    if config.get("model_type") not in ("RefinedWebModel", "RefinedWeb"):
        return config, where, ()
    text = dict(config)
    # the in-library port maps RefinedWeb (40B layout) onto the new decoder architecture
    text.setdefault("new_decoder_architecture", config["model_type"] == "RefinedWeb")
    return text, where, ()


def _qkv_width(r, h: int, heads: int, hd: int) -> tuple[int, int]:
    cfg_kv = r.opt_int("num_kv_heads")
    cfg_kv = heads if cfg_kv is None else cfg_kv
    if r.bool("new_decoder_architecture"):
        if heads % cfg_kv:
            raise PlanError(r.where, f"num_attention_heads {heads} is not a multiple of num_kv_heads {cfg_kv}")
        return cfg_kv, (2 * cfg_kv + heads) * hd
    if r.bool("multi_query"):
        return 1, h + 2 * hd
    return heads, 3 * h


def build(r) -> dict:
    h, n_layers, heads, vocab = (r.int("hidden_size"), r.int("num_hidden_layers"), r.int("num_attention_heads"),
                                 r.int("vocab_size"))
    if h % heads:
        raise PlanError(r.where, f"hidden_size {h} is not a multiple of num_attention_heads {heads}")
    hd = h // heads  # FalconConfig.head_dim is a property: a head_dim key is ignored
    new_arch, parallel, bias = r.bool("new_decoder_architecture"), r.bool("parallel_attn"), r.bool("bias")
    kv, qkv_out = _qkv_width(r, h, heads, hd)
    ffn = r.opt_int("ffn_hidden_size") or 4 * h
    linears = (
        Linear("query_key_value", Role.QKV, h, qkv_out, bias),
        Linear("dense", Role.O, h, h, bias),
        Linear("dense_h_to_4h", Role.MLP_IN, h, ffn, bias),
        Linear("dense_4h_to_h", Role.MLP_DOWN, ffn, h, bias),
    )
    n_ln = r.opt_int("num_ln_in_parallel_attn")
    if n_ln is None and new_arch:
        n_ln = 2
    if not parallel:
        norms = (layernorm("post_attention_layernorm", h), layernorm("input_layernorm", h))
    elif n_ln == 2:
        norms = (layernorm("ln_attn", h), layernorm("ln_mlp", h))
    else:
        norms = (layernorm("input_layernorm", h),)
    if new_arch:
        kv_to_attention = KVToAttention.EXPANDED  # _split_heads: broadcast_to(query.shape) + flatten
    elif kv == 1:
        kv_to_attention = KVToAttention.BROADCAST  # multi_query: K/V [B, 1, S, hd] straight to SDPA
    else:
        kv_to_attention = KVToAttention.GROUPED  # multi-head: views of the fused output
    structure = Structure(norm=NormStyle.LAYER, mlp=MlpStyle.PLAIN, attention=AttentionKernel.OWN_MATH,
                          kv_to_attention=kv_to_attention, mask_always=True,
                          positions=Positions.ALIBI if r.bool("alibi") else Positions.ROPE,
                          parallel_residual=parallel, shared_block_norm=parallel and len(norms) == 1,
                          bias_after_matmul=True)
    return dict(
        hidden_size=h, num_layers=n_layers, num_heads=heads, num_kv_heads=kv, head_dim=hd,
        vocab_size=vocab, intermediate_size=ffn, tie_word_embeddings=r.bool("tie_word_embeddings"),
        layers=tuple(Layer(linears, norms, ffn) for _ in range(n_layers)),
        embed_params=vocab * h, final_norm=layernorm("ln_f", h), hidden_act=r.str("activation"),
        structure=structure,
    )
