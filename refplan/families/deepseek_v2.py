"""DeepSeek-V2 (``DeepseekV2ForCausalLM``): multi-head latent attention (MLA) and routed experts
with shared experts on every layer from ``first_k_dense_replace`` on.

transformers ignores ``moe_layer_freq`` and so does refplan (a value other than 1 is noted). The
router is kept in fp32 (``_keep_in_fp32_modules_strict = ["gate.weight"]``). Source: transformers
5.24 ``models/deepseek_v2``.
"""

from refplan.errors import PlanError
from refplan.families._blocks import gated_mlp, rms, routed_experts, unwrap_dense_mlps_beside_experts
from refplan.model import Layer, Linear, MoE, Role, Structure

MODEL_TYPES = ("deepseek_v2",)
DEFAULTS = {
    "intermediate_size": 11008, "num_key_value_heads": None, "tie_word_embeddings": False,
    "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "first_k_dense_replace": 0,
    "moe_layer_freq": 1, "kv_lora_rank": 512, "q_lora_rank": 1536, "n_routed_experts": 64,
    "n_shared_experts": 2, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "num_experts_per_tok": None, "moe_intermediate_size": 1407, "n_group": None, "topk_group": None,
}


def _attention(r, h: int, heads: int) -> tuple[tuple[Linear, ...], tuple, dict]:
    attn_bias = r.bool("attention_bias")
    q_rank = r.opt_int("q_lora_rank")
    kv_rank = r.int("kv_lora_rank")
    nope = r.int("qk_nope_head_dim", minimum=0)
    rope = r.int("qk_rope_head_dim")
    v_hd = r.int("v_head_dim")
    if q_rank is None:
        q_lin: tuple[Linear, ...] = (Linear("q_proj", Role.Q, h, heads * (nope + rope)),)
        q_norms: tuple = ()
    else:
        q_lin = (Linear("q_a_proj", Role.Q_A, h, q_rank, attn_bias),
                 Linear("q_b_proj", Role.Q_B, q_rank, heads * (nope + rope)))
        q_norms = (rms("q_a_layernorm", q_rank),)
    attn = q_lin + (
        Linear("kv_a_proj_with_mqa", Role.KV_A, h, kv_rank + rope, attn_bias),
        Linear("kv_b_proj", Role.KV_B, kv_rank, heads * (nope + v_hd)),
        Linear("o_proj", Role.O, heads * v_hd, h, attn_bias),
    )
    mla = {"q_lora_rank": q_rank, "kv_lora_rank": kv_rank, "qk_nope_head_dim": nope, "qk_rope_head_dim": rope,
           "v_head_dim": v_hd,
           # transformers 5.24 caches the compressed latent, expanded per head only in attention
           "cache_dim_per_token": kv_rank + rope}
    return attn, q_norms + (rms("kv_a_layernorm", kv_rank),), mla


def build(r) -> dict:
    h = r.int("hidden_size")
    n_layers = r.int("num_hidden_layers")
    vocab = r.int("vocab_size")
    heads = r.int("num_attention_heads")
    mlp_bias = r.bool("mlp_bias")
    attn, attn_norms, mla = _attention(r, h, heads)
    norms = attn_norms + (rms("input_layernorm", h), rms("post_attention_layernorm", h))
    inter = r.int("intermediate_size")
    first_dense = r.int("first_k_dense_replace", minimum=0)
    layers = []
    for i in range(n_layers):
        if i < first_dense:
            layers.append(Layer(attn + gated_mlp(h, inter, mlp_bias), norms, inter))
            continue
        key = "n_routed_experts" if r.has("n_routed_experts") or not r.has("num_experts") else "num_experts"
        n_exp = r.int(key)
        e_inter = r.int("moe_intermediate_size")
        n_shared = r.int("n_shared_experts", minimum=0)
        top_k = r.opt_int("num_experts_per_tok")
        if top_k is None:
            raise PlanError(r.where, "missing key 'num_experts_per_tok' (MoE layers need it)")
        # n_shared_experts 0 still builds the (zero-width) shared MLP, as transformers does
        shared = gated_mlp(h, e_inter * n_shared, mlp_bias, shared=True)
        moe = MoE(num_experts=n_exp, top_k=top_k, expert_intermediate=e_inter, shared_intermediate=e_inter * n_shared,
                  normalized=False)
        layers.append(Layer(attn + routed_experts(h, n_exp, e_inter) + shared, norms, 0, moe))
    has_experts = any(layer.moe is not None for layer in layers)
    notes = (("moe_layer_freq_ignored", r.raw("moe_layer_freq")),) if has_experts and r.raw("moe_layer_freq") != 1 else ()
    structure = Structure(mla=tuple(sorted(mla.items())), experts_fused_3d=has_experts, router_fp32=has_experts,
                          notes=notes)
    nope, rope, v_hd = mla["qk_nope_head_dim"], mla["qk_rope_head_dim"], mla["v_head_dim"]
    return dict(
        hidden_size=h, num_layers=n_layers, num_heads=heads,
        # attention runs on per-head K/V expanded from the latent: K width heads * (nope + rope)
        num_kv_heads=heads, head_dim=nope + rope, v_head_dim=v_hd,
        vocab_size=vocab, intermediate_size=inter, tie_word_embeddings=r.bool("tie_word_embeddings"),
        layers=unwrap_dense_mlps_beside_experts(tuple(layers)) if has_experts else tuple(layers),
        embed_params=vocab * h, final_norm=rms("norm", h), hidden_act=r.str("hidden_act"), structure=structure,
    )
