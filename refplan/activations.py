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

from refplan.model import Layer, ModelSpec
from refplan.spec import TrainSpec
from refplan.units import dtype_bytes

FP32 = 4
#: TRL 1.16 trainer/utils.py: ``_CHUNKED_LOGPROB_CHUNK_SIZE = 32768`` vocabulary columns per tile;
#: kernels/chunked_logprob.py: ``TOKEN_CHUNK_SIZE = 4096`` tokens per tile.
FUSED_VOCAB_CHUNK = 32768
FUSED_TOKEN_CHUNK = 4096
#: per-token fp32 statistics the chunked log-prob forward keeps (running_max, sum_exp, x_sum_exp,
#: sq_sum_exp, z_sum, max_before_target, target_logit), chunked_logprob.py ~340-346.
FUSED_STATS = 7


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


def act_mode(train: TrainSpec) -> ActMode:
    a = dtype_bytes(train.compute_dtype)
    w = dtype_bytes(train.dtype)
    return ActMode(a=a, weights_frozen=train.finetune.peft, w=w, autocast=a != FP32)


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
    if model.norm_kind == "layer":
        return width * m.w + 2 * FP32 * rows_per_token
    saved = width * FP32 + FP32 * rows_per_token
    if not m.weights_frozen:
        saved += width * (FP32 if model.family.startswith("gemma") else m.w)
    return saved


def _linear_inputs_saved(model: ModelSpec, layer: Layer, train: TrainSpec, m: ActMode,
                         groups: dict[str, int]) -> int:
    """Inputs kept for the weight gradients of the layer's linears, per token.

    ``groups`` maps each input tensor (by the names of the linears that consume it) to its width.
    Full fine-tune: one saved copy per distinct input. PEFT: the frozen base saves nothing, each
    wrapped linear's LoRA A saves its input -- the shared tensor when adapters and activations
    share a dtype, else an fp32 copy per wrapped linear (``_cast_input_dtype``, peft
    lora/layer.py) -- and LoRA B saves A's output (r fp32 per token)."""
    if not train.finetune.peft:
        total = 0
        for names, width in groups.items():
            if m.autocast and m.w != m.a and names in _fp32_input_groups(groups):
                # autocast casts the fp32 norm output once per consuming matmul
                total += len(names.split("|")) * width * m.a
            else:
                total += width * m.a
        return total
    wrapped = {l.name for l in model.lora_linears(_targets(train))}
    total = 0
    for names, width in groups.items():
        n = sum(1 for nm in names.split("|") if nm in wrapped)
        if n == 0:
            continue
        if not m.autocast:
            total += width * FP32 + n * train.lora_r * FP32
        else:
            # PEFT casts the input to the fp32 adapter dtype, autocast casts it back for lora_A:
            # each wrapped linear keeps its own compute-dtype copy, and B keeps A's output
            total += n * (width + train.lora_r) * m.a
    return total


def _fp32_input_groups(groups: dict[str, int]) -> set[str]:
    """Input groups fed by a norm output (the residual dtype), as opposed to matmul outputs."""
    return {names for names in groups if not any(nm in names.split("|") for nm in (
        "o_proj", "dense", "down_proj", "dense_4h_to_h", "c_proj"))}


def lora_merged_weight_bytes(model: ModelSpec, layer: Layer, train: TrainSpec) -> int:
    """PEFT's ParamWrapper (LoRA on bare parameters: MoE experts and router) adds ``B @ A`` to the
    weight in every forward (``baddbmm`` over experts) and the merged [E, out, in] weight is what
    the matmul keeps for backward: one weight-sized tensor per wrapped parameter, in the weight's
    dtype (measured: bench/layer_inventory.py on Mixtral; trace on Qwen3-30B-A3B)."""
    if not train.finetune.peft:
        return 0
    wrapped = {l.name for l in model.lora_linears(_targets(train))}
    w = dtype_bytes(train.dtype)
    return sum(l.count * l.in_features * l.out_features * w for l in layer.linears
               if l.name in wrapped and (l.count > 1 or (layer.moe is not None and l.name == "gate")))


def layer_weight_copies_bytes(model: ModelSpec, layer: Layer, train: TrainSpec) -> int:
    """Compute-dtype copies of the layer's linear weights that autocast makes from fp32 weights and
    the matmuls keep for backward (torch autocast's weight cache for leaves that require grad; a
    frozen base weight is cast per op and kept too, since the input gradient needs it). Zero
    unless the weights are fp32 and the forward is autocast to bf16/fp16."""
    m = act_mode(train)
    merged = lora_merged_weight_bytes(model, layer, train)
    if not m.autocast or m.w == m.a:
        return merged
    return merged + _autocast_copies(layer, m)


