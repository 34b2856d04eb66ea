"""Activation and log-prob-path memory: what autograd saves for backward, and the transients.

Every figure is derived from the installed code path and checked against an inventory of the
tensors autograd really saves (``torch.autograd.graph.saved_tensors_hooks``; see
tests/test_activations.py and bench/validate). Units: bytes; "per token" means per row position
of the forward (rows x seq tokens).

Conventions used below, per token of one decoder layer:
  h = hidden_size, q = heads*head_dim, kv = kv_heads*head_dim, i = MLP width,
  a = activation bytes (compute dtype), f = 4 (fp32).
"""

from __future__ import annotations

from dataclasses import dataclass

from refplan.model import (AttentionKernel, Input, Layer, MlpStyle, ModelSpec, NormPlacement, NormStyle,
                           Positions, QKNorm, Role)
from refplan.settings import Quant
from refplan.spec import TrainSpec
from refplan.units import dtype_bytes

FP32 = 4
@dataclass(frozen=True)
class ActMode:
    """How activations are stored, derived once from the TrainSpec."""

    a: int  # bytes per element of matmul outputs and attention tensors (compute dtype)
    weights_frozen: bool  # PEFT: base weights and norms do not require grad
    #: bytes per element of the residual stream and norm outputs: the weights' dtype (fp32 under
    #: autocast from fp32 weights -- norms and residual adds are not autocast ops)
    w: int = 4
    #: the forward runs under autocast to a lower precision (the Trainer's bf16/fp16 = True):
    #: every matmul casts its fp32 inputs to its own copy, and weights not already in the compute
    #: dtype are cast (and, when they require grad, cached) per forward
    autocast: bool = False
    #: bytes per element of the trained LoRA adapters (``terms.adapter_dtype``): 4, or 2 for QLoRA's
    #: bf16 adapters under DPO/KTO
    adapter: int = FP32
    #: the frozen base linears are bitsandbytes 8-bit ones, which keep their input for the input
    #: gradient (``MatMul8bitFp`` / ``MatMul8bitLt``: ``ctx.A = A`` / ``ctx.tensors = (.., A)``); a
    #: 4-bit base keeps only its packed weight (``MatMul4Bit``: ``ctx.tensors = (None, B)``)
    base_keeps_input: bool = False


def act_mode(train: TrainSpec) -> ActMode:
    from refplan.terms import adapter_dtype  # terms imports this module's dependencies, not this module

    a = dtype_bytes(train.compute_dtype)
    # Not modelled: after prepare_model_for_kbit_training on a 16-bit load (and in ORPO/CPO's QLoRA with
    # bf16) the non-quantized weights are fp32, so the residual stream and every k-bit linear's output
    # (Linear4bit returns its input's dtype) stay fp32 under autocast; the activations below assume the
    # load dtype (measured: -13 % to -17 % on such CPU bursts; README, known gaps).
    w = dtype_bytes(train.dtype)
    return ActMode(a=a, weights_frozen=train.finetune.peft, w=w, autocast=a != FP32,
                   adapter=dtype_bytes(adapter_dtype(train)) if train.finetune.peft else FP32,
                   base_keeps_input=train.policy_quant is Quant.INT8)


def _norm_saved(model: ModelSpec, width: int, m: ActMode, input_requires_grad: bool = True,
                rows_per_token: int = 1) -> int:
    """Bytes one normalization saves per token (its output is counted by whoever consumes it).

    - RMSNorm, llama style (``LlamaRMSNorm``: ``x32 = x.to(f32); y = x32 * rsqrt(mean(x32^2) + eps);
      weight * y.to(dtype)``): x32 (the input itself when already fp32, an fp32 copy otherwise),
      rsqrt (fp32, one per normalized row), and ``y.to(dtype)`` for the weight's gradient when the
      weight is trainable.
    - RMSNorm, gemma style (``Gemma*RMSNorm``: ``y = norm(x.float()) * (1 + weight.float())``):
      x32, rsqrt, and y in fp32 when the weight is trainable.
    - LayerNorm (``native_layer_norm``): its input, mean and rstd (fp32 per row).
    ``rows_per_token`` > 1 for per-head q/k norms (Qwen3, Gemma3).
    """
    if not input_requires_grad:
        return 0
    style = model.structure.norm
    if style is NormStyle.LAYER:
        return width * m.w + 2 * FP32 * rows_per_token
    saved = width * FP32 + FP32 * rows_per_token
    if not m.weights_frozen:
        saved += width * (FP32 if style is NormStyle.RMS_GEMMA else m.w)
    return saved


