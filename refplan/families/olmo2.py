"""OLMo 2 (``Olmo2ForCausalLM``): norms after each sublayer (no pre-norm) and q/k RMSNorm over the
whole projection. ``Olmo2RMSNorm`` multiplies its weight into the fp32 normalized input and casts
after (``(self.weight * hidden_states).to(input_dtype)``): :attr:`NormStyle.RMS_FP32_PRODUCT`; its
rotary tables stay fp32 (:attr:`Structure.rope_tables_fp32`).

Source: transformers 5.24 ``models/olmo2``.
"""

from refplan.families._blocks import decoder, heads, rms
from refplan.model import NormPlacement, NormStyle, QKNorm, Structure

MODEL_TYPES = ("olmo2",)
DEFAULTS = {
    "num_key_value_heads": None, "head_dim": None, "tie_word_embeddings": False,
    "hidden_act": "silu", "attention_bias": False,
}


def build(r) -> dict:
    bias = r.bool("attention_bias")
    n, kv, hd = heads(r, r.int("hidden_size"))
    return decoder(r, qkv_bias=bias, o_bias=bias, attn_norms=(rms("q_norm", n * hd), rms("k_norm", kv * hd)),
                   block_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
                   structure=Structure(norm=NormStyle.RMS_FP32_PRODUCT, placement=NormPlacement.POST,
                                       qk_norm=QKNorm.FULL_WIDTH, rope_tables_fp32=True))
