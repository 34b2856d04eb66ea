"""refplan.families against transformers' own modules.

Every catalog entry and a set of odd-shaped tiny configs are built with
``AutoModelForCausalLM.from_config`` on the meta device (no weights allocated); the spec's total
and per-layer parameter counts must equal transformers' exactly, and the linears the spec marks as
LoRA targets must be the modules PEFT's ``"all-linear"`` picks.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import pytest

from refplan.errors import PlanError
from refplan.families import spec_from_config
from refplan.model import ModelSpec, Role

CATALOG = json.loads((Path(__file__).parents[2] / "refplan" / "catalog" / "models.json").read_text())

_LAYER_RE = re.compile(r"\.(?:layers|h)\.(\d+)\.")


def _meta_model(config: dict):
    """The transformers causal LM for ``config`` on the meta device (gemma3: its text decoder)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    cfg = dict(config)
    if cfg["model_type"] == "gemma3":
        cfg = dict(cfg["text_config"])  # Gemma3ForCausalLM from the text config
    model_type = cfg.pop("model_type")
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg))


def _param_counts(model) -> tuple[int, dict[int, int]]:
    total, per_layer = 0, collections.Counter()
    for name, p in model.named_parameters():  # tied parameters are yielded once
        total += p.numel()
        m = _LAYER_RE.search(name)
        if m:
            per_layer[int(m.group(1))] += p.numel()
    return total, dict(per_layer)


def _assert_matches_transformers(spec: ModelSpec, config: dict) -> None:
    model = _meta_model(config)
    total, per_layer = _param_counts(model)
    assert spec.params == total
    assert {i: layer.params for i, layer in enumerate(spec.layers)} == per_layer
    assert spec.tie_word_embeddings == (spec.lm_head is None)


@pytest.mark.parametrize("entry", CATALOG, ids=[e["model_id"] for e in CATALOG])
def test_catalog_entry_param_count_equals_transformers(entry):
    spec = spec_from_config(entry["config"], entry["model_id"], "catalog")
    assert not spec.generic_fallback
    _assert_matches_transformers(spec, entry["config"])


def test_catalog_entries_carry_provenance():
    assert len(CATALOG) == 65
    assert len({e["model_id"] for e in CATALOG}) == 65
    for entry in CATALOG:
        assert entry["source"] and entry["verification"] and "config" in entry


# -- tiny configs of every family, odd shapes -----------------------------------------------------

_ODD = dict(hidden_size=72, num_attention_heads=6, num_key_value_heads=2, head_dim=20,
            intermediate_size=100, vocab_size=101, num_hidden_layers=2)