#: inputs fed by a norm output (the residual dtype), as opposed to a matmul output
_NORM_FED = (Input.ATTN_IN, Input.MLP_IN, Input.ROUTER_IN)


def _input_groups(model: ModelSpec, layer: Layer, train: TrainSpec, m: ActMode) -> list[tuple]:
    """The tensors the layer's linears keep for their weight gradients, per token: ``(input, linears
    reading it, width, fed by a norm)``. One group per distinct input tensor: the attention input, the
    router's input, the MLP input (one shared norm output in a single-norm parallel block), the
    MLP's hidden activation, and -- with PEFT, where the base saves nothing -- the attention output
    that LoRA A on the output projection keeps (already counted by SDPA when fp32)."""
    by_input: dict[Input, list] = {}
    for lin in layer.linears:
        by_input.setdefault(lin.role.input, []).append(lin)
    widths = {Input.ATTN_IN: model.hidden_size, Input.MLP_IN: model.hidden_size,
              Input.ROUTER_IN: model.hidden_size, Input.MLP_HIDDEN: layer.mlp_intermediate,
              Input.ATTN_OUT: model.q_dim}
    if layer.moe is not None:
        by_input.pop(Input.MLP_HIDDEN, None)  # routed / shared experts keep their own (see _moe_saved)
    if not train.finetune.peft:
        by_input.pop(Input.ATTN_OUT, None)
    if model.structure.shared_block_norm and Input.MLP_IN in by_input:
        by_input[Input.ATTN_IN] = by_input.get(Input.ATTN_IN, []) + by_input.pop(Input.MLP_IN)
    return [(inp, tuple(lins), widths[inp], inp in _NORM_FED) for inp, lins in by_input.items() if inp in widths]


def _linear_inputs_saved(model: ModelSpec, layer: Layer, train: TrainSpec, m: ActMode,
                         input_requires_grad: bool = True) -> int:
    """Inputs kept for the weight gradients of the layer's linears, per token.

    Full fine-tune: one saved copy per distinct input -- under autocast from fp32 weights, a
    norm-fed input is cast once per consuming matmul. PEFT: the frozen base saves nothing (a
    bitsandbytes 8-bit base keeps its input: :attr:`ActMode.base_keeps_input`), each wrapped
    linear's LoRA A saves its input -- the shared tensor when adapters and activations share a
    dtype, else its own copy in the adapter dtype (``_cast_input_dtype``, peft lora/layer.py and
    lora/bnb.py: QLoRA's bf16 adapters on fp32 activations) -- and LoRA B saves A's output (r per
    token, adapter dtype)."""
    total = 0
    for inp, lins, width, norm_fed in _input_groups(model, layer, train, m):
        if not train.finetune.peft:
            per_matmul = m.autocast and m.w != m.a and norm_fed
            total += (len(lins) if per_matmul else 1) * width * m.a
            continue
        n = sum(1 for l in lins if model.wraps(l, train.lora_targets))
        # adapters in the activations' dtype read the input itself (no cast, under autocast or not)
        shared = m.adapter == m.a and (not m.autocast or m.w == m.a or not norm_fed)
        # the width of an input SDPA already keeps (o_proj's), counted there when LoRA A shares it
        own = 0 if (inp is Input.ATTN_OUT and (m.a == FP32 or (shared and m.autocast))) else width
        if m.base_keeps_input and not m.autocast and (input_requires_grad or inp is not Input.ATTN_IN):
            # kept by the 8-bit base whether or not LoRA wraps the linear -- when autograd records it:
            # the first layer's norm output does not require grad under a frozen embedding
            total += own * m.a
            own = 0
        if n == 0:
            continue
        if shared:
            total += own * m.a + n * train.lora_r * m.a
        elif not m.autocast:
            total += n * (width + train.lora_r) * m.adapter
        else:
            # PEFT casts the input to the fp32 adapter dtype, autocast casts it back for lora_A
            # (or autocast casts an fp32 norm output for bf16 adapters): each wrapped linear keeps
            # its own compute-dtype copy, and B keeps A's output
            total += n * (width + train.lora_r) * m.a
    return total


