"""The odd shapes `refplan validate` draws for each family: one function per family, each adding
its own keys to the common draw (the order of draws per seed is part of the matrix: a change here
changes the scenarios a seed gives)."""

from __future__ import annotations

import random


#: families of the validation matrix and why each is there
FAMILIES = {
    "llama": "baseline decoder, GQA",
    "mistral": "sliding-window attention (explicit mask, repeat_kv)",
    "qwen2": "tied embeddings, q/k/v bias",
    "gemma2": "head_dim != hidden/heads, sandwich norms, eager soft-capped attention",
    "phi3": "fused qkv and gate_up projections",
    "gpt_neox": "LayerNorm, parallel residual, partial rotary, fused qkv",
    "qwen3": "per-head q/k RMSNorm",
    "olmo2": "post-sublayer norms, full-width q/k norms",
}
#: formula families validated on request (``refplan validate --families``); the default matrix keeps
#: the eight above so that a seed draws the same scenarios as before they were added
MORE_FAMILIES = {
    "starcoder2": "LayerNorm with bias, plain c_fc/c_proj MLP, GQA with biases, sliding window",
    "qwen2_moe": "routed experts (frozen under LoRA) beside a shared expert with a sigmoid gate, dense layers",
    "falcon": "fused query_key_value, own SDPA call with an always-built mask; new decoder (K/V expanded, "
              "one or two LayerNorms), multi-query (math kernel) and multi-head layouts, parallel or sequential, "
              "RoPE or ALiBi",
    "gpt_bigcode": "multi-query attention through a fused c_attn (views), learned positions, LayerNorm, "
                   "a [n_positions, n_positions] boolean buffer in every copy",
    "bloom": "ALiBi, LayerNorm on the embeddings, eager-only own attention math, custom GELU",
    "opt": "learned positions (offset 2, ids per row), ReLU MLP, config dropout that TRL leaves on, "
           "OPT-350m's projected embeddings and post-norm layers",
    "phi": "parallel block on one LayerNorm, partial rotary (cat: head-major q), per-head q/k LayerNorms, "
           "Python gelu_new, LM head bias",
    "granite": "Llama layout with embedding / residual / attention / logits multipliers",
    "cohere": "parallel block on one Python fp32 LayerNorm, per-head q/k norms, interleaved fp32 rotary, "
              "logit scale",
    "stablelm": "LayerNorm, partial rotary (cat), per-head q/k LayerNorm modules, sequential or parallel block",
    "smollm3": "Llama layout with NoPE layers (no rotation every n-th layer), sliding window on NoPE layers",
    "mixtral": "Mistral attention with routed experts on every layer (fused 3-D experts, grouped_mm), sliding window",
    "qwen3_moe": "Qwen3 attention (per-head q/k norms) with routed experts every n-th layer, dense MLP layers",
    "gemma": "Gemma RMSNorm (1 + weight, fp32), sqrt(hidden)-scaled tied embeddings, GELU-tanh gated MLP",
    "gemma3_text": "Gemma 2 sandwich norms with per-head q/k norms, sliding / global layer pattern, "
                   "query_pre_attn_scalar, optional soft-capping (eager)",
    "deepseek_v2": "multi-head latent attention (q / kv low-rank projections, rope + nope head parts, own V "
                   "width), routed plus shared experts after first_k_dense_replace dense layers, fp32 router",
    "gpt2": "Conv1D projections with biases, fused c_attn views, learned positions, LayerNorm, Python gelu_new",
}