TINY = {
    "llama-bias": dict(model_type="llama", **_ODD, attention_bias=True, mlp_bias=True),
    "llama-tied-nohd": dict(model_type="llama", **{**_ODD, "head_dim": None}, tie_word_embeddings=True),
    "mistral": dict(model_type="mistral", **_ODD, sliding_window=16),
    "mixtral": dict(model_type="mixtral", **_ODD, num_local_experts=3, num_experts_per_tok=2),
    "qwen2": dict(model_type="qwen2", **{k: v for k, v in _ODD.items() if k != "head_dim"}),
    "qwen2-headdim-sliding": dict(model_type="qwen2", **_ODD, use_sliding_window=True, sliding_window=8,
                                  max_window_layers=1),
    "qwen3": dict(model_type="qwen3", **_ODD, attention_bias=True),
    "qwen3_moe": dict(model_type="qwen3_moe", **{**_ODD, "num_hidden_layers": 4}, num_experts=4,
                      num_experts_per_tok=2, moe_intermediate_size=24, mlp_only_layers=[1],
                      decoder_sparse_step=1),
    "qwen3_moe-step2": dict(model_type="qwen3_moe", **{**_ODD, "num_hidden_layers": 4}, num_experts=3,
                            num_experts_per_tok=1, moe_intermediate_size=24, decoder_sparse_step=2),
    "qwen2_moe": dict(model_type="qwen2_moe", **{**_ODD, "num_hidden_layers": 4}, num_experts=4,
                      num_experts_per_tok=2, moe_intermediate_size=24, shared_expert_intermediate_size=40,
                      mlp_only_layers=[1]),
    "qwen2_moe-step2-sliding": dict(model_type="qwen2_moe", **{k: v for k, v in _ODD.items() if k != "head_dim"},
                                    num_experts=3,
                                    num_experts_per_tok=1, moe_intermediate_size=20,
                                    shared_expert_intermediate_size=28, decoder_sparse_step=2, qkv_bias=False,
                                    use_sliding_window=True, sliding_window=8, max_window_layers=1,
                                    norm_topk_prob=True, tie_word_embeddings=True),
    "gemma": dict(model_type="gemma", **_ODD),
    "gemma2": dict(model_type="gemma2", **_ODD, tie_word_embeddings=False),
    "gemma3_text": dict(model_type="gemma3_text", **{**_ODD, "num_hidden_layers": 7}),
    "gemma3-sparse-text-config": dict(model_type="gemma3", text_config=dict(
        model_type="gemma3_text", hidden_size=64, intermediate_size=96, num_hidden_layers=2)),
    "phi3": dict(model_type="phi3", **_ODD, pad_token_id=None, bos_token_id=None, eos_token_id=None),
    "olmo2": dict(model_type="olmo2", **_ODD, attention_bias=True, pad_token_id=None),
    "gpt2": dict(model_type="gpt2", n_embd=72, n_head=6, n_layer=2, n_inner=100, n_positions=50, vocab_size=101),
    "gpt2-default-inner": dict(model_type="gpt2", n_embd=72, n_head=6, n_layer=2, n_positions=50, vocab_size=101),
    "gpt_neox": dict(model_type="gpt_neox", **{k: v for k, v in _ODD.items() if k not in ("head_dim", "num_key_value_heads")}),
    "gpt_neox-nobias-tied": dict(model_type="gpt_neox", hidden_size=72, num_attention_heads=6, intermediate_size=100,
                                 vocab_size=101, num_hidden_layers=2, attention_bias=False, tie_word_embeddings=True),
    "falcon-multi-query": dict(model_type="falcon", hidden_size=72, num_attention_heads=6, num_hidden_layers=2,
                               vocab_size=101, multi_query=True, parallel_attn=True),
    "falcon-new-decoder": dict(model_type="falcon", hidden_size=72, num_attention_heads=6, num_kv_heads=2,
                               num_hidden_layers=2, vocab_size=101, new_decoder_architecture=True, bias=True,
                               ffn_hidden_size=100),
    "falcon-new-decoder-1ln": dict(model_type="falcon", hidden_size=72, num_attention_heads=6, num_kv_heads=3,
                                   num_hidden_layers=2, vocab_size=101, new_decoder_architecture=True,
                                   num_ln_in_parallel_attn=1, tie_word_embeddings=False),
    "falcon-mha-sequential": dict(model_type="falcon", hidden_size=72, num_attention_heads=6, num_hidden_layers=2,
                                  vocab_size=101, multi_query=False, parallel_attn=False, bias=True),
    # attn_pdrop reaches SDPA as a float, out of reach of TRL's disable_dropout: 0 as the validate harness sets it
    "gpt_bigcode": dict(model_type="gpt_bigcode", n_embd=72, n_head=6, n_layer=2, n_inner=100, n_positions=50,
                        vocab_size=101, attn_pdrop=0.0),
    "gpt_bigcode-mha-untied": dict(model_type="gpt_bigcode", hidden_size=72, num_attention_heads=6, num_hidden_layers=2,
                                   max_position_embeddings=40, vocab_size=101, multi_query=False,
                                   tie_word_embeddings=False, attn_pdrop=0.0),
    "bloom": dict(model_type="bloom", hidden_size=72, n_head=6, n_layer=2, vocab_size=101),
    "bloom-untied-n_embed": dict(model_type="bloom", n_embed=60, num_attention_heads=5, num_hidden_layers=3,
                                 vocab_size=97, tie_word_embeddings=False,
                                 apply_residual_connection_post_layernorm=True),
    "opt": dict(model_type="opt", hidden_size=72, num_attention_heads=6, num_hidden_layers=2, ffn_dim=100,
                max_position_embeddings=50, vocab_size=101),
    "opt-nobias-untied-gelu": dict(model_type="opt", hidden_size=60, num_attention_heads=5, num_hidden_layers=3,
                                   ffn_dim=88, max_position_embeddings=40, vocab_size=97, enable_bias=False,
                                   tie_word_embeddings=False, activation_function="gelu", dropout=0.0),
    "phi": dict(model_type="phi", **{k: v for k, v in _ODD.items() if k != "head_dim"}),
    # q_layernorm is sized hidden // heads: a head_dim key must agree for the forward to run
    "phi-qk-ln-tied": dict(model_type="phi", **{k: v for k, v in _ODD.items() if k != "head_dim"}, qk_layernorm=True,
                           tie_word_embeddings=True, partial_rotary_factor=0.4, hidden_act="gelu"),
    "phi-headdim": dict(model_type="phi", **{**_ODD, "num_hidden_layers": 1}),
    "granite": dict(model_type="granite", **_ODD, attention_bias=True, embedding_multiplier=12.0,
                    residual_multiplier=0.22, attention_multiplier=0.015625, logits_scaling=8.0),
    "granite-tied-nohd": dict(model_type="granite", **{k: v for k, v in _ODD.items() if k != "head_dim"},
                              tie_word_embeddings=True, mlp_bias=True),
    "cohere": dict(model_type="cohere", **_ODD),
    "cohere-qk-norm-bias": dict(model_type="cohere", **{k: v for k, v in _ODD.items() if k != "head_dim"},
                                use_qk_norm=True, attention_bias=True, tie_word_embeddings=False),
    # head_dim 16: the default partial_rotary_factor 0.25 needs an even number of rotated dims
    "stablelm": dict(model_type="stablelm", **{**{k: v for k, v in _ODD.items() if k != "head_dim"},
                                               "hidden_size": 96}),
    "stablelm-parallel-qk-ln-bias": dict(model_type="stablelm", **{k: v for k, v in _ODD.items() if k != "head_dim"},
                                         use_parallel_residual=True, qk_layernorm=True, use_qkv_bias=True,
                                         partial_rotary_factor=0.5, tie_word_embeddings=True),
    "smollm3": dict(model_type="smollm3", **{**_ODD, "num_hidden_layers": 4}, attention_bias=True, pad_token_id=None),
    "smollm3-nope-sliding-untied": dict(model_type="smollm3", **{k: v for k, v in _ODD.items() if k != "head_dim"},
                                        no_rope_layer_interval=2, use_sliding_window=True, sliding_window=8,
                                        mlp_bias=True, tie_word_embeddings=False, pad_token_id=None),
    "smollm3-all-nope": dict(model_type="smollm3", **_ODD, no_rope_layers=[0, 0], pad_token_id=None),
    "falcon-alibi-mha": dict(model_type="falcon", hidden_size=72, num_attention_heads=6, num_hidden_layers=2,
                             vocab_size=101, multi_query=False, parallel_attn=False, bias=True, alibi=True),
    "falcon-alibi-new-decoder": dict(model_type="falcon", hidden_size=72, num_attention_heads=6, num_kv_heads=2,
                                     num_hidden_layers=2, vocab_size=101, new_decoder_architecture=True, alibi=True),
    "opt-350m-layout": dict(model_type="opt", hidden_size=72, num_attention_heads=6, num_hidden_layers=2, ffn_dim=100,
                            max_position_embeddings=50, vocab_size=101, word_embed_proj_dim=40,
                            do_layer_norm_before=False),
    "opt-no-final-norm-untied": dict(model_type="opt", hidden_size=60, num_attention_heads=5, num_hidden_layers=2,
                                     ffn_dim=88, max_position_embeddings=40, vocab_size=97, word_embed_proj_dim=44,
                                     _remove_final_layer_norm=True, tie_word_embeddings=False),
    "starcoder2": dict(model_type="starcoder2", **_ODD, sliding_window=16),
    "starcoder2-nobias-untied": dict(model_type="starcoder2", **{**_ODD, "head_dim": None}, use_bias=False,
                                     tie_word_embeddings=False),
    "deepseek_v2-q-lora": dict(model_type="deepseek_v2", hidden_size=72, num_attention_heads=6, num_hidden_layers=3,
                               intermediate_size=100, vocab_size=101, q_lora_rank=12, kv_lora_rank=10,
                               qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=5, n_routed_experts=3,
                               num_experts_per_tok=2, moe_intermediate_size=14, n_shared_experts=2,
                               first_k_dense_replace=1, attention_bias=True, mlp_bias=True),
    "deepseek_v2-no-q-lora": dict(model_type="deepseek_v2", hidden_size=72, num_attention_heads=6, num_hidden_layers=2,
                                  intermediate_size=100, vocab_size=101, q_lora_rank=None, kv_lora_rank=10,
                                  qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=5, n_routed_experts=4,
                                  num_experts_per_tok=2, moe_intermediate_size=14, n_shared_experts=1,
                                  first_k_dense_replace=0, n_group=2, topk_group=1),
}


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_config_param_count_equals_transformers(name):
    config = TINY[name]
    spec = spec_from_config(config, name, "test")
    _assert_matches_transformers(spec, config)


