"""Qwen2-MoE / Qwen1.5-MoE (``Qwen2MoeForCausalLM``): Qwen2 attention (q/k/v biases from ``qkv_bias``),
routed experts every ``decoder_sparse_step`` layers except ``mlp_only_layers``, and beside them a
shared expert (a gated MLP of ``shared_expert_intermediate_size``) whose output is scaled by a
per-token sigmoid gate (``shared_expert_gate``: Linear(hidden, 1)).

Source: transformers 5.24 ``models/qwen2_moe/{configuration,modeling}_qwen2_moe.py``: the config-class
defaults below; ``Qwen2MoeSparseMoeBlock`` (``gate`` = ``Qwen2MoeTopKRouter``, a bare [E, H] weight;
``experts`` = ``Qwen2MoeExperts``, 3-D ``gate_up_proj`` / ``down_proj``; ``shared_expert`` =
``Qwen2MoeMLP``; ``shared_expert_gate``); ``Qwen2MoeDecoderLayer`` (MoE block when
``layer_idx not in mlp_only_layers and num_experts > 0 and (layer_idx + 1) % decoder_sparse_step == 0``);
``Qwen2MoeConfig.__post_init__``'s ``layer_types`` (odd-numbered layers below ``max_window_layers``
slide when ``use_sliding_window``).

LoRA ``all-linear`` (peft 0.21): unlike Qwen3-MoE and Mixtral, ``qwen2_moe`` is not a key of peft's
``_MODEL_TO_CONVERSION_PATTERN`` (only its aliases are), so the v4 -> v5 MoE target conversion does not
run: PEFT wraps the ``nn.Linear`` modules only -- attention, dense MLPs, the shared expert and its
gate -- and leaves the router and the 3-D routed experts alone (tests check get_peft_model's count).
"""

from dataclasses import replace

from refplan.families._blocks import Mlp, decoder, gated_mlp, layer_types, routed_experts, windowing
from refplan.model import Linear, MoE, Role, Structure

MODEL_TYPES = ("qwen2_moe",)
DEFAULTS = {
    "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 24,
    "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": None, "hidden_act": "silu",
    "tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 28,
    "layer_types": None, "decoder_sparse_step": 1, "moe_intermediate_size": 1408,
    "shared_expert_intermediate_size": 5632, "num_experts_per_tok": 4, "num_experts": 60,
    "mlp_only_layers": None, "qkv_bias": True, "norm_topk_prob": False,
}


def build(r) -> dict:
    h, inter, n_layers = r.int("hidden_size"), r.int("intermediate_size"), r.int("num_hidden_layers")
    n_exp = r.int("num_experts", minimum=0)
    step = r.int("decoder_sparse_step")
    only = r.int_list("mlp_only_layers")
    dense = sparse = Mlp(gated_mlp(h, inter, False), inter)
    if n_exp > 0:
        e_inter, s_inter = r.int("moe_intermediate_size"), r.int("shared_expert_intermediate_size")
        moe = MoE(num_experts=n_exp, top_k=r.int("num_experts_per_tok"), expert_intermediate=e_inter,
                  shared_intermediate=s_inter, shared_gated=True,
                  normalized=r.bool("norm_topk_prob"))
        shared = gated_mlp(h, s_inter, False, shared=True) + (
            Linear("shared_expert_gate", Role.SHARED_EXPERT_GATE, h, 1),)
        routed = tuple(replace(l, lora_target=False) for l in routed_experts(h, n_exp, e_inter))
        sparse = Mlp(routed + shared, 0, moe)
    mlps = [sparse if (i not in only and (i + 1) % step == 0) else dense for i in range(n_layers)]
    has_experts = any(m.moe is not None for m in mlps)
    window = r.opt_int("sliding_window") if r.bool("use_sliding_window") else None
    types = None
    if window is not None:
        mwl = r.int("max_window_layers", minimum=0)
        types = layer_types(r, n_layers, window, lambda i: bool((i + 1) % 2) and i < mwl)
    structure = Structure(experts_fused_3d=has_experts, **windowing(window, types))
    return decoder(r, qkv_bias=r.bool("qkv_bias"), mlps=mlps, structure=structure)
