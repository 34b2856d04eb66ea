"""Qwen3-MoE (``Qwen3MoeForCausalLM``): Qwen3 attention; routed experts every ``decoder_sparse_step``
layers except ``mlp_only_layers`` (dense gated MLP there).

Source: transformers 5.24 ``models/qwen3_moe``.
"""

from refplan.families._blocks import (Mlp, all_sliding, decoder, gated_mlp, heads, rms, routed_experts,
                                      unwrap_dense_mlps_beside_experts, windowing)
from refplan.model import MoE, QKNorm, Structure

MODEL_TYPES = ("qwen3_moe",)
DEFAULTS = {
    "intermediate_size": 6144, "num_key_value_heads": 4, "head_dim": None, "tie_word_embeddings": False,
    "hidden_act": "silu", "attention_bias": False, "use_sliding_window": False, "sliding_window": 4096,
    "decoder_sparse_step": 1, "moe_intermediate_size": 768, "num_experts_per_tok": 8,
    "num_experts": 128, "mlp_only_layers": None, "norm_topk_prob": False,
}


def build(r) -> dict:
    h, inter, n_layers = r.int("hidden_size"), r.int("intermediate_size"), r.int("num_hidden_layers")
    key = "num_experts" if r.has("num_experts") or not r.has("num_local_experts") else "num_local_experts"
    n_exp = r.int(key, minimum=0)
    step = r.int("decoder_sparse_step")
    only = r.int_list("mlp_only_layers")
    dense = sparse = Mlp(gated_mlp(h, inter, False), inter)
    if n_exp > 0:
        e_inter = r.int("moe_intermediate_size")
        moe = MoE(num_experts=n_exp, top_k=r.int("num_experts_per_tok"), expert_intermediate=e_inter,
                  normalized=r.bool("norm_topk_prob"))
        sparse = Mlp(routed_experts(h, n_exp, e_inter), 0, moe)
    mlps = [sparse if (i not in only and (i + 1) % step == 0) else dense for i in range(n_layers)]
    has_experts = any(m.moe is not None for m in mlps)
    window = r.opt_int("sliding_window") if r.bool("use_sliding_window") else None
    structure = Structure(qk_norm=QKNorm.PER_HEAD, experts_fused_3d=has_experts,
                          **windowing(window, all_sliding(window, n_layers)))
    bias = r.bool("attention_bias")
    hd = heads(r, h)[2]
    fields = decoder(r, qkv_bias=bias, o_bias=bias, attn_norms=(rms("q_norm", hd), rms("k_norm", hd)), mlps=mlps,
                     structure=structure)
    if has_experts:
        fields["layers"] = unwrap_dense_mlps_beside_experts(fields["layers"])
    return fields