def kbit_ctx_inputs_bytes_per_token(model: ModelSpec, layer: Layer, train: TrainSpec) -> int:
    """Under gradient checkpointing, what a layer of 8-bit base linears still keeps per token besides its
    input: bitsandbytes stores each 8-bit matmul's input as a plain ``ctx`` attribute
    (``MatMul8bitFp.forward``: ``ctx.A = A``; CUDA's ``MatMul8bitLt``: ``ctx.tensors = (CAt, subA,
    A)``), not through ``save_for_backward``, so torch's non-reentrant checkpoint -- which drops what
    ``save_for_backward`` keeps, via saved-tensor hooks -- cannot drop it. One tensor per distinct
    input (the attention and MLP inputs, the attention output, the MLP hidden state), in the compute
    dtype; a post-norm block's attention input is the layer input the checkpoint keeps anyway.
    Measured: bench QLoRA 8-bit bursts with checkpointing (the inputs live at the peak, made by the
    norms' ``mul``, SDPA and the MLP's ``mul``)."""
    m = act_mode(train)
    if not m.base_keeps_input or m.autocast:
        return 0
    post = model.structure.placement is NormPlacement.POST
    return sum(width * m.a for inp, _, width, _ in _input_groups(model, layer, train, m)
               if not (post and inp is Input.ATTN_IN))


def lora_merged_weight_bytes(model: ModelSpec, layer: Layer, train: TrainSpec) -> int:
    """PEFT's ParamWrapper (LoRA on bare parameters: MoE experts and router) adds ``B @ A`` to the
    weight in every forward (``baddbmm`` over experts) and the merged [E, out, in] weight is what
    the matmul keeps for backward: one weight-sized tensor per wrapped parameter, in the weight's
    dtype (measured: bench/layer_inventory.py on Mixtral; trace on Qwen3-30B-A3B)."""
    if not train.finetune.peft:
        return 0
    w = dtype_bytes(train.dtype)
    return sum(l.count * l.in_features * l.out_features * w for l in layer.linears
               if model.wraps(l, train.lora_targets) and (l.count > 1 or (layer.moe is not None and l.role is Role.ROUTER)))


def layer_weight_copies_bytes(model: ModelSpec, layer: Layer, train: TrainSpec) -> int:
    """Compute-dtype copies of the layer's linear weights that autocast makes from fp32 weights and
    the matmuls keep for backward (torch autocast's weight cache for leaves that require grad; a
    frozen base weight is cast per op and kept too, since the input gradient needs it). Zero
    unless the weights are fp32 and the forward is autocast to bf16/fp16."""
    m = act_mode(train)
    merged = lora_merged_weight_bytes(model, layer, train)
    if not m.autocast or m.w == m.a or train.policy_quant is not Quant.NONE:
        return merged  # bitsandbytes' k-bit matmuls are custom ops that autocast does not cast
    return merged + _autocast_copies(layer, m)


def _autocast_copies(layer: Layer, m: ActMode) -> int:
    # routed experts run through grouped_mm, which autocast does not cover: no copies for them
    return sum(l.in_features * l.out_features for l in layer.linears if l.count == 1) * m.a


def attention_masked(model: ModelSpec, train: TrainSpec, layer_idx: int | None = None) -> bool:
    """True when the model builds an explicit mask for this layer: padding in the batch, or a
    sliding window shorter than the sequence on a sliding-attention layer (transformers
    masking_utils; without a mask SDPA runs causal and, on recent torch, with native GQA)."""
    if train.padded:
        return True
    window = model.structure.sliding_window
    # masking_utils._ignore_causal_mask_sdpa skips the mask only when kv_length < window
    if window is None or window > train.seq:
        return False
    types = model.structure.layer_types
    if types is None or layer_idx is None:
        return True if types is None else "sliding_attention" in types
    return types[layer_idx] == "sliding_attention"


