"""Build a :class:`ModelSpec` from a transformers ``config.json`` dict, one builder per family.

Pure standard library: no torch, no transformers. Each builder mirrors the ``__init__`` of the
transformers 5.24 modeling code for its ``model_type`` module by module, so that ``spec.params``
equals ``sum(p.numel() for p in model.parameters())`` of ``AutoModelForCausalLM.from_config(cfg)``
(tests/test_families.py checks every catalog entry and odd-shaped tiny configs on the meta device).

Keys absent from the config take the transformers 5.24 config-class default (``_DEFAULTS``), as
``from_pretrained`` would; a key with no class default that refplan needs (``hidden_size``, ...)
is an error. What the builders assume, beyond what the config says:

- MoE experts (Mixtral, Qwen3-MoE, DeepSeek-V2) are stored in 5.x as fused 3-D ``nn.Parameter``
  tensors (``experts.gate_up_proj`` [E, 2I, H], ``experts.down_proj`` [E, H, I]) and the router
  (``gate``) is a custom module holding a bare weight. PEFT's ``"all-linear"`` wraps only
  ``nn.Linear``/``Conv1D`` modules, so these carry ``lora_target=False``. DeepSeek-V2's shared
  experts are plain ``nn.Linear`` (``gate_proj``/``up_proj``/``down_proj``) and are wrapped.
- GPT-2 uses ``Conv1D`` (weight stored [in, out]); PEFT treats it as a linear.
- DeepSeek-V2 places MoE on every layer ``>= first_k_dense_replace``; transformers ignores
  ``moe_layer_freq`` and so does refplan (a value other than 1 is recorded in the quirks).
- Gemma 3 multimodal configs (``model_type: gemma3``) describe the text decoder only
  (``Gemma3ForCausalLM`` built from ``text_config``); the SigLIP vision tower is not counted.
"""

from __future__ import annotations

from dataclasses import replace

from refplan.errors import PlanError
from refplan.model import Layer, Linear, ModelSpec, MoE, Norm

#: transformers 5.24 config-class defaults for the optional keys each builder reads
#: (``src/transformers/models/<family>/configuration_<family>.py``). Keys not listed are required.
_DEFAULTS: dict[str, dict[str, object]] = {
    "llama": {
        "num_key_value_heads": None, "head_dim": None, "tie_word_embeddings": False,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
    },
    "mistral": {
        "num_key_value_heads": 8, "head_dim": None, "tie_word_embeddings": False,
        "hidden_act": "silu", "sliding_window": 4096,
    },
    "mixtral": {
        "num_key_value_heads": 8, "head_dim": None, "tie_word_embeddings": False,
        "hidden_act": "silu", "sliding_window": None, "num_local_experts": 8, "num_experts_per_tok": 2,
    },
    "qwen2": {
        "num_key_value_heads": 32, "head_dim": None, "tie_word_embeddings": False, "hidden_act": "silu",
        "use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 28, "layer_types": None,
    },
    "qwen3": {
        "num_key_value_heads": 32, "head_dim": 128, "tie_word_embeddings": False, "hidden_act": "silu",
        "attention_bias": False, "use_sliding_window": False, "sliding_window": 4096,
        "max_window_layers": 28, "layer_types": None,
    },
    "qwen3_moe": {
        "intermediate_size": 6144, "num_key_value_heads": 4, "head_dim": None, "tie_word_embeddings": False,
        "hidden_act": "silu", "attention_bias": False, "use_sliding_window": False, "sliding_window": 4096,
        "decoder_sparse_step": 1, "moe_intermediate_size": 768, "num_experts_per_tok": 8,
        "num_experts": 128, "mlp_only_layers": None,
    },
    "gemma": {
        "num_key_value_heads": 16, "head_dim": 256, "tie_word_embeddings": True,
        "hidden_act": "gelu_pytorch_tanh", "attention_bias": False,
    },
    "gemma2": {
        "num_key_value_heads": 4, "head_dim": 256, "tie_word_embeddings": True,
        "hidden_activation": "gelu_pytorch_tanh", "attention_bias": False, "sliding_window": 4096,
        "layer_types": None, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
    },
    "gemma3_text": {
        "vocab_size": 262208, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
        "tie_word_embeddings": True, "hidden_activation": "gelu_pytorch_tanh", "attention_bias": False,
        "sliding_window": 4096, "sliding_window_pattern": 6, "layer_types": None,
        "final_logit_softcapping": None, "attn_logit_softcapping": None,
        "use_bidirectional_attention": False,
    },
    "phi3": {
        "num_key_value_heads": None, "head_dim": None, "tie_word_embeddings": False,
        "hidden_act": "silu", "sliding_window": None,
    },
    "olmo2": {
        "num_key_value_heads": None, "head_dim": None, "tie_word_embeddings": False,
        "hidden_act": "silu", "attention_bias": False,
    },
    "deepseek_v2": {
        "intermediate_size": 11008, "num_key_value_heads": None, "tie_word_embeddings": False,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "first_k_dense_replace": 0,
        "moe_layer_freq": 1, "kv_lora_rank": 512, "q_lora_rank": 1536, "n_routed_experts": 64,
        "n_shared_experts": 2, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "num_experts_per_tok": None, "moe_intermediate_size": 1407, "n_group": None, "topk_group": None,
    },
    "gpt2": {
        "n_positions": 1024, "n_inner": None, "activation_function": "gelu_new",
        "tie_word_embeddings": True, "add_cross_attention": False,
    },
    "gpt_neox": {
        "tie_word_embeddings": False, "hidden_act": "gelu", "attention_bias": True,
        "use_parallel_residual": True, "rotary_pct": 0.25,
    },
    "falcon": {
        "tie_word_embeddings": True, "activation": "gelu", "num_kv_heads": None,
        "new_decoder_architecture": False, "multi_query": True, "parallel_attn": True, "bias": False,
        "ffn_hidden_size": None, "num_ln_in_parallel_attn": None, "alibi": False,
    },
}

