"""Gemma 3 text decoder (``Gemma3ForCausalLM``): Gemma 2's sandwich norms with per-head q/k norms and
a sliding pattern (five sliding layers, one full).

A ``gemma3`` multimodal config (``Gemma3ForConditionalGeneration``) is planned as its text decoder
built from ``text_config``, missing keys filled from ``Gemma3TextConfig`` defaults; the SigLIP
vision tower is not counted. Source: transformers 5.24 ``models/gemma3``.
"""

from refplan.errors import PlanError
from refplan.families._blocks import decoder, heads, layer_types, rms, windowing
from refplan.families.gemma2 import SANDWICH_NORMS
from refplan.model import NormPlacement, NormStyle, QKNorm, Structure

MODEL_TYPES = ("gemma3_text", "gemma3")
DEFAULTS = {
    "vocab_size": 262208, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
    "tie_word_embeddings": True, "hidden_activation": "gelu_pytorch_tanh", "attention_bias": False,
    "sliding_window": 4096, "sliding_window_pattern": 6, "layer_types": None,
    "final_logit_softcapping": None, "attn_logit_softcapping": None,
    "use_bidirectional_attention": False,
}


def text_config(config: dict, where: str) -> tuple[dict, str, tuple]:
    """The decoder's config, where errors point, and notes for the reader (the multimodal wrapper)."""
    if config.get("model_type") != "gemma3":
        return config, where, ()
    text = config.get("text_config")
    if text is None:
        text = {}
    if not isinstance(text, dict):
        raise PlanError(where, "key 'text_config' must be a JSON object")
    text = dict(text)
    if "tie_word_embeddings" not in text and "tie_word_embeddings" in config:
        text["tie_word_embeddings"] = config["tie_word_embeddings"]
    text.setdefault("model_type", "gemma3_text")
    vision = config.get("vision_config")
    note = ("multimodal", {
        "wrapper": "Gemma3ForConditionalGeneration",
        "vision_model_type": vision.get("model_type") if isinstance(vision, dict) else None,
        "counted": "text decoder only",
    })
    return text, f"{where} (text_config)", (note,)


def build(r) -> dict:
    bias = r.bool("attention_bias")
    h, n_layers = r.int("hidden_size"), r.int("num_hidden_layers")
    hd = heads(r, h)[2]
    window = r.opt_int("sliding_window")
    if window is not None and r.bool("use_bidirectional_attention"):
        window = window // 2 + 1  # Gemma3TextConfig.__post_init__
    pattern = r.int("sliding_window_pattern")
    types = layer_types(r, n_layers, window, lambda i: bool((i + 1) % pattern))
    structure = Structure(norm=NormStyle.RMS_GEMMA, placement=NormPlacement.SANDWICH, qk_norm=QKNorm.PER_HEAD,
                          embed_scale=h**0.5, attn_softcap=r.opt_float("attn_logit_softcapping"),
                          final_softcap=r.opt_float("final_logit_softcapping"), **windowing(window, types))
    return decoder(r, qkv_bias=bias, o_bias=bias, attn_norms=(rms("q_norm", hd), rms("k_norm", hd)),
                   block_norms=SANDWICH_NORMS, act_key="hidden_activation", structure=structure)