def _autocast_copies(layer: Layer, m: ActMode) -> int:
    # routed experts run through grouped_mm, which autocast does not cover: no copies for them
    return sum(l.in_features * l.out_features for l in layer.linears if l.count == 1) * m.a


def _targets(train: TrainSpec):
    return "all-linear" if train.lora_targets == "all-linear" else tuple(
        t.strip() for t in train.lora_targets.split(","))


def attention_masked(model: ModelSpec, train: TrainSpec, layer_idx: int | None = None) -> bool:
    """True when the model builds an explicit mask for this layer: padding in the batch, or a
    sliding window shorter than the sequence on a sliding-attention layer (transformers
    masking_utils; without a mask SDPA runs causal and, on recent torch, with native GQA)."""
    if train.padded:
        return True
    window = model.quirk("sliding_window")
    # masking_utils._ignore_causal_mask_sdpa skips the mask only when kv_length < window
    if window is None or window > train.seq:
        return False
    types = model.quirk("layer_types")
    if types is None or layer_idx is None:
        return True if types is None else "sliding_attention" in types
    return types[layer_idx] == "sliding_attention"


def _mask_kinds(model: ModelSpec, train: TrainSpec) -> int:
    """How many distinct [rows, 1, S, S] masks one forward builds (full and sliding)."""
    if train.padded:
        types = model.quirk("layer_types")
        window = model.quirk("sliding_window")
        if types and window is not None and window <= train.seq and "full_attention" in types:
            return 2
        return 1
    return 1 if attention_masked(model, train) else 0


def attention_impl(model: ModelSpec, train: TrainSpec) -> str:
    """Gemma 2 supports only eager attention in transformers 5.x (soft-capped scores); falcon with
    alibi runs its own math attention."""
    if model.family == "gemma2" or model.quirk("attn_logit_softcapping"):
        return "eager"
    if model.family == "falcon":
        return "falcon"
    return train.attn


def _attention_saved(model: ModelSpec, train: TrainSpec, m: ActMode, layer_idx: int | None = None) -> int:
    """What attention itself keeps, per token (projections' inputs excluded)."""
    q, kv, heads, s = model.q_dim, model.kv_dim, model.num_heads, train.seq
    impl = attention_impl(model, train)
    if impl in ("eager", "falcon"):
        # eager_attention_forward: matmul copies of q and of k, v expanded to all heads, the
        # softmax output (fp32 upcast, then cast back), soft-capped scores where capped
        total = 3 * q * m.a + heads * s * FP32
        if m.a != FP32:
            total += heads * s * m.a
        if model.quirk("attn_logit_softcapping"):
            total += heads * s * m.a
        return total + q * m.a  # output reshaped for o_proj (a copy)
    masked = attention_masked(model, train, layer_idx)
    # repeat_kv copies k and v when a mask is passed -- except for MQA (one KV head), where the
    # expand + reshape is a view
    expand = masked and 1 < model.num_kv_heads < model.num_heads
    k_saved = q if expand else kv
    if expand:
        v_saved = q
    elif model.quirk("fused_qkv"):
        v_saved = q + 2 * kv  # v is a view of the fused projection: its whole output stays alive
    else:
        v_saved = kv
    total = (q + k_saved + v_saved) * m.a  # rotated q and k, v
    total += q * m.a + heads * FP32  # SDPA output + logsumexp
    if model.quirk("fused_qkv"):
        # q sliced from a fused projection: the SDPA output comes back head-major, so
        # sdpa_attention_forward's ``transpose(1, 2).contiguous()`` is a copy (phi3, gpt_neox)
        total += q * m.a
    return total