@pytest.mark.parametrize("name", ["llama-bias", "qwen2", "phi3", "gpt2", "falcon-new-decoder", "mixtral", "starcoder2",
                                  "qwen3_moe", "deepseek_v2-q-lora", "olmo2", "gemma3_text", "qwen2_moe",
                                  "qwen2_moe-step2-sliding", "gpt_bigcode", "gpt_bigcode-mha-untied", "bloom", "opt",
                                  "phi", "phi-qk-ln-tied", "granite", "cohere-qk-norm-bias",
                                  "stablelm-parallel-qk-ln-bias", "smollm3", "opt-350m-layout"])
def test_lora_targets_are_what_peft_all_linear_wraps(name):
    from peft import LoraConfig
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers

    config = TINY[name]
    spec = spec_from_config(config, name, "test")
    model = _meta_model(config)
    chosen = _maybe_include_all_linear_layers(LoraConfig(target_modules="all-linear"), model).target_modules
    peft_leaves = collections.Counter(n.rsplit(".", 1)[-1] for n in chosen)
    # nn.Linear modules only: MoE routers and fused 3-D experts are wrapped through their parameters
    # (PEFT ParamWrapper), which _maybe_include_all_linear_layers does not list; counted below
    if any(l.count > 1 or l.role is Role.ROUTER for l in spec.lora_linears()):
        pytest.skip("MoE: PEFT wraps parameters, and not the plain MLP linears: see the parameter-count test")
    spec_leaves = collections.Counter(lin.name for lin in spec.lora_linears())
    assert spec_leaves == peft_leaves
    modules = dict(model.named_modules())
    for full in chosen:  # shapes too: in/out features of every wrapped module
        if "experts" in full or full.endswith(".gate"):
            continue
        mod = modules[full]
        w = mod.weight
        shape = (w.shape[1], w.shape[0]) if type(mod).__name__ != "Conv1D" else (w.shape[0], w.shape[1])
        in_layer = _LAYER_RE.search(full)  # outside the layers: OPT's project_in / project_out
        linears = spec.layers[int(in_layer.group(1))].linears if in_layer else spec.outer_linears
        assert any((l.in_features, l.out_features) == shape for l in linears if l.name == full.rsplit(".", 1)[-1])