def _shape_qwen2(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    cfg["tie_word_embeddings"] = rng.random() < 0.7


def _shape_mistral(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    cfg["sliding_window"] = rng.choice([16, 32, 64, 4096])


def _shape_gemma2(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    cfg["head_dim"] = head_dim or 16
    cfg["query_pre_attn_scalar"] = cfg["head_dim"]
    cfg["tie_word_embeddings"] = rng.random() < 0.5
    cfg["sliding_window"] = rng.choice([16, 64, 4096])


def _shape_gpt_neox(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    cfg.pop("num_key_value_heads")
    cfg.pop("head_dim", None)
    cfg["hidden_size"] = heads * rng.choice([12, 16, 24])
    cfg["rotary_pct"] = rng.choice([0.25, 0.5, 1.0])
    cfg["tie_word_embeddings"] = False
    cfg["use_parallel_residual"] = rng.random() < 0.7


def _shape_starcoder2(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    cfg["use_bias"] = rng.random() < 0.7
    cfg["tie_word_embeddings"] = rng.random() < 0.5
    cfg["sliding_window"] = rng.choice([None, 16, 64])


def _shape_qwen2_moe(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    n_exp = rng.choice([2, 3, 4, 6])
    cfg["num_experts"] = n_exp
    cfg["num_experts_per_tok"] = rng.randint(1, min(n_exp, 3))
    cfg["moe_intermediate_size"] = rng.choice([16, 24, 40, 64])
    cfg["shared_expert_intermediate_size"] = rng.choice([24, 48, 100, 128])
    # at least one MoE layer: with none, the router-logit tuple TRL's aux loss indexes is empty
    deep = cfg["num_hidden_layers"] >= 2
    cfg["decoder_sparse_step"] = rng.choice([1, 1, 2]) if deep else 1
    cfg["mlp_only_layers"] = [0] if deep and rng.random() < 0.3 else []
    cfg["norm_topk_prob"] = rng.random() < 0.5
    cfg["qkv_bias"] = rng.random() < 0.7
    cfg["tie_word_embeddings"] = rng.random() < 0.3
    cfg["head_dim"] = head_dim or 16


def _shape_falcon(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    for key in ("num_key_value_heads", "head_dim", "intermediate_size"):
        cfg.pop(key, None)
    cfg["hidden_size"] = heads * rng.choice([8, 12, 16, 20, 24])  # head_dim is hidden // heads
    cfg["ffn_hidden_size"] = rng.choice([64, 100, 128, 176, 256])
    cfg["bias"] = rng.random() < 0.5
    cfg["tie_word_embeddings"] = rng.random() < 0.5
    layout = rng.choice(["new", "multi-query", "multi-head"])
    cfg["new_decoder_architecture"] = layout == "new"
    if layout == "new":  # the new decoder needs parallel_attn (its LayerNorms are ln_attn / ln_mlp)
        cfg["num_kv_heads"] = kv
        cfg["num_ln_in_parallel_attn"] = rng.choice([1, 2])
    else:
        cfg["multi_query"] = layout == "multi-query"
        cfg["parallel_attn"] = rng.random() < 0.6
    cfg["alibi"] = rng.random() < 0.25  # falcon-rw: biases folded into a float [B, heads, S, S] mask


def _shape_gpt_bigcode(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    cfg.pop("num_key_value_heads")
    cfg.pop("head_dim", None)
    cfg["hidden_size"] = heads * rng.choice([8, 12, 16, 20, 24, 32])  # head_dim is hidden // heads
    cfg["n_inner"] = cfg.pop("intermediate_size")
    cfg["multi_query"] = rng.random() < 0.7
    cfg["tie_word_embeddings"] = rng.random() < 0.7


def _shape_bloom(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    for key in ("num_key_value_heads", "head_dim", "intermediate_size"):  # MLP: 4 x hidden
        cfg.pop(key, None)
    cfg["hidden_size"] = heads * rng.choice([8, 12, 16, 20, 24])
    cfg["tie_word_embeddings"] = rng.random() < 0.7
    cfg["apply_residual_connection_post_layernorm"] = rng.random() < 0.3


def _shape_opt(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    cfg.pop("num_key_value_heads")
    cfg.pop("head_dim", None)
    cfg["hidden_size"] = heads * rng.choice([8, 12, 16, 20, 24, 32])
    cfg["ffn_dim"] = cfg.pop("intermediate_size")
    cfg["enable_bias"] = rng.random() < 0.8
    cfg["tie_word_embeddings"] = rng.random() < 0.7
    cfg["dropout"] = rng.choice([0.0, 0.1, 0.1])  # OPT's released configs say 0.1
    if rng.random() < 0.35:  # OPT-350m: narrow embeddings through project_in / project_out, post-norm
        cfg["word_embed_proj_dim"] = rng.choice([16, 24, 40])
        cfg["do_layer_norm_before"] = rng.random() < 0.3


def _shape_phi(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    cfg["tie_word_embeddings"] = rng.random() < 0.3
    if rng.random() < 0.3:  # q/k LayerNorms are sized hidden // heads: no other head_dim then
        cfg["qk_layernorm"] = True
        cfg.pop("head_dim", None)
    hd = cfg.get("head_dim") or cfg["hidden_size"] // heads
    factor = rng.choice([0.25, 0.4, 0.5, 1.0])
    cfg["partial_rotary_factor"] = factor if (hd * factor).is_integer() and int(hd * factor) % 2 == 0 else 0.5


def _shape_granite(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    cfg["attention_bias"] = rng.random() < 0.3
    cfg["mlp_bias"] = rng.random() < 0.3
    cfg["tie_word_embeddings"] = rng.random() < 0.5
    cfg["embedding_multiplier"] = rng.choice([1.0, 12.0])
    cfg["residual_multiplier"] = rng.choice([1.0, 0.22])
    cfg["attention_multiplier"] = rng.choice([0.0078125, 0.015625])
    cfg["logits_scaling"] = rng.choice([1.0, 8.0])


def _shape_cohere(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    cfg["use_qk_norm"] = rng.random() < 0.4
    cfg["attention_bias"] = rng.random() < 0.3
    cfg["tie_word_embeddings"] = rng.random() < 0.7
    cfg["logit_scale"] = rng.choice([0.0625, 0.125, 1.0])


def _shape_stablelm(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    cfg.pop("head_dim", None)  # head_dim is hidden // heads
    hd = cfg["hidden_size"] // heads
    factor = rng.choice([0.25, 0.5, 1.0])
    cfg["partial_rotary_factor"] = factor if (hd * factor).is_integer() and int(hd * factor) % 2 == 0 else 0.5
    cfg["use_qkv_bias"] = rng.random() < 0.5
    cfg["qk_layernorm"] = rng.random() < 0.3
    cfg["use_parallel_residual"] = rng.random() < 0.4
    cfg["tie_word_embeddings"] = rng.random() < 0.3


def _shape_smollm3(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    cfg["no_rope_layer_interval"] = rng.choice([2, 3, 4])
    cfg["use_sliding_window"] = rng.random() < 0.3
    cfg["sliding_window"] = rng.choice([16, 64, 4096])
    cfg["attention_bias"] = rng.random() < 0.3
    cfg["mlp_bias"] = rng.random() < 0.3
    cfg["tie_word_embeddings"] = rng.random() < 0.7


def _shape_qwen3_olmo2(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    cfg["attention_bias"] = rng.random() < 0.3
    cfg["head_dim"] = head_dim or 16


def _experts(rng: random.Random) -> tuple[int, int]:
    """Routed experts and top-k; expert widths are multiples of 8 (grouped_mm's 16-byte row strides)."""
    n_exp = rng.choice([2, 3, 4, 6])
    return n_exp, rng.randint(1, min(n_exp, 3))


def _shape_mixtral(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    cfg["num_local_experts"], cfg["num_experts_per_tok"] = _experts(rng)
    cfg["intermediate_size"] = rng.choice([16, 24, 40, 64, 128])  # the experts' width
    cfg["sliding_window"] = rng.choice([None, None, 16, 64])
    cfg["tie_word_embeddings"] = rng.random() < 0.3
    cfg["head_dim"] = head_dim or 16


def _shape_qwen3_moe(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    cfg["num_experts"], cfg["num_experts_per_tok"] = _experts(rng)
    cfg["moe_intermediate_size"] = rng.choice([16, 24, 40, 64])
    deep = cfg["num_hidden_layers"] >= 2  # at least one MoE layer (TRL's aux loss indexes router logits)
    cfg["decoder_sparse_step"] = rng.choice([1, 1, 2]) if deep else 1
    cfg["mlp_only_layers"] = [0] if deep and rng.random() < 0.3 else []
    cfg["norm_topk_prob"] = rng.random() < 0.5
    cfg["attention_bias"] = rng.random() < 0.3
    cfg["use_sliding_window"] = rng.random() < 0.3
    cfg["sliding_window"] = rng.choice([16, 64])
    cfg["tie_word_embeddings"] = rng.random() < 0.3
    cfg["head_dim"] = head_dim or 16


def _shape_gemma(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    cfg["head_dim"] = head_dim or 16  # the config's default is 256
    cfg["attention_bias"] = rng.random() < 0.3
    cfg["tie_word_embeddings"] = rng.random() < 0.7


def _shape_gemma3_text(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    cfg["head_dim"] = head_dim or 16
    cfg["query_pre_attn_scalar"] = rng.choice([cfg["head_dim"], 2 * cfg["head_dim"]])
    cfg["sliding_window"] = rng.choice([16, 64, 4096])
    cfg["sliding_window_pattern"] = rng.choice([2, 3, 6])  # transformers turns it into layer_types
    cfg["attention_bias"] = rng.random() < 0.2
    cfg["tie_word_embeddings"] = rng.random() < 0.7
    cfg["attn_logit_softcapping"] = rng.choice([None, None, 50.0])  # soft-capped scores: eager attention
    cfg["final_logit_softcapping"] = rng.choice([None, 30.0])


def _shape_deepseek_v2(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    cfg.pop("num_key_value_heads")  # MLA: every head has its own K/V, expanded from the latent
    cfg.pop("head_dim", None)
    cfg["q_lora_rank"] = rng.choice([None, 12, 16, 24])
    cfg["kv_lora_rank"] = rng.choice([8, 12, 16, 24])
    cfg["qk_nope_head_dim"] = rng.choice([4, 8, 12, 16])
    cfg["qk_rope_head_dim"] = rng.choice([4, 8])
    cfg["v_head_dim"] = rng.choice([4, 8, 12, 16])
    cfg["n_routed_experts"], cfg["num_experts_per_tok"] = _experts(rng)
    cfg["moe_intermediate_size"] = rng.choice([16, 24, 40])
    cfg["n_shared_experts"] = rng.choice([1, 2])
    cfg["first_k_dense_replace"] = rng.randint(0, cfg["num_hidden_layers"] - 1)  # at least one MoE layer
    cfg["norm_topk_prob"] = rng.random() < 0.5
    cfg["attention_bias"] = rng.random() < 0.3
    cfg["mlp_bias"] = rng.random() < 0.3
    cfg["tie_word_embeddings"] = rng.random() < 0.3


def _shape_gpt2(rng: random.Random, cfg: dict, heads: int, kv: int, head_dim: int | None) -> None:
    for key in ("num_key_value_heads", "head_dim"):
        cfg.pop(key, None)
    # GPT-2's own key names (the family reads them; transformers maps hidden_size etc. onto them)
    cfg["n_embd"] = heads * rng.choice([8, 12, 16, 20, 24, 32])
    del cfg["hidden_size"]
    cfg["n_head"] = cfg.pop("num_attention_heads")
    cfg["n_layer"] = cfg.pop("num_hidden_layers")
    cfg["n_positions"] = cfg.pop("max_position_embeddings")
    inner = cfg.pop("intermediate_size")
    cfg["n_inner"] = inner if rng.random() < 0.5 else None  # None: 4 x n_embd
    cfg["scale_attn_weights"] = rng.random() < 0.8
    cfg["scale_attn_by_inverse_layer_idx"] = rng.random() < 0.3
    cfg["tie_word_embeddings"] = rng.random() < 0.8


_FAMILY_SHAPES = {
    "qwen2": _shape_qwen2,
    "mistral": _shape_mistral,
    "gemma2": _shape_gemma2,
    "gpt_neox": _shape_gpt_neox,
    "starcoder2": _shape_starcoder2,
    "qwen2_moe": _shape_qwen2_moe,
    "falcon": _shape_falcon,
    "gpt_bigcode": _shape_gpt_bigcode,
    "bloom": _shape_bloom,
    "opt": _shape_opt,
    "phi": _shape_phi,
    "granite": _shape_granite,
    "cohere": _shape_cohere,
    "stablelm": _shape_stablelm,
    "smollm3": _shape_smollm3,
    "qwen3": _shape_qwen3_olmo2,
    "olmo2": _shape_qwen3_olmo2,
    "mixtral": _shape_mixtral,
    "qwen3_moe": _shape_qwen3_moe,
    "gemma": _shape_gemma,
    "gemma3_text": _shape_gemma3_text,
    "deepseek_v2": _shape_deepseek_v2,
    "gpt2": _shape_gpt2,
}


def odd_shape(rng: random.Random, family: str, vocab: int) -> dict:
    heads = rng.choice([2, 3, 4, 6])
    kv = rng.choice([d for d in (1, 2, 3, 6) if heads % d == 0 and d <= heads])
    head_dim = rng.choice([8, 12, 16, 20, 24, 32])
    hidden = heads * rng.choice([8, 12, 16, 20, 24, 32])  # configs validate hidden % heads == 0
    if (family in ("llama", "qwen2", "mistral", "phi3", "gpt_neox", "olmo2", "starcoder2", "phi", "granite", "cohere",
                   "smollm3") and rng.random() < 0.5):
        head_dim = None  # the default hidden // heads (needs divisibility)
        hidden = heads * rng.choice([12, 16, 20, 24, 32])
    cfg = {
        "hidden_size": hidden,
        "intermediate_size": rng.choice([64, 100, 128, 176, 256, 344, 400]),
        "num_hidden_layers": rng.randint(1, 4),
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab + rng.randint(0, 300),
        "max_position_embeddings": 1024,
    }
    if head_dim is not None:
        cfg["head_dim"] = head_dim
    shape = _FAMILY_SHAPES.get(family)
    if shape is not None:
        shape(rng, cfg, heads, kv, head_dim)
    return cfg
