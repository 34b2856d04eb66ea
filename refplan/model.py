"""The architecture spec the planner reads: typed shapes and structure, no weights, no torch.

A :class:`ModelSpec` is built once from a config dict (``refplan.families``) and is frozen. Each
linear carries a :class:`Role` (what it computes and which tensor feeds it); the decoder's structure
is named fields (:class:`Structure`: norm style and placement, q/k norms, fused projections,
positions, attention kernel, MLP style, sliding windows, soft-capping), never a family name the
memory terms would test. Its parameter count is the sum over its modules and equals
``sum(p.numel())`` of the transformers model built from the same config (tests check every
catalog entry).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property


class Input(str, enum.Enum):
    """The tensor a linear reads, as the activation model groups them (one saved copy per tensor)."""

    ATTN_IN = "attn-in"  # the pre-attention norm output
    ATTN_OUT = "attn-out"  # the attention output (o_proj's input)
    MLP_IN = "mlp-in"  # the pre-MLP norm output
    ROUTER_IN = "router-in"  # the MoE router's input (the same norm output, kept by the router)
    MLP_HIDDEN = "mlp-hidden"  # act(gate) * up, or act(fc_in): the down projection's input
    Q_LATENT = "q-latent"  # MLA: q_a_layernorm's output, q_b_proj's input (q_lora_rank wide)
    KV_LATENT = "kv-latent"  # MLA: kv_a_layernorm's output, kv_b_proj's input (kv_lora_rank wide)
    SHARED_HIDDEN = "shared-hidden"  # a shared expert's act(gate) * up: its down projection's input
    INTERNAL = "internal"  # inside a block the activation model accounts for itself (MLA up-projections, experts)


class Role(str, enum.Enum):
    """What one linear computes. ``input`` says which tensor it reads."""

    Q = "q"
    K = "k"
    V = "v"
    QKV = "qkv"  # fused q, k and v
    O = "o"
    Q_A = "q-a"  # MLA: query down-projection
    Q_B = "q-b"
    KV_A = "kv-a"  # MLA: compressed KV (+ rope key)
    KV_B = "kv-b"
    MLP_GATE = "mlp-gate"
    MLP_UP = "mlp-up"
    MLP_GATE_UP = "mlp-gate-up"  # fused gate and up
    MLP_IN = "mlp-in"  # plain MLP first projection
    MLP_DOWN = "mlp-down"  # down / second projection
    ROUTER = "router"
    EXPERTS_GATE_UP = "experts-gate-up"
    EXPERTS_DOWN = "experts-down"
    SHARED_GATE = "shared-gate"  # shared experts (DeepSeek) as a dense gated MLP
    SHARED_UP = "shared-up"
    SHARED_DOWN = "shared-down"
    #: per-token scalar gate of a shared expert, Linear(hidden, 1) -> sigmoid (Qwen2-MoE ``shared_expert_gate``)
    SHARED_EXPERT_GATE = "shared-expert-gate"
    #: between the token-embedding width and the hidden size, outside the layers (OPT-350m's
    #: ``project_in`` / ``project_out``)
    PROJECT_IN = "project-in"
    PROJECT_OUT = "project-out"
    LM_HEAD = "lm-head"

    @property
    def input(self) -> Input:
        return _ROLE_INPUT.get(self, Input.INTERNAL)

    @property
    def dense_mlp(self) -> bool:
        """A plain ``nn.Linear`` of a dense (or shared-expert) MLP."""
        return self in (Role.MLP_GATE, Role.MLP_UP, Role.MLP_GATE_UP, Role.MLP_IN, Role.MLP_DOWN,
                        Role.SHARED_GATE, Role.SHARED_UP, Role.SHARED_DOWN, Role.SHARED_EXPERT_GATE)


_ROLE_INPUT = {
    Role.Q: Input.ATTN_IN, Role.K: Input.ATTN_IN, Role.V: Input.ATTN_IN, Role.QKV: Input.ATTN_IN,
    Role.Q_A: Input.ATTN_IN, Role.KV_A: Input.ATTN_IN, Role.O: Input.ATTN_OUT,
    Role.Q_B: Input.Q_LATENT, Role.KV_B: Input.KV_LATENT,
    Role.MLP_GATE: Input.MLP_IN, Role.MLP_UP: Input.MLP_IN, Role.MLP_GATE_UP: Input.MLP_IN,
    Role.MLP_IN: Input.MLP_IN, Role.SHARED_GATE: Input.MLP_IN, Role.SHARED_UP: Input.MLP_IN,
    Role.SHARED_EXPERT_GATE: Input.MLP_IN, Role.ROUTER: Input.ROUTER_IN, Role.MLP_DOWN: Input.MLP_HIDDEN,
    Role.SHARED_DOWN: Input.SHARED_HIDDEN,
}


@dataclass(frozen=True)
class Linear:
    """One nn.Linear (or ``count`` identical ones, e.g. MoE experts), as PEFT sees it."""

    name: str  # module name as in transformers, e.g. "q_proj", "query_key_value", "c_proj"
    role: Role
    in_features: int
    out_features: int
    bias: bool = False
    count: int = 1
    #: False for modules PEFT's "all-linear" does not wrap -- they still count as parameters.
    lora_target: bool = True
    #: LoRA rank multiplier PEFT uses for this module (2 on fused 3-D gate_up experts, whose A and
    #: B carry 2r per expert: peft ParamWrapper on transformers 5.x MoE)
    lora_rank_mult: int = 1

    @property
    def params(self) -> int:
        return self.count * (self.in_features * self.out_features + (self.out_features if self.bias else 0))


@dataclass(frozen=True)
class Norm:
    name: str
    size: int
    bias: bool = False  # LayerNorm has a bias, RMSNorm does not

    @property
    def params(self) -> int:
        return self.size * (2 if self.bias else 1)


@dataclass(frozen=True)
class MoE:
    """Routed experts of one layer (Mixtral, Qwen3-MoE, DeepSeek-V2)."""

    num_experts: int
    top_k: int
    expert_intermediate: int
    shared_intermediate: int = 0  # total width of shared experts (0: none)
    #: the shared experts' output is scaled by a per-token sigmoid gate before it joins the routed
    #: output (Qwen2-MoE: ``sigmoid(shared_expert_gate(x)) * shared_expert(x)``)
    shared_gated: bool = False
    #: the router renormalizes its top-k weights (``/= sum``: the divide keeps the k weights and the
    #: sum): Mixtral always, Qwen2/3-MoE under ``norm_topk_prob``, DeepSeek-V2 never (it only scales)
    normalized: bool = True


@dataclass(frozen=True)
class Layer:
    linears: tuple[Linear, ...]
    norms: tuple[Norm, ...]
    #: dense MLP width (0 for a MoE layer without a dense MLP)
    mlp_intermediate: int
    moe: MoE | None = None
    extra_params: int = 0  # parameters that are neither Linear nor Norm (e.g. an expert-bias vector)

    @cached_property
    def params(self) -> int:
        return sum(l.params for l in self.linears) + sum(n.params for n in self.norms) + self.extra_params

    @cached_property
    def tensor_count(self) -> int:
        """Parameter tensors of the layer (a weight, and a bias where there is one)."""
        return (sum(2 if l.bias else 1 for l in self.linears) + sum(2 if n.bias else 1 for n in self.norms)
                + (1 if self.extra_params else 0))

    def first(self, *roles: Role) -> Linear | None:
        return next((l for l in self.linears if l.role in roles), None)


# -- structure -------------------------------------------------------------------------------------


class NormStyle(str, enum.Enum):
    #: ``LlamaRMSNorm``: ``weight * (x32 * rsqrt(mean(x32^2) + eps)).to(dtype)``
    RMS = "rms"
    #: ``Gemma*RMSNorm``: ``norm(x.float()) * (1 + weight.float())`` -- the output is fp32 until cast
    RMS_GEMMA = "rms-gemma"
    #: ``Olmo2RMSNorm``: ``(weight * (x32 * rsqrt(mean(x32^2) + eps))).to(dtype)`` -- the weight
    #: multiplies the fp32 normalized input, so the multiply keeps that fp32 y for the weight's gradient
    RMS_FP32_PRODUCT = "rms-fp32-product"
    #: ``nn.LayerNorm`` (``native_layer_norm``): input, mean and rstd saved
    LAYER = "layer"
    #: a LayerNorm written in Python in fp32, weight only (``CohereLayerNorm``: ``x32 - mean``,
    #: ``rsqrt(var + eps)``, ``weight.float() * y``): the centred input twice (variance and
    #: normalization each compute it), rsqrt, and y in fp32 when the weight is trainable
    LAYER_FP32_PY = "layer-fp32-py"


class NormPlacement(str, enum.Enum):
    PRE = "pre"  # norm before each sublayer (Llama)
    SANDWICH = "sandwich"  # norms before and after each sublayer (Gemma 2/3)
    POST = "post"  # norms after each sublayer only (OLMo 2)


class QKNorm(str, enum.Enum):
    NONE = "none"
    PER_HEAD = "per-head"  # over head_dim, per head (Qwen3, Gemma 3)
    FULL_WIDTH = "full-width"  # over the whole projection (OLMo 2)


class Positions(str, enum.Enum):
    ROPE = "rope"  # rotary tables [S, rotary_dim] saved by every layer; q and k rotated copies
    LEARNED = "learned"  # learned absolute position embeddings (GPT-2): q and k are views
    ALIBI = "alibi"  # linear biases in the attention scores, no rotary tables


class AttentionKernel(str, enum.Enum):
    AS_CONFIGURED = "as-configured"  # ``attn_implementation`` as the user asks (sdpa, eager, flash)
    EAGER_ONLY = "eager-only"  # transformers supports eager only (Gemma 2's soft-capped scores)
    #: the model calls attention itself (Falcon): its own softmax math under ``eager``, a direct
    #: ``F.scaled_dot_product_attention`` call -- no repeat_kv, no output copy -- under ``sdpa``
    OWN_MATH = "own-math"


class KVToAttention(str, enum.Enum):
    """How K and V reach the attention kernel."""

    #: ``num_kv_heads`` heads; transformers' attention interface repeats them (repeat_kv) or runs GQA
    GROUPED = "grouped"
    #: materialized per query head by the model before attention (Falcon's new decoder architecture:
    #: ``broadcast_to`` + ``flatten``): K and V each as wide as Q
    EXPANDED = "expanded"
    #: one K/V head handed to SDPA as is, broadcast over the query heads: torch runs its math kernel
    #: (Falcon ``multi_query``), which keeps the attention probabilities like eager attention
    BROADCAST = "broadcast"


class MlpStyle(str, enum.Enum):
    GATED = "gated"  # act(gate) * up -> down: gate, act(gate) and up saved (3 x width)
    PLAIN = "plain"  # act(fc_in) -> fc_out: fc_in's output saved (1 x width)
    #: GPT-2's ``gelu_new`` written in Python (tanh approximation): four intermediates of the width
    PLAIN_PY_GELU = "plain-py-gelu"
    #: act(fc_in) -> fc_out with an activation that keeps its *output* (ReLU: ``threshold_backward``
    #: reads the result) -- the very tensor fc_out keeps as its input: nothing beyond it
    PLAIN_RELU = "plain-relu"


@dataclass(frozen=True)
class Structure:
    """What the memory terms need to know about a decoder beyond its shapes."""

    norm: NormStyle = NormStyle.RMS
    placement: NormPlacement = NormPlacement.PRE
    qk_norm: QKNorm = QKNorm.NONE
    mlp: MlpStyle = MlpStyle.GATED
    positions: Positions = Positions.ROPE
    #: fraction of head_dim that is rotated (GPT-NeoX ``rotary_pct``); None: all of it
    rotary_fraction: float | None = None
    #: layers that apply no rotary embedding (SmolLM3's NoPE layers): q and k are views of their
    #: projections there; the rotary tables are kept only if some layer rotates
    nope_layers: tuple[int, ...] = ()
    #: q and k are rebuilt by ``torch.cat((rotated, passed_through), dim=-1)`` (Phi, StableLM,
    #: GPT-NeoX), whatever the fraction: q reaches attention head-major and contiguous
    rotary_concat: bool = False
    #: the rotary cos / sin tables stay fp32 whatever the activations' dtype (``Olmo2RotaryEmbedding``
    #: returns ``emb.cos()`` without the ``.to(dtype=x.dtype)`` of the other families, and
    #: ``apply_rotary_pos_emb`` casts q and k back after the fp32 multiply)
    rope_tables_fp32: bool = False
    #: learned absolute positions (GPT-2 ``n_positions``): one more embedding tensor
    learned_positions: int = 0
    #: position ids computed per row from the attention mask (OPT: ``cumsum(mask) - 1``), so the
    #: position embedding keeps [rows, S] ids rather than [1, S]
    positions_per_row: bool = False
    #: [hidden]-wide ``F.dropout`` calls per layer whose p comes from the config (OPT ``dropout``):
    #: TRL's ``disable_dropout`` zeroes ``nn.Dropout`` modules only, so these stay on in training
    functional_dropouts: int = 0
    attention: AttentionKernel = AttentionKernel.AS_CONFIGURED
    kv_to_attention: KVToAttention = KVToAttention.GROUPED
    #: the model always materializes its [rows, 1, S, S] attention mask, even where SDPA could run
    #: causal without one (Falcon: ``create_causal_mask(..., allow_is_causal_skip=False)``)
    mask_always: bool = False
    parallel_residual: bool = False
    #: linears add their bias in an op of their own after the matmul (``FalconLinear.forward``:
    #: ``input @ self.weight.T + self.bias``): the add is no autocast op, so under autocast from fp32
    #: weights a biased linear's output is the bf16 product promoted to fp32 (:func:`linear_out_bytes`)
    bias_after_matmul: bool = False
    #: attention and MLP read one shared norm output in a parallel block (one LayerNorm per layer)
    shared_block_norm: bool = False
    embed_scale: float | None = None  # embeddings multiplied by sqrt(hidden_size) (Gemma)
    attn_softcap: float | None = None
    final_softcap: float | None = None
    sliding_window: int | None = None
    #: per-layer attention kinds when some layers slide and some do not (None: all alike)
    layer_types: tuple[str, ...] | None = None
    experts_fused_3d: bool = False  # MoE experts stored as 3-D parameters (transformers 5.x)
    router_fp32: bool = False
    #: MLA geometry (DeepSeek-V2), as a sorted tuple of (key, value)
    mla: tuple[tuple[str, object], ...] | None = None
    #: tensors of the MLP width alive at the peak of a plain MLP's activation backward: the incoming
    #: gradient and the one returned (2); BLOOM's ``GeLUFunction`` runs ``bloom_gelu_back`` in Python,
    #: whose expression holds five intermediates of the width beside the incoming gradient (6)
    act_backward_live: int = 2
    #: anything recorded for the reader but unused by the terms (multimodal wrapper, ignored keys)
    notes: tuple[tuple[str, object], ...] = ()

    @property
    def fused_view_qkv(self) -> bool:
        """q, k and v are views of one fused projection output and no rotation copies them, so the
        whole output stays alive (GPT-2)."""
        return self.positions is not Positions.ROPE


@dataclass(frozen=True)
class ModelSpec:
    """Decoder-only causal LM shape.

    Attention fields describe the *query* side: ``num_heads * head_dim`` may differ from
    ``hidden_size`` (Qwen3-MoE, Gemma). ``kv_dim`` is the width of K (and V) projections.
    """

    model_id: str
    family: str  # transformers model_type of the text decoder ("llama", "gemma3_text", ...)
    source: str  # where the config came from: a path, "hf-cache:<path>", "hub", "catalog:<provenance>"
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int
    tie_word_embeddings: bool
    layers: tuple[Layer, ...]
    embed_params: int  # token embeddings (+ learned position embeddings for gpt2)
    final_norm: Norm | None  # None when the model has none (post-norm OPT)
    lm_head: Linear | None  # None when tied to the embeddings
    structure: Structure = Structure()
    #: a norm applied to the embeddings before the first layer (BLOOM ``word_embeddings_layernorm``)
    embed_norm: Norm | None = None
    #: the LM head has a bias (Phi: ``nn.Linear(hidden, vocab, bias=True)``); with tied embeddings it
    #: stays a parameter of its own (``lm_head``, when present, carries it)
    head_bias: bool = False
    #: width of the token embeddings and of the LM head's input when it differs from hidden_size
    #: (OPT ``word_embed_proj_dim``); the decoder reaches it through ``outer_linears``
    embed_dim: int | None = None
    #: linears outside the decoder layers (OPT's ``project_in`` [embed_dim -> hidden] and
    #: ``project_out`` [hidden -> embed_dim]): parameters, PEFT targets, quantized like the layers'
    outer_linears: tuple[Linear, ...] = ()
    hidden_act: str = "silu"
    #: value-head dim where it differs from head_dim (MLA); query/key dim is head_dim
    v_head_dim: int | None = None
    #: no formula family describes this model: the spec is read off the model transformers builds
    #: (:mod:`refplan.families._traced`) and only the trace engine estimates it
    trace_only: bool = False
    #: bytes of buffers every copy of the model holds beyond its parameters, whatever the dtype
    #: (GPT-BigCode's [n_positions, n_positions] boolean causal mask)
    buffer_bytes: int = 0
    config: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @cached_property
    def params(self) -> int:
        """Total parameters, counted once (tied embeddings are not double counted)."""
        head = self.lm_head.params if self.lm_head is not None else (self.vocab_size if self.head_bias else 0)
        embed_norm = self.embed_norm.params if self.embed_norm is not None else 0
        final = self.final_norm.params if self.final_norm is not None else 0
        outer = sum(l.params for l in self.outer_linears)
        return self.embed_params + embed_norm + outer + sum(l.params for l in self.layers) + final + head

    @property
    def token_dim(self) -> int:
        """Width of the token embeddings and of the LM head's input."""
        return self.embed_dim or self.hidden_size

    @property
    def all_linears(self) -> tuple[Linear, ...]:
        """Every linear but the LM head: the decoder layers' and the outer ones."""
        return tuple(l for layer in self.layers for l in layer.linears) + self.outer_linears

    @cached_property
    def layer_groups(self) -> tuple[int, ...]:
        """For each layer, the index of the first layer equal to it (identical layers share work)."""
        first: dict[Layer, int] = {}
        return tuple(first.setdefault(layer, i) for i, layer in enumerate(self.layers))

    @cached_property
    def linear_names(self) -> tuple[str, ...]:
        """Distinct module names of the decoder's linears, as ``--lora-targets`` may name them."""
        names: dict[str, None] = {}
        for lin in self.all_linears:
            names.setdefault(lin.name.rsplit(".", 1)[-1], None)
            names.setdefault(lin.name, None)
        if self.lm_head is not None:
            names.setdefault(self.lm_head.name, None)
        return tuple(names)

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def o_dim(self) -> int:
        """Width of attention's output (o_proj's input): heads x the value head dim (MLA's own)."""
        return self.num_heads * (self.v_head_dim or self.head_dim)

    @staticmethod
    def wraps(lin: Linear, targets: tuple[str, ...]) -> bool:
        """True when PEFT wraps ``lin`` for these targets (``all-linear`` excludes the LM head)."""
        return lin.lora_target and (targets == ("all-linear",) or lin.name in targets)

    def lora_linears(self, targets: tuple[str, ...] = ("all-linear",)) -> list[Linear]:
        """The linears PEFT wraps, over all layers (and the outer linears)."""
        return [lin for lin in self.all_linears if self.wraps(lin, targets)]