# -- hand-derived and behavioural checks ---------------------------------------------------------


def test_llama_count_by_hand():
    # hidden 64, 4 heads of 16, 2 KV heads, MLP 96, vocab 100, 2 layers, untied, no biases
    spec = spec_from_config(
        dict(model_type="llama", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=96, vocab_size=100, num_hidden_layers=2), "tiny", "test")
    attn = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64  # q, k (2*16), v, o
    mlp = 3 * 64 * 96  # gate, up, down
    norms = 2 * 64  # input + post-attention RMSNorm weights
    per_layer = attn + mlp + norms  # 12288 + 18432 + 128 = 30848
    embed = 100 * 64
    total = embed + 2 * per_layer + 64 + 100 * 64  # + final norm + lm_head
    assert per_layer == 30848
    assert total == 74560
    assert spec.params == total
    assert (spec.head_dim, spec.kv_dim, spec.q_dim) == (16, 32, 64)


def test_generic_fallback_equals_llama_of_same_shape():
    shape = dict(hidden_size=72, num_attention_heads=6, num_key_value_heads=2, intermediate_size=100,
                 vocab_size=101, num_hidden_layers=3)
    generic = spec_from_config(dict(model_type="brand_new_lm", **shape), "x", "test")
    llama = spec_from_config(dict(model_type="llama", **shape), "x", "test")
    assert generic.generic_fallback and not llama.generic_fallback
    assert generic.family == "brand_new_lm"
    assert generic.params == llama.params
    assert generic.layers == llama.layers


