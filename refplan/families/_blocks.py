"""Module builders the family modules share: norms, attention and MLP linears, MoE experts, and
the Llama-shaped decoder most families are (each family passes its structure explicitly)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from refplan.errors import PlanError
from refplan.families._reader import Reader
from refplan.model import Layer, Linear, MlpStyle, MoE, Norm, Role, Structure

SLIDING, FULL = "sliding_attention", "full_attention"


def rms(name: str, size: int) -> Norm:
    return Norm(name, size, bias=False)


def layernorm(name: str, size: int) -> Norm:
    return Norm(name, size, bias=True)


def qkvo(h: int, heads: int, kv: int, hd: int, qkv_bias: bool, o_bias: bool) -> tuple[Linear, ...]:
    return (
        Linear("q_proj", Role.Q, h, heads * hd, qkv_bias),
        Linear("k_proj", Role.K, h, kv * hd, qkv_bias),
        Linear("v_proj", Role.V, h, kv * hd, qkv_bias),
        Linear("o_proj", Role.O, heads * hd, h, o_bias),
    )


#: transformers activations written in Python from elementwise ops (``activations.py``), each keeping
#: several intermediates of the MLP width; the others are one fused op that keeps its input
PY_GELUS = ("gelu_new", "gelu_fast", "gelu_python_tanh")


def plain_mlp_style(act: str) -> MlpStyle:
    """The :class:`MlpStyle` of a plain fc_in -> act -> fc_out MLP with transformers' ``ACT2FN[act]``."""
    if act in PY_GELUS:
        return MlpStyle.PLAIN_PY_GELU
    return MlpStyle.PLAIN_RELU if act == "relu" else MlpStyle.PLAIN


def gated_mlp(h: int, inter: int, bias: bool, shared: bool = False) -> tuple[Linear, ...]:
    roles = (Role.SHARED_GATE, Role.SHARED_UP, Role.SHARED_DOWN) if shared else (
        Role.MLP_GATE, Role.MLP_UP, Role.MLP_DOWN)
    return (
        Linear("gate_proj", roles[0], h, inter, bias),
        Linear("up_proj", roles[1], h, inter, bias),
        Linear("down_proj", roles[2], inter, h, bias),
    )


def routed_experts(h: int, n: int, inter: int) -> tuple[Linear, ...]:
    """Router + experts as transformers 5.x stores them: bare parameters, not nn.Linear modules.
    PEFT 0.21's "all-linear" wraps these too (ParamWrapper on the router's and the experts'
    parameters): r per expert, 2r on the fused gate_up."""
    return (
        Linear("gate", Role.ROUTER, h, n),
        Linear("experts.gate_up_proj", Role.EXPERTS_GATE_UP, h, 2 * inter, count=n, lora_rank_mult=2),
        Linear("experts.down_proj", Role.EXPERTS_DOWN, inter, h, count=n),
    )


def heads(r: Reader, hidden: int) -> tuple[int, int, int]:
    """(num_heads, num_kv_heads, head_dim) as the Llama-style attention modules compute them."""
    n = r.int("num_attention_heads")
    kv = r.opt_int("num_key_value_heads")
    kv = n if kv is None else kv
    if n % kv:
        raise PlanError(r.where, f"num_attention_heads {n} is not a multiple of num_key_value_heads {kv}")
    hd = r.opt_int("head_dim") if r.get("head_dim") is not None else None
    if hd is None:
        if hidden % n:
            raise PlanError(r.where, f"hidden_size {hidden} is not a multiple of num_attention_heads {n}")
        hd = hidden // n
    return n, kv, hd


def layer_types(r: Reader, n_layers: int, window: int | None, default_sliding) -> tuple[str, ...] | None:
    """Per-layer attention kinds when some layers use a sliding window; None when none do."""
    if window is None:
        return None
    given = r.get("layer_types")
    if given is not None:
        if not isinstance(given, list) or len(given) != n_layers:
            raise PlanError(r.where, f"key 'layer_types' must list {n_layers} layer kinds")
        types = tuple(str(t) for t in given)
    else:
        types = tuple(SLIDING if default_sliding(i) else FULL for i in range(n_layers))
    return types if SLIDING in types else None


def all_sliding(window: int | None, n_layers: int) -> tuple[str, ...] | None:
    return tuple(SLIDING for _ in range(n_layers)) if window is not None else None


def windowing(window: int | None, types: tuple[str, ...] | None) -> dict:
    """Structure fields for a sliding window: recorded when some layer slides; ``layer_types`` when
    the layers are mixed."""
    if window is None or types is None:
        return {}
    return {"sliding_window": window, "layer_types": types if FULL in types else None}


def sliding_qwen(r: Reader, n_layers: int) -> dict:
    """Qwen2/Qwen3: ``use_sliding_window`` turns on the window for layers >= ``max_window_layers``."""
    window = r.opt_int("sliding_window") if r.bool("use_sliding_window") else None
    types = None
    if window is not None:
        mwl = r.int("max_window_layers", minimum=0)
        types = layer_types(r, n_layers, window, lambda i: i >= mwl)
    return windowing(window, types)


@dataclass(frozen=True)
class Mlp:
    """One layer's MLP part: its linears, the dense width (0 for routed experts) and the MoE record."""

    linears: tuple[Linear, ...]
    width: int
    moe: MoE | None = None


def decoder(r: Reader, *, attn: tuple[Linear, ...] | None = None, attn_norms: tuple[Norm, ...] = (),
            block_norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm"),
            mlps: list[Mlp] | None = None, qkv_bias: bool = False, o_bias: bool = False, mlp_bias: bool = False,
            act_key: str = "hidden_act", structure: Structure = Structure(), norm=rms) -> dict:
    """The fields of a Llama-shaped decoder (RMSNorm blocks, q/k/v/o attention, gated MLP) with the
    family's variations passed in: ``norm`` builds the block norms and the final ``norm``."""
    h = r.int("hidden_size")
    n_layers = r.int("num_hidden_layers")
    vocab = r.int("vocab_size")
    n, kv, hd = heads(r, h)
    inter = r.int("intermediate_size")
    if attn is None:
        attn = qkvo(h, n, kv, hd, qkv_bias, o_bias)
    if mlps is None:
        mlps = [Mlp(gated_mlp(h, inter, mlp_bias), inter)] * n_layers
    norms = attn_norms + tuple(norm(name, h) for name in block_norms)
    layers = tuple(Layer(attn + m.linears, norms, m.width, m.moe) for m in mlps)
    return dict(
        hidden_size=h, num_layers=n_layers, num_heads=n, num_kv_heads=kv, head_dim=hd, vocab_size=vocab,
        intermediate_size=inter, tie_word_embeddings=r.bool("tie_word_embeddings"), layers=layers,
        embed_params=vocab * h, final_norm=norm("norm", h), hidden_act=r.str(act_key), structure=structure,
    )


def unwrap_dense_mlps_beside_experts(layers: tuple[Layer, ...]) -> tuple[Layer, ...]:
    """Measured with peft 0.21 (tests check get_peft_model's parameter count): on a model whose
    experts are fused 3-D parameters, ``all-linear`` wraps the attention projections, the router
    and the experts, but leaves the plain MLP linears (DeepSeek's dense layers and shared experts,
    Qwen3-MoE's mlp_only layers) unwrapped."""
    return tuple(replace(layer, linears=tuple(replace(l, lora_target=False) if l.role.dense_mlp else l
                                              for l in layer.linears)) for layer in layers)