#: the defaults a config of unknown ``model_type`` gets (a Llama-shaped decoder).
_GENERIC_DEFAULTS = _DEFAULTS["llama"]

#: keys every standard decoder config carries; the generic fallback requires all of them.
_STANDARD_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")

#: falcon checkpoints saved before the in-library port (``RefinedWebModel`` = 7B layout,
#: ``RefinedWeb`` = 40B layout) used these key names.
_FALCON_ALIASES = {
    "hidden_size": ("n_embed",),
    "num_attention_heads": ("n_head",),
    "num_hidden_layers": ("n_layer",),
    "num_kv_heads": ("n_head_kv",),
}


class _Reader:
    """Reads typed values from one config dict, falling back to class defaults; errors name ``where``."""

    def __init__(self, config: dict, defaults: dict, where: str, aliases: dict | None = None):
        self.config = config
        self.defaults = defaults
        self.where = where
        self.aliases = aliases or {}

    def has(self, key: str) -> bool:
        return any(k in self.config for k in (key, *self.aliases.get(key, ())))

    def get(self, key: str, default=None):
        """The value for ``key`` (config, then class default), or ``default`` when neither has it."""
        return self.raw(key) if self.has(key) or key in self.defaults else default

    def raw(self, key: str):
        for k in (key, *self.aliases.get(key, ())):
            if k in self.config:
                return self.config[k]
        if key in self.defaults:
            return self.defaults[key]
        raise PlanError(self.where, f"missing key '{key}'")

    def int(self, key: str, *, minimum: int = 1) -> int:
        value = self.raw(key)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise PlanError(self.where, f"key '{key}' must be {need} (got {value!r})")
        return value

    def opt_int(self, key: str, *, minimum: int = 1) -> int | None:
        return None if self.raw(key) is None else self.int(key, minimum=minimum)

    def bool(self, key: str) -> bool:
        value = self.raw(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise PlanError(self.where, f"key '{key}' must be true or false (got {value!r})")
        return value

    def str(self, key: str) -> str:
        value = self.raw(key)
        if not isinstance(value, str):
            raise PlanError(self.where, f"key '{key}' must be a string (got {value!r})")
        return value

    def opt_float(self, key: str) -> float | None:
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise PlanError(self.where, f"key '{key}' must be a number (got {value!r})")
        return float(value)


# -- module builders ------------------------------------------------------------------------------


def _rms(name: str, size: int) -> Norm:
    return Norm(name, size, bias=False)


def _layernorm(name: str, size: int) -> Norm:
    return Norm(name, size, bias=True)


def _qkvo(h: int, heads: int, kv: int, hd: int, qkv_bias: bool, o_bias: bool) -> tuple[Linear, ...]:
    return (
        Linear("q_proj", h, heads * hd, qkv_bias),
        Linear("k_proj", h, kv * hd, qkv_bias),
        Linear("v_proj", h, kv * hd, qkv_bias),
        Linear("o_proj", heads * hd, h, o_bias),
    )


def _gated_mlp(h: int, inter: int, bias: bool) -> tuple[Linear, ...]:
    return (
        Linear("gate_proj", h, inter, bias),
        Linear("up_proj", h, inter, bias),
        Linear("down_proj", inter, h, bias),
    )


def _routed_experts(h: int, n: int, inter: int) -> tuple[Linear, ...]:
    """Router + experts as transformers 5.x stores them: bare parameters, not nn.Linear modules."""
    return (
        # PEFT 0.21's "all-linear" wraps these too (ParamWrapper on the router's and the experts'
        # parameters): r per expert, 2r on the fused gate_up
        Linear("gate", h, n),
        Linear("experts.gate_up_proj", h, 2 * inter, count=n, lora_rank_mult=2),
        Linear("experts.down_proj", inter, h, count=n),
    )


def _heads(r: _Reader, hidden: int) -> tuple[int, int, int]:
    """(num_heads, num_kv_heads, head_dim) as the Llama-style attention modules compute them."""
    heads = r.int("num_attention_heads")
    kv = r.opt_int("num_key_value_heads")
    kv = heads if kv is None else kv
    if heads % kv:
        raise PlanError(r.where, f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    hd = r.opt_int("head_dim") if r.get("head_dim") is not None else None
    if hd is None:
        if hidden % heads:
            raise PlanError(r.where, f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
        hd = hidden // heads
    return heads, kv, hd


def _layer_types(r: _Reader, n_layers: int, window: int | None, default_sliding) -> tuple[str, ...] | None:
    """Per-layer attention kinds when some layers use a sliding window; None when none do."""
    if window is None:
        return None
    given = r.get("layer_types")
    if given is not None:
        if not isinstance(given, list) or len(given) != n_layers:
            raise PlanError(r.where, f"key 'layer_types' must list {n_layers} layer kinds")
        types = tuple(str(t) for t in given)
    else:
        types = tuple("sliding_attention" if default_sliding(i) else "full_attention" for i in range(n_layers))
    return types if "sliding_attention" in types else None


def _sliding_quirks(window: int | None, types: tuple[str, ...] | None) -> list[tuple[str, object]]:
    if window is None or types is None:
        return []
    out: list[tuple[str, object]] = [("sliding_window", window)]
    if "full_attention" in types:
        out.append(("layer_types", types))
    return out


# -- families -------------------------------------------------------------------------------------


def _llama_like(family: str, r: _Reader) -> dict:
    """Llama-shaped decoders: llama, mistral, mixtral, qwen2, qwen3, qwen3_moe, gemma 1/2/3, phi3, olmo2."""
    h = r.int("hidden_size")
    n_layers = r.int("num_hidden_layers")
    vocab = r.int("vocab_size")
    heads, kv, hd = _heads(r, h)
    quirks: list[tuple[str, object]] = []

    # attention biases, per modeling_<family>.py
    if family == "qwen2":
        qkv_bias, o_bias = True, False  # hard-coded: Qwen2 ignores attention_bias
    elif family in ("mistral", "mixtral", "phi3"):
        qkv_bias = o_bias = False
    else:
        qkv_bias = o_bias = r.bool("attention_bias")
    mlp_bias = r.bool("mlp_bias") if family == "llama" else False

    act_key = "hidden_activation" if family in ("gemma2", "gemma3_text") else "hidden_act"
    act = r.str(act_key)
    if family == "gemma" and act == "gelu":
        act = "gelu_pytorch_tanh"  # GemmaConfig.__post_init__ rewrites the legacy value

    if family == "phi3":
        attn = (
            Linear("qkv_proj", h, heads * hd + 2 * kv * hd),
            Linear("o_proj", heads * hd, h),
        )
        quirks.append(("fused_qkv", True))
    else:
        attn = _qkvo(h, heads, kv, hd, qkv_bias, o_bias)

    attn_norms: tuple[Norm, ...] = ()
    if family in ("qwen3", "qwen3_moe", "gemma3_text"):
        attn_norms = (_rms("q_norm", hd), _rms("k_norm", hd))  # per head
        quirks.append(("qk_norm", True))
    elif family == "olmo2":
        attn_norms = (_rms("q_norm", heads * hd), _rms("k_norm", kv * hd))  # over the whole projection
        quirks.append(("qk_norm", True))

    if family in ("gemma2", "gemma3_text"):
        block_norms = tuple(
            _rms(n, h)
            for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")
        )
        quirks.append(("sandwich_norm", True))
    elif family == "olmo2":
        block_norms = (_rms("post_attention_layernorm", h), _rms("post_feedforward_layernorm", h))
        quirks.append(("post_norm", True))  # norms the sublayer outputs, no pre-norm
    else:
        block_norms = (_rms("input_layernorm", h), _rms("post_attention_layernorm", h))

    # MLP per layer
    inter = r.int("intermediate_size")
    if family == "mixtral":
        n_exp = r.int("num_local_experts") if r.has("num_local_experts") or not r.has("num_experts") else r.int("num_experts")
        top_k = r.int("num_experts_per_tok")
        moe = MoE(num_experts=n_exp, top_k=top_k, expert_intermediate=inter)
        mlps = [(_routed_experts(h, n_exp, inter), 0, moe)] * n_layers
        quirks.append(("experts_fused_3d", True))
    elif family == "qwen3_moe":
        n_exp = r.int("num_experts", minimum=0) if r.has("num_experts") or not r.has("num_local_experts") else r.int("num_local_experts", minimum=0)
        step = r.int("decoder_sparse_step")
        only = r.raw("mlp_only_layers") or []
        if not isinstance(only, list) or not all(isinstance(i, int) for i in only):
            raise PlanError(r.where, f"key 'mlp_only_layers' must be a list of layer indices (got {only!r})")
        dense = (_gated_mlp(h, inter, False), inter, None)
        sparse = dense
        if n_exp > 0:
            e_inter = r.int("moe_intermediate_size")
            moe = MoE(num_experts=n_exp, top_k=r.int("num_experts_per_tok"), expert_intermediate=e_inter)
            sparse = (_routed_experts(h, n_exp, e_inter), 0, moe)
        mlps = [sparse if (i not in only and (i + 1) % step == 0) else dense for i in range(n_layers)]
        if any(m[2] is not None for m in mlps):
            quirks.append(("experts_fused_3d", True))
    elif family == "phi3":
        mlps = [((Linear("gate_up_proj", h, 2 * inter), Linear("down_proj", inter, h)), inter, None)] * n_layers
        quirks.append(("fused_gate_up", True))
    else:
        mlps = [(_gated_mlp(h, inter, mlp_bias), inter, None)] * n_layers

    layers = tuple(
        Layer(linears=attn + lin, norms=attn_norms + block_norms, mlp_intermediate=width, moe=moe)
        for lin, width, moe in mlps
    )

    # attention pattern and logit knobs
    window = None
    types = None
    if family in ("mistral", "mixtral", "phi3"):
        window = r.opt_int("sliding_window")
        types = tuple("sliding_attention" for _ in range(n_layers)) if window is not None else None
    elif family in ("qwen2", "qwen3"):
        window = r.opt_int("sliding_window") if r.bool("use_sliding_window") else None
        if window is not None:
            mwl = r.int("max_window_layers", minimum=0)
            types = _layer_types(r, n_layers, window, lambda i: i >= mwl)
    elif family == "qwen3_moe":
        window = r.opt_int("sliding_window") if r.bool("use_sliding_window") else None
        types = tuple("sliding_attention" for _ in range(n_layers)) if window is not None else None
    elif family == "gemma2":
        window = r.opt_int("sliding_window")
        types = _layer_types(r, n_layers, window, lambda i: bool((i + 1) % 2))
    elif family == "gemma3_text":
        window = r.opt_int("sliding_window")
        if window is not None and r.bool("use_bidirectional_attention"):
            window = window // 2 + 1  # Gemma3TextConfig.__post_init__
        pattern = r.int("sliding_window_pattern")
        types = _layer_types(r, n_layers, window, lambda i: bool((i + 1) % pattern))
    quirks += _sliding_quirks(window, types)

    if family in ("gemma", "gemma2", "gemma3_text"):
        quirks.append(("embed_scale", h**0.5))  # embeddings are multiplied by sqrt(hidden_size)
    if family in ("gemma2", "gemma3_text"):
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            cap = r.opt_float(key)
            if cap is not None:
                quirks.append((key, cap))

    tie = r.bool("tie_word_embeddings")
    return dict(
        hidden_size=h, num_layers=n_layers, num_heads=heads, num_kv_heads=kv, head_dim=hd,
        vocab_size=vocab, intermediate_size=inter, tie_word_embeddings=tie, layers=layers,
        embed_params=vocab * h, final_norm=_rms("norm", h), hidden_act=act, norm_kind="rms",
        mlp_kind="gated", quirks=tuple(quirks),
    )


def _deepseek_v2(family: str, r: _Reader) -> dict:
    """DeepSeek-V2: multi-head latent attention (MLA) and MoE with shared experts."""
    h = r.int("hidden_size")
    n_layers = r.int("num_hidden_layers")
    vocab = r.int("vocab_size")
    heads = r.int("num_attention_heads")
    attn_bias = r.bool("attention_bias")
    mlp_bias = r.bool("mlp_bias")
    q_rank = r.opt_int("q_lora_rank")
    kv_rank = r.int("kv_lora_rank")
    nope = r.int("qk_nope_head_dim", minimum=0)
    rope = r.int("qk_rope_head_dim")
    v_hd = r.int("v_head_dim")
    qk_hd = nope + rope

    if q_rank is None:
        q_lin: tuple[Linear, ...] = (Linear("q_proj", h, heads * qk_hd),)
        q_norms: tuple[Norm, ...] = ()
    else:
        q_lin = (Linear("q_a_proj", h, q_rank, attn_bias), Linear("q_b_proj", q_rank, heads * qk_hd))
        q_norms = (_rms("q_a_layernorm", q_rank),)
    attn = q_lin + (
        Linear("kv_a_proj_with_mqa", h, kv_rank + rope, attn_bias),
        Linear("kv_b_proj", kv_rank, heads * (nope + v_hd)),
        Linear("o_proj", heads * v_hd, h, attn_bias),
    )
    attn_norms = q_norms + (_rms("kv_a_layernorm", kv_rank),)
    block_norms = (_rms("input_layernorm", h), _rms("post_attention_layernorm", h))

    inter = r.int("intermediate_size")
    first_dense = r.int("first_k_dense_replace", minimum=0)
    quirks: list[tuple[str, object]] = [
        ("mla", {
            "q_lora_rank": q_rank, "kv_lora_rank": kv_rank, "qk_nope_head_dim": nope,
            "qk_rope_head_dim": rope, "v_head_dim": v_hd,
            # transformers 5.24 caches the compressed latent, expanded per head only in attention
            "cache_dim_per_token": kv_rank + rope,
        }),
    ]
    layers = []
    for i in range(n_layers):
        if i < first_dense:
            layers.append(Layer(attn + _gated_mlp(h, inter, mlp_bias), attn_norms + block_norms, inter))
            continue
        n_exp = r.int("n_routed_experts") if r.has("n_routed_experts") or not r.has("num_experts") else r.int("num_experts")
        e_inter = r.int("moe_intermediate_size")
        n_shared = r.int("n_shared_experts", minimum=0)
        top_k = r.opt_int("num_experts_per_tok")
        if top_k is None:
            raise PlanError(r.where, "missing key 'num_experts_per_tok' (MoE layers need it)")
        # n_shared_experts 0 still builds the (zero-width) shared MLP, as transformers does
        shared = _gated_mlp(h, e_inter * n_shared, mlp_bias)
        moe = MoE(num_experts=n_exp, top_k=top_k, expert_intermediate=e_inter, shared_intermediate=e_inter * n_shared)
        layers.append(Layer(attn + _routed_experts(h, n_exp, e_inter) + shared, attn_norms + block_norms, 0, moe))
    if any(layer.moe is not None for layer in layers):
        quirks.append(("experts_fused_3d", True))
        quirks.append(("router_fp32", True))  # _keep_in_fp32_modules_strict = ["gate.weight"]
        if r.raw("moe_layer_freq") != 1:
            quirks.append(("moe_layer_freq_ignored", r.raw("moe_layer_freq")))
    return dict(
        hidden_size=h, num_layers=n_layers, num_heads=heads,
        # attention runs on per-head K/V expanded from the latent: K width heads * (nope + rope)
        num_kv_heads=heads, head_dim=qk_hd, v_head_dim=v_hd,
        vocab_size=vocab, intermediate_size=inter, tie_word_embeddings=r.bool("tie_word_embeddings"),
        layers=tuple(layers), embed_params=vocab * h, final_norm=_rms("norm", h),
        hidden_act=r.str("hidden_act"), norm_kind="rms", mlp_kind="gated", quirks=tuple(quirks),
    )


def _gpt2(family: str, r: _Reader) -> dict:
    """GPT-2: Conv1D projections with biases, LayerNorm, learned position embeddings."""
    if r.bool("add_cross_attention"):
        raise PlanError(r.where, "gpt2 with add_cross_attention is an encoder-decoder setup; refplan plans decoder-only models")
    h = r.int("n_embd")
    n_layers = r.int("n_layer")
    heads = r.int("n_head")
    vocab = r.int("vocab_size")
    positions = r.int("n_positions")
    if h % heads:
        raise PlanError(r.where, f"n_embd {h} is not a multiple of n_head {heads}")
    inner = r.opt_int("n_inner") or 4 * h
    linears = (
        Linear("c_attn", h, 3 * h, True),
        Linear("c_proj", h, h, True),
        Linear("c_fc", h, inner, True),
        Linear("c_proj", inner, h, True),
    )
    norms = (_layernorm("ln_1", h), _layernorm("ln_2", h))
    return dict(
        hidden_size=h, num_layers=n_layers, num_heads=heads, num_kv_heads=heads, head_dim=h // heads,
        vocab_size=vocab, intermediate_size=inner, tie_word_embeddings=r.bool("tie_word_embeddings"),
        layers=tuple(Layer(linears, norms, inner) for _ in range(n_layers)),
        embed_params=vocab * h + positions * h, final_norm=_layernorm("ln_f", h),
        hidden_act=r.str("activation_function"), norm_kind="layer", mlp_kind="plain",
        quirks=(("fused_qkv", True), ("conv1d", True), ("learned_positions", positions)),
    )


def _gpt_neox(family: str, r: _Reader) -> dict:
    """GPT-NeoX / Pythia: fused QKV, LayerNorm, biased MLP, partial rotary, parallel residual."""
    h = r.int("hidden_size")
    n_layers = r.int("num_hidden_layers")
    heads = r.int("num_attention_heads")
    vocab = r.int("vocab_size")
    inter = r.int("intermediate_size")
    if h % heads:
        raise PlanError(r.where, f"hidden_size {h} is not a multiple of num_attention_heads {heads}")
    bias = r.bool("attention_bias")
    linears = (
        Linear("query_key_value", h, 3 * h, bias),
        Linear("dense", h, h, bias),
        Linear("dense_h_to_4h", h, inter, True),
        Linear("dense_4h_to_h", inter, h, True),
    )
    norms = (_layernorm("input_layernorm", h), _layernorm("post_attention_layernorm", h))
    rope = r.get("rope_parameters")
    rotary_pct = r.opt_float("rotary_pct")
    if isinstance(rope, dict) and "partial_rotary_factor" in rope:
        rotary_pct = float(rope["partial_rotary_factor"])
    parallel = r.bool("use_parallel_residual")
    return dict(
        hidden_size=h, num_layers=n_layers, num_heads=heads, num_kv_heads=heads, head_dim=h // heads,
        vocab_size=vocab, intermediate_size=inter, tie_word_embeddings=r.bool("tie_word_embeddings"),
        layers=tuple(Layer(linears, norms, inter) for _ in range(n_layers)),
        embed_params=vocab * h, final_norm=_layernorm("final_layer_norm", h),
        hidden_act=r.str("hidden_act"), norm_kind="layer", mlp_kind="plain", parallel_residual=parallel,
        quirks=(("fused_qkv", True), ("rotary_pct", rotary_pct)),
    )


def _falcon(family: str, r: _Reader) -> dict:
    """Falcon: fused QKV (MHA, multi-query, or grouped in the new decoder), LayerNorm, parallel attention."""
    h = r.int("hidden_size")
    n_layers = r.int("num_hidden_layers")
    heads = r.int("num_attention_heads")
    vocab = r.int("vocab_size")
    if h % heads:
        raise PlanError(r.where, f"hidden_size {h} is not a multiple of num_attention_heads {heads}")
    hd = h // heads  # FalconConfig.head_dim is a property: a head_dim key is ignored
    new_arch = r.bool("new_decoder_architecture")
    multi_query = r.bool("multi_query")
    parallel = r.bool("parallel_attn")
    bias = r.bool("bias")
    cfg_kv = r.opt_int("num_kv_heads")
    cfg_kv = heads if cfg_kv is None else cfg_kv
    if new_arch:
        kv = cfg_kv
        if heads % kv:
            raise PlanError(r.where, f"num_attention_heads {heads} is not a multiple of num_kv_heads {kv}")
        qkv_out = (2 * kv + heads) * hd
    elif multi_query:
        kv, qkv_out = 1, h + 2 * hd
    else:
        kv, qkv_out = heads, 3 * h
    ffn = r.opt_int("ffn_hidden_size") or 4 * h
    linears = (
        Linear("query_key_value", h, qkv_out, bias),
        Linear("dense", h, h, bias),
        Linear("dense_h_to_4h", h, ffn, bias),
        Linear("dense_4h_to_h", ffn, h, bias),
    )
    n_ln = r.opt_int("num_ln_in_parallel_attn")
    if n_ln is None and new_arch:
        n_ln = 2
    if not parallel:
        norms = (_layernorm("post_attention_layernorm", h), _layernorm("input_layernorm", h))
    elif n_ln == 2:
        norms = (_layernorm("ln_attn", h), _layernorm("ln_mlp", h))
    else:
        norms = (_layernorm("input_layernorm", h),)
    quirks: list[tuple[str, object]] = [("fused_qkv", True)]
    if r.bool("alibi"):
        quirks.append(("alibi", True))
    return dict(
        hidden_size=h, num_layers=n_layers, num_heads=heads, num_kv_heads=kv, head_dim=hd,
        vocab_size=vocab, intermediate_size=ffn, tie_word_embeddings=r.bool("tie_word_embeddings"),
        layers=tuple(Layer(linears, norms, ffn) for _ in range(n_layers)),
        embed_params=vocab * h, final_norm=_layernorm("ln_f", h), hidden_act=r.str("activation"),
        norm_kind="layer", mlp_kind="plain", parallel_residual=parallel, quirks=tuple(quirks),
    )


_BUILDERS = {
    **{f: _llama_like for f in (
        "llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe",
        "gemma", "gemma2", "gemma3_text", "phi3", "olmo2",
    )},
    "deepseek_v2": _deepseek_v2,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "falcon": _falcon,
}

#: model_type values accepted by :func:`spec_from_config` (``gemma3`` is the multimodal wrapper).
SUPPORTED_FAMILIES = tuple(sorted((*_BUILDERS, "gemma3")))


def spec_from_config(config: dict, model_id: str, source: str) -> ModelSpec:
    """The :class:`ModelSpec` of the causal LM transformers 5.24 builds from ``config``.

    ``source`` says where the config came from (a path, ``hf-cache:...``, ``catalog: ...``) and is
    what errors name. A ``gemma3`` multimodal config yields its text decoder (``Gemma3ForCausalLM``
    from ``text_config``, missing keys filled from ``Gemma3TextConfig`` defaults; the vision tower
    is not counted). An unknown ``model_type`` whose config has the standard keys
    (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``,
    ``vocab_size``) is planned as a Llama-shaped decoder with ``generic_fallback=True``.
    """
    where = source or "config.json"
    if not isinstance(config, dict):
        raise PlanError(where, f"expected a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    text = config
    extra_quirks: list[tuple[str, object]] = []
    aliases: dict = {}

    if model_type == "gemma3":
        text = config.get("text_config")
        if text is None:
            text = {}
        if not isinstance(text, dict):
            raise PlanError(where, "key 'text_config' must be a JSON object")
        text = dict(text)
        if "tie_word_embeddings" not in text and "tie_word_embeddings" in config:
            text["tie_word_embeddings"] = config["tie_word_embeddings"]
        text.setdefault("model_type", "gemma3_text")
        family = "gemma3_text"
        vision = config.get("vision_config")
        extra_quirks.append(("multimodal", {
            "wrapper": "Gemma3ForConditionalGeneration",
            "vision_model_type": vision.get("model_type") if isinstance(vision, dict) else None,
            "counted": "text decoder only",
        }))
        where = f"{where} (text_config)"
    elif model_type in ("RefinedWebModel", "RefinedWeb"):
        family = "falcon"
        text = dict(config)
        # the in-library port maps RefinedWeb (40B layout) onto the new decoder architecture
        text.setdefault("new_decoder_architecture", model_type == "RefinedWeb")
    else:
        family = model_type

    builder = _BUILDERS.get(family)
    generic = False
    if family == "falcon":
        aliases = _FALCON_ALIASES
    if builder is None:
        missing = [k for k in _STANDARD_KEYS if k not in text]
        if missing:
            kind = f"model_type {model_type!r}" if model_type is not None else "a config without model_type"
            raise PlanError(where, f"unsupported {kind} (supported: {', '.join(SUPPORTED_FAMILIES)}); "
                            f"a generic decoder needs key '{missing[0]}'")
        builder, generic = _llama_like, True
        reader = _Reader(text, _GENERIC_DEFAULTS, where)
        fields = builder("llama", reader)
        family = str(model_type) if model_type is not None else "unknown"
    else:
        reader = _Reader(text, _DEFAULTS[family], where, aliases)
        fields = builder(family, reader)

    h, vocab = fields["hidden_size"], fields["vocab_size"]
    lm_head = None if fields["tie_word_embeddings"] else Linear("lm_head", h, vocab, lora_target=False)
    fields["quirks"] = tuple(fields["quirks"]) + tuple(extra_quirks)
    if ("experts_fused_3d", True) in fields["quirks"]:
        # measured with peft 0.21 (tests/test_families.py::test_lora_parameter_count_equals_peft):
        # on a model whose experts are fused 3-D parameters, get_peft_model(all-linear) wraps the
        # attention projections, the router and the experts, but leaves the plain MLP linears
        # (DeepSeek's dense layers and shared experts, Qwen3-MoE's mlp_only layers) unwrapped
        fields["layers"] = tuple(
            replace(layer, linears=tuple(replace(l, lora_target=False)
                                         if l.name in ("gate_proj", "up_proj", "down_proj") else l
                                         for l in layer.linears))
            for layer in fields["layers"])
    return ModelSpec(
        model_id=model_id, family=family, source=source, lm_head=lm_head,
        generic_fallback=generic, config=dict(text), **fields,
    )