def layer_saved_bytes_per_token(model: ModelSpec, layer: Layer, train: TrainSpec,
                                input_requires_grad: bool = True, layer_idx: int | None = None) -> int:
    """Bytes autograd keeps for one decoder layer, per token, without checkpointing.

    Derived from the installed transformers modeling code and checked with
    ``bench/layer_inventory.py`` (saved-tensor inventory under refplan's live-bytes tracker).
    """
    m = act_mode(train)
    h, q, kv = model.hidden_size, model.q_dim, model.kv_dim
    fam = model.family
    total = 0
    if fam == "gpt2":
        return _gpt2_layer(model, layer, train, m, input_requires_grad)
    post_norm = bool(model.quirk("post_norm"))
    sandwich = bool(model.quirk("sandwich_norm"))
    # ---- attention block
    if not post_norm:
        total += _norm_saved(model, h, m, input_requires_grad)
    attn_names = "|".join(l.name for l in layer.linears if l.name in
                          ("q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "q_a_proj",
                           "kv_a_proj_with_mqa"))
    groups = {attn_names: h}
    if model.quirk("qk_norm"):
        per_head = fam in ("qwen3", "qwen3_moe", "gemma3_text", "gemma3")
        total += _norm_saved(model, q, m, True, model.num_heads if per_head else 1)
        total += _norm_saved(model, kv, m, True, model.num_kv_heads if per_head else 1)
    total += _attention_saved(model, train, m, layer_idx)
    o_name = next((l.name for l in layer.linears if l.name in ("o_proj", "dense")), None)
    if o_name and train.finetune.peft:
        groups[o_name] = q  # LoRA A on o_proj saves the SDPA output (already counted when fp32)
        if m.a == FP32:
            groups[o_name] = 0
    # ---- between attention and MLP
    if sandwich:
        total += _norm_saved(model, h, m)  # post_attention_layernorm on o_proj's output
        total += _norm_saved(model, h, m)  # pre_feedforward_layernorm on the residual sum
    elif post_norm:
        total += _norm_saved(model, h, m)  # post_attention_layernorm on o_proj's output
    elif model.parallel_residual:
        if model.norm_kind == "layer" and len(layer.norms) >= 2:
            total += 2 * FP32  # second LayerNorm shares the layer input; its mean/rstd only
    else:
        total += _norm_saved(model, h, m)  # post_attention_layernorm on the residual sum
    # ---- MLP
    mlp_in = [l.name for l in layer.linears if l.name in ("gate_proj", "up_proj", "gate_up_proj",
                                                          "dense_h_to_4h", "c_fc")]
    if layer.moe is not None:
        total += _moe_saved(model, layer, train, m)
        groups["gate"] = h  # the router's input: the post-attention norm output
    elif model.mlp_kind == "gated":
        total += 3 * layer.mlp_intermediate * m.a  # gate (act input), act(gate), up
        groups["down_proj"] = layer.mlp_intermediate  # act*up, down_proj's input
    else:
        total += layer.mlp_intermediate * m.a  # fc_in output (GELU input)
        groups["dense_4h_to_h|c_proj"] = layer.mlp_intermediate  # GELU output
    if model.parallel_residual and len(layer.norms) < 2:
        groups[attn_names + "|" + "|".join(mlp_in)] = groups.pop(attn_names)  # one LN feeds both
    elif mlp_in:
        groups["|".join(mlp_in)] = h
    if sandwich:
        total += _norm_saved(model, h, m)  # post_feedforward_layernorm
    elif post_norm:
        total += _norm_saved(model, h, m)  # post_feedforward_layernorm
    total += _linear_inputs_saved(model, layer, train, m, groups)
    return total


def _gpt2_layer(model: ModelSpec, layer: Layer, train: TrainSpec, m: ActMode, irg: bool) -> int:
    """GPT-2 block (modeling_gpt2.py): LayerNorms, Conv1D c_attn whose q/k/v split keeps the
    fused output alive through k's view, and ``gelu_new`` written in Python (tanh approximation:
    four intermediates of the MLP width saved)."""
    h, i, heads = model.hidden_size, layer.mlp_intermediate, model.num_heads
    total = 2 * _norm_saved(model, h, m, irg)
    total += 3 * h * m.a  # fused c_attn output, kept alive by the q/k/v views SDPA saves
    total += h * m.a + heads * FP32  # SDPA output (o_proj input) + logsumexp
    total += 4 * i * m.a  # gelu_new intermediates
    groups = {"c_attn": h, "c_fc": h, "c_proj": i}
    return total + _linear_inputs_saved(model, layer, train, m, groups)


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
    if model.family == "gpt2":
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
        types = model.quirk("layer_types")
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
    if model.family in ("gpt2",) or model.quirk("alibi"):
        return 0
    rot = model.head_dim
    pct = model.quirk("rotary_pct")
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
        return [tokens * checkpoint_saved_bytes_per_token(model, train)] * model.num_layers
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


# ---------------------------------------------------------------- log-prob path

def fused_head_saved_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """TRL's fused head (DPO, KTO) saves for backward: the [N, h] hidden copy
    (``hidden_states[:, :-1].reshape(-1, h)``), the targets (int64) and log_z (fp32), with
    N = rows * (seq - 1) (all positions on CPU; completion positions only on Triton devices,
    which we bound by all positions)."""
    n = rows * (train.seq - 1)
    return n * (model.hidden_size * act_mode(train).a + 8 + FP32)


def fused_head_forward_transient_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """Peak extra bytes inside ChunkedLogProbFunction.forward: the 7 fp32 statistics, the
    ``mm_buf`` tile [min(N, 4096), 32768] in compute dtype, and, on CPU (torch fallback
    ``_forward_tile``), fp32 copies of one tile while it is folded (transform, z - max, exp)."""
    n = rows * (train.seq - 1)
    tok = min(n, FUSED_TOKEN_CHUNK)
    cols = min(model.vocab_size, FUSED_VOCAB_CHUNK)
    a = act_mode(train).a
    out = FUSED_STATS * n * FP32 + tok * FUSED_VOCAB_CHUNK * a
    fold_tiles = 3 if train.device == "cpu" else 0
    return out + fold_tiles * tok * cols * FP32


