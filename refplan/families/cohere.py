"""Cohere Command-R (``CohereForCausalLM``): a parallel block -- attention and the gated MLP both read
the one ``input_layernorm`` output and join the residual together -- on Cohere's own LayerNorm
(mean-centred, weight only, computed in fp32 in Python), interleaved rotary (computed in fp32),
optional per-head q/k LayerNorms (``use_qk_norm``, weights [heads, head_dim]), tied embeddings and
logits times ``logit_scale`` (a scalar multiply: the scaled logits replace the unscaled ones, and
TRL's fused head applies the scale per tile).

Source: transformers 5.24 ``models/cohere/{configuration,modeling}_cohere.py``: the config-class
defaults below; ``CohereLayerNorm`` (``x.to(fp32)``, ``x - mean``, ``rsqrt(var + eps)``,
``weight.to(fp32) * x``), ``apply_rotary_pos_emb`` / ``rotate_half`` (``q.float()``, even/odd
interleave), ``CohereAttention`` (q/k/v/o with ``attention_bias``; ``q_norm`` / ``k_norm`` before the
transpose), ``CohereDecoderLayer``, ``CohereModel`` (``norm``), ``CohereForCausalLM``.
"""

from refplan.families._blocks import decoder, heads
from refplan.model import Norm, NormStyle, QKNorm, Structure

MODEL_TYPES = ("cohere",)
DEFAULTS = {
    "vocab_size": 256000, "hidden_size": 8192, "intermediate_size": 22528, "num_hidden_layers": 40,
    "num_attention_heads": 64, "num_key_value_heads": None, "head_dim": None, "hidden_act": "silu",
    "tie_word_embeddings": True, "attention_bias": False, "use_qk_norm": False, "logit_scale": 0.0625,
}


def _cohere_norm(name: str, size: int) -> Norm:
    return Norm(name, size, bias=False)


def build(r) -> dict:
    h = r.int("hidden_size")
    n, kv, hd = heads(r, h)
    bias = r.bool("attention_bias")
    qk = r.bool("use_qk_norm")
    attn_norms = (_cohere_norm("q_norm", n * hd), _cohere_norm("k_norm", kv * hd)) if qk else ()
    structure = Structure(norm=NormStyle.LAYER_FP32_PY, qk_norm=QKNorm.PER_HEAD if qk else QKNorm.NONE,
                          parallel_residual=True, shared_block_norm=True)
    return decoder(r, qkv_bias=bias, o_bias=bias, attn_norms=attn_norms, block_norms=("input_layernorm",),
                   structure=structure, norm=_cohere_norm)
