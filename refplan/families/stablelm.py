"""StableLM 2 / StableLM-3B-4E1T (``StableLmForCausalLM``): LayerNorm blocks, q/k/v with optional biases
(``use_qkv_bias``) and ``o_proj`` without, partial rotary rebuilt by ``torch.cat`` (``partial_rotary_factor``,
0.25 by default), optional per-head q/k LayerNorms (``qk_layernorm``: one ``nn.LayerNorm(head_dim,
bias=False)`` per head), a gated MLP without biases, and either a sequential block or a parallel one
on the single ``input_layernorm`` (``use_parallel_residual``).

Source: transformers 5.24 ``models/stablelm/{configuration,modeling}_stablelm.py``: the config-class
defaults below (``head_dim`` is ``hidden_size // num_attention_heads``); ``StableLmLayerNormPerHead``,
``StableLmAttention``, ``StableLmMLP``, ``StableLmDecoderLayer`` (``post_attention_layernorm`` only when
not parallel), ``StableLmModel`` (``norm``).
"""

from refplan.errors import PlanError
from refplan.families._blocks import decoder, layernorm, qkvo
from refplan.model import Norm, NormStyle, QKNorm, Structure

MODEL_TYPES = ("stablelm",)
DEFAULTS = {
    "vocab_size": 50304, "intermediate_size": 6912, "hidden_size": 2560, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu", "tie_word_embeddings": False,
    "rope_parameters": None, "partial_rotary_factor": 0.25, "use_qkv_bias": False, "qk_layernorm": False,
    "use_parallel_residual": False,
}


def _per_head(name: str, heads: int, head_dim: int) -> tuple[Norm, ...]:
    return tuple(Norm(f"{name}.norms.{i}", head_dim, bias=False) for i in range(heads))


def build(r) -> dict:
    h, n = r.int("hidden_size"), r.int("num_attention_heads")
    kv = r.int("num_key_value_heads")
    if h % n or n % kv:
        raise PlanError(r.where, f"hidden_size {h} must be a multiple of num_attention_heads {n}, and that of "
                                 f"num_key_value_heads {kv}")
    hd = h // n  # StableLmAttention ignores a head_dim key
    attn = qkvo(h, n, kv, hd, r.bool("use_qkv_bias"), False)
    qk = r.bool("qk_layernorm")
    attn_norms = _per_head("q_layernorm", n, hd) + _per_head("k_layernorm", kv, hd) if qk else ()
    rope = r.get("rope_parameters")
    rotary = r.opt_float("partial_rotary_factor")
    if isinstance(rope, dict) and "partial_rotary_factor" in rope:
        rotary = float(rope["partial_rotary_factor"])
    parallel = r.bool("use_parallel_residual")
    structure = Structure(norm=NormStyle.LAYER, qk_norm=QKNorm.PER_HEAD if qk else QKNorm.NONE,
                          rotary_fraction=rotary, rotary_concat=True, parallel_residual=parallel,
                          shared_block_norm=parallel)
    block = ("input_layernorm",) if parallel else ("input_layernorm", "post_attention_layernorm")
    fields = decoder(r, attn=attn, attn_norms=attn_norms, block_norms=block, structure=structure, norm=layernorm)
    fields.update(num_kv_heads=kv, head_dim=hd)
    return fields