def _mask_kinds(model: ModelSpec, train: TrainSpec) -> int:
    """How many distinct [rows, 1, S, S] masks one forward builds (full and sliding)."""
    if train.padded:
        types = model.structure.layer_types
        window = model.structure.sliding_window
        if types and window is not None and window <= train.seq and "full_attention" in types:
            return 2
        return 1
    return 1 if attention_masked(model, train) else 0


def attention_impl(model: ModelSpec, train: TrainSpec) -> str:
    """The attention code path that runs: Gemma 2 (soft-capped scores) supports only eager attention
    in transformers 5.x; Falcon computes its own; otherwise what ``--attn`` asks."""
    kernel = model.structure.attention
    if kernel is AttentionKernel.EAGER_ONLY or model.structure.attn_softcap:
        return "eager"
    if kernel is AttentionKernel.OWN_MATH:
        return "falcon"
    return train.attn.value


def _o_proj_input_kept(train: TrainSpec, m: ActMode) -> bool:
    """Whether what attention hands o_proj is itself kept for backward: by o_proj's weight gradient (full
    fine-tuning), by its LoRA A when the adapters share the activations' dtype, by an 8-bit base. Not
    with QLoRA's bf16 adapters on a 4-bit base and fp32 activations: LoRA A keeps its own bf16 cast
    (counted with the linears' inputs) and the 4-bit matmul keeps nothing."""
    return not (train.finetune.peft and not m.autocast and m.adapter != m.a and not m.base_keeps_input)


def _attention_saved(model: ModelSpec, layer: Layer, train: TrainSpec, m: ActMode,
                     layer_idx: int | None = None) -> int:
    """What attention itself keeps, per token (projections' inputs excluded)."""
    q, kv, heads, s = model.q_dim, model.kv_dim, model.num_heads, train.seq
    impl = attention_impl(model, train)
    o_in = q * m.a if _o_proj_input_kept(train, m) else 0
    if impl in ("eager", "falcon"):
        # eager_attention_forward: matmul copies of q and of k, v expanded to all heads, the
        # softmax output (fp32 upcast, then cast back), soft-capped scores where capped
        total = 3 * q * m.a + heads * s * FP32
        if m.a != FP32:
            total += heads * s * m.a
        if model.structure.attn_softcap:
            total += heads * s * m.a
        return total + o_in  # output reshaped for o_proj (a copy)
    fused = layer.first(Role.QKV) is not None
    if fused and model.structure.fused_view_qkv:
        # no rotation: q, k and v are views of the fused output, which stays alive whole (GPT-2);
        # + the SDPA output (o_proj's input) and its logsumexp
        return (q + 2 * kv) * m.a + q * m.a + heads * FP32
    masked = attention_masked(model, train, layer_idx)
    # repeat_kv copies k and v when a mask is passed -- except for MQA (one KV head), where the
    # expand + reshape is a view
    expand = masked and 1 < model.num_kv_heads < model.num_heads
    k_saved = q if expand else kv
    if expand:
        v_saved = q
    elif fused:
        v_saved = q + 2 * kv  # v is a view of the fused projection: its whole output stays alive
    else:
        v_saved = kv
    total = (q + k_saved + v_saved) * m.a  # rotated q and k, v
    total += q * m.a + heads * FP32  # SDPA output + logsumexp
    if fused:
        # q sliced from a fused projection: the SDPA output comes back head-major, so
        # sdpa_attention_forward's ``transpose(1, 2).contiguous()`` is a copy (phi3, gpt_neox)
        total += o_in
    return total


def _qk_norms_saved(model: ModelSpec, m: ActMode) -> int:
    qk = model.structure.qk_norm
    if qk is QKNorm.NONE:
        return 0
    per_head = qk is QKNorm.PER_HEAD
    return (_norm_saved(model, model.q_dim, m, True, model.num_heads if per_head else 1)
            + _norm_saved(model, model.kv_dim, m, True, model.num_kv_heads if per_head else 1))