def test_unknown_family_without_standard_keys_is_refused():
    with pytest.raises(PlanError, match="unsupported model_type 'mamba'.*'intermediate_size'") as err:
        spec_from_config(dict(model_type="mamba", hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                              vocab_size=10), "x", "/tmp/config.json")
    assert err.value.where == "/tmp/config.json"


@pytest.mark.parametrize("bad, message", [
    ({"hidden_size": None}, "missing key 'hidden_size'"),
    ({"hidden_size": "4096"}, "key 'hidden_size' must be a positive integer"),
    ({"num_key_value_heads": 4}, "not a multiple of num_key_value_heads 4"),
    ({"num_hidden_layers": 0}, "key 'num_hidden_layers' must be a positive integer"),
    ({"tie_word_embeddings": "yes"}, "key 'tie_word_embeddings' must be true or false"),
])
def test_bad_fields_raise_plan_error_naming_the_key(bad, message):
    cfg = dict(model_type="llama", hidden_size=72, num_attention_heads=6, num_key_value_heads=2,
               intermediate_size=100, vocab_size=101, num_hidden_layers=2)
    cfg.update(bad)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    with pytest.raises(PlanError, match=message) as err:
        spec_from_config(cfg, "x", "config.json")
    assert err.value.where == "config.json"


def test_falcon_refinedweb_key_names():
    canonical = dict(model_type="falcon", hidden_size=72, num_attention_heads=6, num_hidden_layers=2,
                     vocab_size=101, multi_query=True, parallel_attn=True)
    old = dict(model_type="RefinedWebModel", n_embed=72, n_head=6, n_layer=2, vocab_size=101,
               multi_query=True, parallel_attn=True)
    assert spec_from_config(old, "x", "t").layers == spec_from_config(canonical, "x", "t").layers
    old40 = dict(model_type="RefinedWeb", hidden_size=72, n_head=6, n_head_kv=2, n_layer=2, vocab_size=101)
    spec = spec_from_config(old40, "x", "t")
    assert spec.family == "falcon" and spec.num_kv_heads == 2
    assert [n.name for n in spec.layers[0].norms] == ["ln_attn", "ln_mlp"]


