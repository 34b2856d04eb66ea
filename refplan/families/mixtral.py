"""Mixtral (``MixtralForCausalLM``): Mistral attention with routed experts on every layer.

transformers 5.x stores the experts as fused 3-D parameters (``experts.gate_up_proj`` [E, 2I, H],
``experts.down_proj`` [E, H, I]) and the router (``gate``) as a bare weight. Source: transformers 5.24
``models/mixtral``.
"""

from refplan.families._blocks import Mlp, all_sliding, decoder, routed_experts, windowing
from refplan.model import MoE, Structure

MODEL_TYPES = ("mixtral",)
DEFAULTS = {
    "num_key_value_heads": 8, "head_dim": None, "tie_word_embeddings": False,
    "hidden_act": "silu", "sliding_window": None, "num_local_experts": 8, "num_experts_per_tok": 2,
}


def build(r) -> dict:
    h, inter, n_layers = r.int("hidden_size"), r.int("intermediate_size"), r.int("num_hidden_layers")
    key = "num_local_experts" if r.has("num_local_experts") or not r.has("num_experts") else "num_experts"
    n_exp = r.int(key)
    moe = MoE(num_experts=n_exp, top_k=r.int("num_experts_per_tok"), expert_intermediate=inter)
    window = r.opt_int("sliding_window")
    structure = Structure(experts_fused_3d=True, **windowing(window, all_sliding(window, n_layers)))
    return decoder(r, mlps=[Mlp(routed_experts(h, n_exp, inter), 0, moe)] * n_layers, structure=structure)
