"""The architecture spec the planner reads: shapes only, no weights, no torch.

A :class:`ModelSpec` is built once from a config dict (``refplan.families``) and is frozen. Its
parameter count is the sum over its modules and equals ``sum(p.numel())`` of the transformers
model built from the same config (tests/test_families.py checks every catalog entry).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property


@dataclass(frozen=True)
class Linear:
    """One nn.Linear (or ``count`` identical ones, e.g. MoE experts), as PEFT sees it."""

    name: str  # module name as in transformers, e.g. "q_proj", "query_key_value", "gate_up_proj"
    in_features: int
    out_features: int
    bias: bool = False
    count: int = 1
    #: False for modules PEFT's "all-linear" does not wrap (MoE experts stored as 3-D parameters,
    #: routers) -- they still count as parameters.
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
    final_norm: Norm
    lm_head: Linear | None  # None when tied to the embeddings
    hidden_act: str = "silu"
    norm_kind: str = "rms"  # "rms" | "layer"
    mlp_kind: str = "gated"  # "gated" (gate/up/down) | "plain" (fc_in/fc_out)
    #: value-head dim where it differs from head_dim (MLA); query/key dim is head_dim
    v_head_dim: int | None = None
    parallel_residual: bool = False
    #: family knobs the activation model uses (e.g. {"qk_norm": True, "final_logit_softcapping": 30.0,
    #: "sandwich_norm": True, "fused_qkv": True, "fused_gate_up": True, "mla": {...}})
    quirks: tuple[tuple[str, object], ...] = ()
    generic_fallback: bool = False  # True when the family was unknown and a generic decoder was assumed
    config: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @cached_property
    def params(self) -> int:
        """Total parameters, counted once (tied embeddings are not double counted)."""
        head = self.lm_head.params if self.lm_head is not None else 0
        return self.embed_params + sum(l.params for l in self.layers) + self.final_norm.params + head

    @cached_property
    def layer_groups(self) -> tuple[int, ...]:
        """For each layer, the index of the first layer equal to it (identical layers share work)."""
        first: dict[Layer, int] = {}
        return tuple(first.setdefault(layer, i) for i, layer in enumerate(self.layers))

    @cached_property
    def _quirks(self) -> dict:
        return dict(self.quirks)

    def quirk(self, key: str, default=None):
        return self._quirks.get(key, default)

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    def lora_linears(self, targets: str | tuple[str, ...] = "all-linear") -> list[Linear]:
        """The linears PEFT wraps, over all layers (``"all-linear"`` excludes the LM head, as PEFT does)."""
        out = []
        for layer in self.layers:
            for lin in layer.linears:
                if not lin.lora_target:
                    continue
                if targets == "all-linear" or lin.name in targets:
                    out.append(lin)
        return out