def test_family_structure_is_typed():
    from refplan.model import (AttentionKernel, KVToAttention, MlpStyle, NormPlacement, NormStyle, Positions, QKNorm,
                               Role, Structure)

    q = {name: spec_from_config(cfg, name, "t") for name, cfg in TINY.items()}
    phi3 = q["phi3"].layers[0]
    assert phi3.first(Role.QKV).name == "qkv_proj" and phi3.first(Role.MLP_GATE_UP).name == "gate_up_proj"
    g2 = q["gemma2"].structure
    assert g2.placement is NormPlacement.SANDWICH and g2.norm is NormStyle.RMS_GEMMA and g2.final_softcap == 30.0
    assert g2.attn_softcap == 50.0 and g2.attention is AttentionKernel.EAGER_ONLY
    assert g2.layer_types[:2] == ("sliding_attention", "full_attention")
    g3 = q["gemma3_text"].structure
    assert g3.qk_norm is QKNorm.PER_HEAD and g3.final_softcap is None
    assert g3.layer_types[5] == "full_attention"
    assert q["gemma"].structure.embed_scale == pytest.approx(72**0.5)
    assert q["mistral"].structure.sliding_window == 16
    assert q["qwen2-headdim-sliding"].structure.layer_types == ("full_attention", "sliding_attention")
    assert q["qwen2"].structure.sliding_window is None
    assert q["olmo2"].structure.placement is NormPlacement.POST and q["olmo2"].structure.qk_norm is QKNorm.FULL_WIDTH
    neox = q["gpt_neox"].structure
    assert neox.rotary_fraction == 0.25 and neox.parallel_residual and not neox.shared_block_norm
    assert neox.norm is NormStyle.LAYER and neox.mlp is MlpStyle.PLAIN
    falcon = q["falcon-multi-query"]
    assert falcon.num_kv_heads == 1 and falcon.structure.parallel_residual and falcon.structure.shared_block_norm
    assert falcon.structure.attention is AttentionKernel.OWN_MATH and falcon.structure.mask_always
    assert falcon.structure.kv_to_attention is KVToAttention.BROADCAST
    assert q["falcon-new-decoder"].structure.kv_to_attention is KVToAttention.EXPANDED
    assert q["falcon-mha-sequential"].structure.kv_to_attention is KVToAttention.GROUPED
    assert q["falcon-alibi-mha"].structure.positions is Positions.ALIBI
    gpt2 = q["gpt2"].structure
    assert gpt2.positions is Positions.LEARNED and gpt2.mlp is MlpStyle.PLAIN_PY_GELU and gpt2.fused_view_qkv
    assert [l.role for l in q["gpt2"].layers[0].linears] == [Role.QKV, Role.O, Role.MLP_IN, Role.MLP_DOWN]
    bigcode = q["gpt_bigcode"]
    assert bigcode.num_kv_heads == 1 and bigcode.layers[0].first(Role.QKV).out_features == 72 + 2 * 12
    assert bigcode.buffer_bytes == 50 * 50 and bigcode.structure.fused_view_qkv
    assert q["gpt_bigcode-mha-untied"].num_kv_heads == 6 and q["gpt_bigcode-mha-untied"].buffer_bytes == 40 * 40
    bloom = q["bloom"]
    assert bloom.embed_norm.name == "word_embeddings_layernorm" and bloom.embed_norm.bias
    assert bloom.structure.positions is Positions.ALIBI and bloom.structure.attention is AttentionKernel.EAGER_ONLY
    assert q["bloom-untied-n_embed"].hidden_size == 60 and q["bloom-untied-n_embed"].lm_head is not None
    opt = q["opt"]
    assert opt.embed_params == 101 * 72 + (50 + 2) * 72 and opt.structure.positions_per_row
    assert opt.structure.mlp is MlpStyle.PLAIN_RELU and opt.structure.functional_dropouts == 2
    assert q["opt-nobias-untied-gelu"].structure.functional_dropouts == 0
    o350 = q["opt-350m-layout"]
    assert o350.structure.placement is NormPlacement.POST and o350.final_norm is None
    assert o350.token_dim == 40 and [l.name for l in o350.outer_linears] == ["project_in", "project_out"]
    with pytest.raises(PlanError, match="layer_norm_elementwise_affine"):
        spec_from_config({**TINY["opt"], "layer_norm_elementwise_affine": False}, "x", "config.json")
    phi = q["phi"]
    assert phi.structure.shared_block_norm and phi.structure.rotary_concat and phi.structure.rotary_fraction == 0.5
    assert phi.lm_head.bias and phi.structure.mlp is MlpStyle.PLAIN_PY_GELU
    tied = q["phi-qk-ln-tied"]
    assert tied.lm_head is None and tied.head_bias and tied.structure.qk_norm is QKNorm.PER_HEAD
    assert tied.structure.rotary_fraction == 0.4 and tied.structure.mlp is MlpStyle.PLAIN
    assert q["granite"].structure == Structure() and q["granite"].layers[0].first(Role.O).bias
    cohere = q["cohere-qk-norm-bias"]
    assert cohere.structure.norm is NormStyle.LAYER_FP32_PY and cohere.structure.shared_block_norm
    assert [n.name for n in cohere.layers[0].norms] == ["q_norm", "k_norm", "input_layernorm"]
    assert cohere.layers[0].norms[0].size == 6 * 12 and cohere.final_norm.bias is False
    slm = q["stablelm-parallel-qk-ln-bias"]
    assert slm.structure.shared_block_norm and slm.structure.rotary_concat and slm.head_dim == 12
    assert sum(1 for n in slm.layers[0].norms if n.name.startswith("q_layernorm.norms.")) == 6
    assert not q["stablelm"].structure.parallel_residual and q["stablelm"].structure.rotary_fraction == 0.25
    assert q["smollm3"].structure.nope_layers == (3,) and q["smollm3"].structure.sliding_window is None
    smol = q["smollm3-nope-sliding-untied"].structure
    assert smol.nope_layers == (1,) and smol.layer_types == ("full_attention", "sliding_attention")
    assert q["smollm3-all-nope"].structure.nope_layers == (0, 1)
    mla = dict(q["deepseek_v2-q-lora"].structure.mla)
    assert mla["q_lora_rank"] == 12 and mla["cache_dim_per_token"] == 14
    ds = q["deepseek_v2-q-lora"]
    assert (ds.head_dim, ds.v_head_dim) == (10, 5) and ds.structure.router_fp32
    assert ds.layers[0].moe is None and ds.layers[1].moe.shared_intermediate == 28
    assert q["qwen3_moe"].layers[1].moe is None and q["qwen3_moe"].layers[0].moe.num_experts == 4
    q2 = q["qwen2_moe"]
    assert q2.layers[1].moe is None and q2.layers[0].moe.shared_gated and q2.layers[0].moe.shared_intermediate == 40
    assert q2.layers[0].first(Role.SHARED_EXPERT_GATE).out_features == 1
    assert not q2.layers[0].first(Role.EXPERTS_GATE_UP).lora_target and not q2.layers[0].first(Role.ROUTER).lora_target
    assert q["qwen2_moe-step2-sliding"].structure.layer_types == ("sliding_attention", "full_attention")
    notes = dict(q["gemma3-sparse-text-config"].structure.notes)
    assert notes["multimodal"]["wrapper"] == "Gemma3ForConditionalGeneration"
    assert q["gemma3-sparse-text-config"].vocab_size == 262208  # Gemma3TextConfig default