def _block_norms_saved(model: ModelSpec, layer: Layer, m: ActMode, irg: bool) -> int:
    """The norms around the sublayers, by placement: pre (before attention and before the MLP),
    sandwich (pre and post of each), post (after each only); a parallel block's second LayerNorm
    reads the layer input, so it adds only its mean and rstd."""
    h, st = model.hidden_size, model.structure
    if st.placement is NormPlacement.SANDWICH:
        # input_layernorm, post_attention_layernorm (o_proj's output), pre_ and post_feedforward
        return _norm_saved(model, h, m, irg) + 3 * _norm_saved(model, h, m)
    if st.placement is NormPlacement.POST:
        return 2 * _norm_saved(model, h, m)
    total = _norm_saved(model, h, m, irg)
    if not st.parallel_residual:
        return total + _norm_saved(model, h, m)  # post_attention_layernorm on the residual sum
    if st.norm is NormStyle.LAYER and len(layer.norms) >= 2:
        total += 2 * FP32
    return total


def _mlp_saved(model: ModelSpec, layer: Layer, train: TrainSpec, m: ActMode) -> int:
    """MLP intermediates per token: gated (gate = the activation's input, act(gate), up), plain
    (fc_in's output, the activation's input), GPT-2's Python ``gelu_new`` (four intermediates)."""
    if layer.moe is not None:
        return _moe_saved(model, layer, train, m)
    style = model.structure.mlp
    per = {MlpStyle.GATED: 3, MlpStyle.PLAIN: 1, MlpStyle.PLAIN_PY_GELU: 4}[style]
    return per * layer.mlp_intermediate * m.a


def layer_saved_bytes_per_token(model: ModelSpec, layer: Layer, train: TrainSpec,
                                input_requires_grad: bool = True, layer_idx: int | None = None) -> int:
    """Bytes autograd keeps for one decoder layer, per token, without checkpointing.

    Derived from the installed transformers modeling code and checked with
    ``bench/layer_inventory.py`` (saved-tensor inventory under refplan's live-bytes tracker).
    """
    m = act_mode(train)
    total = _block_norms_saved(model, layer, m, input_requires_grad)
    total += _qk_norms_saved(model, m)
    total += _attention_saved(model, layer, train, m, layer_idx)
    total += _mlp_saved(model, layer, train, m)
    return total + _linear_inputs_saved(model, layer, train, m, input_requires_grad)


def _moe_saved(model: ModelSpec, layer: Layer, train: TrainSpec, m: ActMode) -> int:
    """Routed MoE as transformers 5.x runs it (``grouped_mm_experts_forward``, experts stored as
    3-D parameters), per token, k = experts per token:
      router softmax (E fp32), top-k indices (k int64) and normalized weights (k fp32 + a sum),
      the sort / floor_divide / index / scatter bookkeeping (int64 and int32, ~36 bytes per k),
      the token rows gathered per expert (k x h), grouped gate_up output (k x 2i), act(gate) and
      act*up (k x i each) and the down projection output (k x h) kept for the routing-weight
      multiply; shared experts (DeepSeek-V2) as a dense gated MLP.
    Checked against bench/layer_inventory.py (Mixtral, Qwen3-MoE)."""
    moe = layer.moe
    k, h, i = moe.top_k, model.hidden_size, moe.expert_intermediate
    per = moe.num_experts * FP32 + FP32 + k * (FP32 + 36)
    per += k * (2 * h + 4 * i) * m.a
    if moe.shared_intermediate:
        per += 4 * moe.shared_intermediate * m.a + h * m.a  # gated shared MLP + its input
    return per


def embedding_saved_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """Embedding backward keeps the token ids (int64) when the embedding is trainable; GPT-2's
    learned position embedding keeps its [1, S] position ids."""
    if train.finetune.peft:
        return 0
    out = rows * train.seq * 8
    if model.structure.learned_positions:
        out += train.seq * 8
    return out