def fused_head_backward_transient_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """ChunkedLogProbFunction.backward: fp32 grad_hidden [N, h], fp32 grad_weight [V, h] when the
    head is trainable, the mm_buf tile, and on CPU the torch fallback ``_backward_tile``'s
    temporaries of one tile: y, z, log_p, p, grad, is_target.float(), (is_target - p) alive at
    once (7 fp32 tiles) plus the bool ``is_target`` tile."""
    n = rows * (train.seq - 1)
    tok = min(n, FUSED_TOKEN_CHUNK)
    cols = min(model.vocab_size, FUSED_VOCAB_CHUNK)
    a = act_mode(train).a
    out = n * model.hidden_size * FP32 + tok * FUSED_VOCAB_CHUNK * a
    if not train.finetune.peft:
        out += model.vocab_size * model.hidden_size * FP32
    if train.device == "cpu":
        # final logit soft-capping (Gemma 2/3) keeps tanh's output as one more tile
        tiles = 7 + (1 if model.quirk("final_logit_softcapping") else 0)
        out += tiles * tok * cols * FP32 + tok * cols  # fp32 tiles + 1 bool tile
    return out


def full_logits_saved_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """ORPO / CPO (orpo_trainer.py / cpo_trainer.py ``concatenated_forward``) keep for backward:
    the LM head's input [rows, S, h] (when the head is trainable), the full ``outputs.logits`` [rows, S, V] in compute dtype,
    ORPO's chosen NLL (cross-entropy's log-softmax output over [B, S-1, V], fp32), and, when the
    logits are not fp32, ``selective_log_softmax``'s per-row log-softmax outputs [rows, S-1, V]."""
    s, v, a = train.seq, model.vocab_size, act_mode(train).a
    if train.device == "cuda" and a != FP32:
        # CUDA autocast runs log_softmax / cross_entropy in fp32 on casts of the logits; by the
        # backward peak (see full_logits_backward_transient_bytes) those are freed -- measured on
        # an H200 (reports/gpu/diagnose.json): only the head's input (when trainable) remains
        return 0 if train.finetune.peft else rows * s * model.hidden_size * a
    saved = rows * s * v * a
    if not train.finetune.peft:
        saved += rows * s * model.hidden_size * a  # a frozen LM head (PEFT) needs no input for backward
    if model.quirk("final_logit_softcapping"):
        saved += rows * s * v * a  # Gemma's cap: tanh(logits / cap) is kept for backward
    if train.method.value == "orpo":
        saved += (rows // 2) * (s - 1) * v * FP32
    if a != FP32:
        saved += rows * (s - 1) * v * a
    return saved


def full_logits_transient_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """Forward: one [rows, S-1, V] fp32 shifted copy while the losses are formed."""
    return rows * (train.seq - 1) * model.vocab_size * FP32


def full_logits_backward_transient_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """Backward peak of the log-prob path: in ``selective_log_softmax``'s gather backward three
    [rows, S-1, V] fp32 tensors are alive at once -- the stacked logsumexp gradient, gather's
    ``new_zeros`` and its ``scatter_add`` result (measured: peak op aten.scatter_add)."""
    if train.device == "cuda" and act_mode(train).a != FP32:
        # CUDA + autocast (H200, reports/gpu/diagnose.json, ORPO LoRA peak at aten.add): the fp32
        # gradients of the [rows, S, V] logits from each consumer's ``logits[:, :-1]`` slice
        # (``slice_backward``) and their sum -- ORPO has two consumers (NLL and log-probs), so
        # three tensors; SimPO/CPO without the NLL term has one slice and its upstream gradient
        n = 3 if train.method.value == "orpo" else 2
        return n * rows * train.seq * model.vocab_size * FP32
    return 3 * rows * (train.seq - 1) * model.vocab_size * FP32


def reference_forward_transient_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """A no-grad forward keeps nothing, so its peak is the largest live set inside one layer
    (residual + MLP intermediates) plus the fused head's forward transient."""
    a = act_mode(train).a
    tokens = rows * train.seq
    width = max((l.mlp_intermediate or 0) for l in model.layers)
    moe = next((l.moe for l in model.layers if l.moe), None)
    if moe:
        width = max(width, moe.top_k * moe.expert_intermediate)
    layer_peak = tokens * (2 * model.hidden_size + 3 * width) * a
    n = rows * (train.seq - 1)
    head = n * model.hidden_size * a + fused_head_forward_transient_bytes(model, train, rows) + n * FP32
    return max(layer_peak, head)