def test_every_linear_has_a_role_and_every_family_a_module():
    from refplan.families import REGISTRY, SUPPORTED_FAMILIES

    for name, cfg in TINY.items():
        spec = spec_from_config(cfg, name, "t")
        assert spec.family in REGISTRY and not spec.generic_fallback
        for layer in spec.layers:
            roles = [l.role for l in layer.linears]
            assert len(roles) == len(layer.linears) and all(r.value for r in roles)
    for module in REGISTRY.values():
        assert set(module.MODEL_TYPES) <= set(SUPPORTED_FAMILIES) and callable(module.build)


def test_catalog_specs_have_expected_shapes():
    by_id = {e["model_id"]: spec_from_config(e["config"], e["model_id"], "catalog") for e in CATALOG}
    falcon = by_id["tiiuae/falcon-7b"]
    assert (falcon.num_kv_heads, falcon.head_dim, falcon.intermediate_size) == (1, 64, 18176)
    gemma3 = by_id["google/gemma-3-4b-pt"]
    assert (gemma3.num_heads, gemma3.num_kv_heads, gemma3.head_dim, gemma3.vocab_size) == (8, 4, 256, 262208)
    assert gemma3.structure.sliding_window == 1024
    assert by_id["Qwen/Qwen3-30B-A3B"].q_dim == 4096
    assert by_id["gpt2"].embed_params == 50257 * 768 + 1024 * 768
    assert by_id["Qwen/Qwen2.5-7B"].layers[0].linears[0].bias  # QKV bias without an attention_bias key



@pytest.mark.parametrize("name", ["llama-bias", "phi3", "mixtral", "qwen3_moe-all-moe", "deepseek_v2-q-lora", "gpt2",
                                  "qwen2_moe", "bloom", "opt", "phi-qk-ln-tied", "opt-350m-layout"])
def test_lora_parameter_count_equals_peft(name):
    """The planner's LoRA parameter count equals what get_peft_model(all-linear) really adds,
    MoE experts and routers included (PEFT wraps them as parameters). Known gap, not covered:
    PEFT 0.21 leaves the dense MLP of a Qwen3-MoE ``mlp_only_layers`` layer unwrapped."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from refplan.terms import lora_params

    config = dict(TINY[name]) if name in TINY else {**TINY["qwen3_moe"], "mlp_only_layers": []}
    spec = spec_from_config(config, name, "test")
    model_type = config.pop("model_type")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    real = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert lora_params(spec, 4) == real