def final_norm_saved_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    return rows * train.seq * _norm_saved(model, model.hidden_size, act_mode(train))


def mask_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """The explicit attention mask [rows, 1, S, S] built once per forward and saved by every
    layer's SDPA (activation dtype), when one is built (:func:`attention_masked`)."""
    impl = attention_impl(model, train)
    if impl == "eager":
        # eager attention always builds its masks (one per attention type: Gemma 2 has full and
        # sliding); they are saved only as inputs of checkpointed layers (non-reentrant
        # checkpoint keeps every tensor argument), else they die after the forward
        if not train.grad_ckpt:
            return 0
        types = model.structure.layer_types
        kinds = len(set(types)) if types else 1
        return kinds * rows * train.seq * train.seq * act_mode(train).a
    if impl != "sdpa":
        return 0
    return _mask_kinds(model, train) * rows * train.seq * train.seq * act_mode(train).a


def backbone_output_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """The backbone's last hidden state (final norm output), alive until the head consumes it."""
    return rows * train.seq * model.hidden_size * act_mode(train).a


def rope_table_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """cos and sin tables [1, S, rotary_dim] computed once per forward and saved by every
    layer's RoPE multiply (transformers ``*RotaryEmbedding``), in the activation dtype."""
    if model.structure.positions is not Positions.ROPE:
        return 0
    rot = model.head_dim
    pct = model.structure.rotary_fraction
    if pct:
        rot = int(model.head_dim * pct)
    return 2 * train.seq * rot * act_mode(train).a


def checkpoint_saved_bytes_per_token(model: ModelSpec, train: TrainSpec) -> int:
    """With gradient checkpointing (non-reentrant, torch.utils.checkpoint), a layer keeps only
    its input hidden state."""
    return model.hidden_size * act_mode(train).a


def per_layer_saved_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> list[int]:
    """Saved activations of each decoder layer for one forward of ``rows`` sequences (identical
    layers are computed once)."""
    tokens = rows * train.seq
    if train.grad_ckpt:
        return [tokens * (checkpoint_saved_bytes_per_token(model, train)
                          + kbit_ctx_inputs_bytes_per_token(model, layer, train)) for layer in model.layers]
    memo: dict = {}
    out = []
    for idx, layer in enumerate(model.layers):
        # with a frozen embedding (PEFT), the first layer's input does not require grad
        irg = not (train.finetune.peft and idx == 0)
        key = (model.layer_groups[idx], irg, attention_masked(model, train, idx))
        if key not in memo:
            memo[key] = (tokens * layer_saved_bytes_per_token(model, layer, train, irg, idx)
                         + layer_weight_copies_bytes(model, layer, train))
        out.append(memo[key])
    return out


def decoder_saved_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """All decoder layers' saved activations for one forward of ``rows`` sequences."""
    return sum(per_layer_saved_bytes(model, train, rows))


def recompute_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """Checkpointing recomputes one layer in backward: its full activations live at once."""
    if not train.grad_ckpt:
        return 0
    tokens = rows * train.seq
    memo: dict = {}
    for idx, layer in enumerate(model.layers):
        key = (model.layer_groups[idx], attention_masked(model, train, idx))
        if key not in memo:
            memo[key] = (tokens * layer_saved_bytes_per_token(model, layer, train, True, idx)
                         + layer_weight_copies_bytes(model, layer, train))
    return max(memo.values())


def autocast_weight_cache_bytes(model: ModelSpec, train: TrainSpec, requires_grad: bool,
                                ref_dtype: str | None = None) -> int:
    """All decoder linear weights' compute-dtype copies held by autocast's cache until the
    forward's autocast context exits: the cache keeps casts of leaves that require grad -- TRL
    leaves ``requires_grad=True`` on its reference, so a no-grad reference forward fills it too."""
    m = act_mode(train)
    wbytes = dtype_bytes(ref_dtype) if ref_dtype else m.w
    if not m.autocast or wbytes == m.a or not requires_grad:
        return 0
    return sum(l.in_features * l.out_features for layer in model.layers for l in layer.linears
               if l.count == 1) * m.a
