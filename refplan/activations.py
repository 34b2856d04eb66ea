"""Activation and log-prob-path memory: what autograd saves for backward, and the transients.

Every figure is derived from the installed code path and checked against an inventory of the
tensors autograd really saves (``torch.autograd.graph.saved_tensors_hooks``; see
tests/ and bench/layer_inventory.py). Units: bytes; "per token" means per row position
of the forward (rows x seq tokens).

Conventions used below, per token of one decoder layer:
  h = hidden_size, q = heads*head_dim, kv = kv_heads*head_dim, i = MLP width,
  a = activation bytes (compute dtype), f = 4 (fp32).
"""

from __future__ import annotations

from refplan.act_dtypes import FP32, ActMode, act_mode, linear_out_bytes  # noqa: F401  (re-exported)
from refplan.attention import (  # noqa: F401  (re-exported)
    _attention_saved,
    _mask_kinds,
    _o_proj_input_kept,
    _own_sdpa,
    attention_impl,
    attention_masked,
)
from refplan.methods import Finetune
from refplan.mla import mla_norms_saved, router_input_bytes, router_weight_bytes, router_weight_cast_bytes
from refplan.model import Input, Layer, Linear, MlpStyle, ModelSpec, NormPlacement, NormStyle, QKNorm, Role
from refplan.settings import Quant
from refplan.spec import TrainSpec
from refplan.terms import adapter_dtype
from refplan.units import dtype_bytes


def _norm_saved(model: ModelSpec, width: int, m: ActMode, input_requires_grad: bool = True,
                rows_per_token: int = 1, input_bytes: int | None = None) -> int:
    """Bytes one normalization saves per token (its output is counted by whoever consumes it).

    - RMSNorm, llama style (``LlamaRMSNorm``: ``x32 = x.to(f32); y = x32 * rsqrt(mean(x32^2) + eps);
      weight * y.to(dtype)``): x32 (the input itself when already fp32, an fp32 copy otherwise),
      rsqrt (fp32, one per normalized row), and ``y.to(dtype)`` for the weight's gradient when the
      weight is trainable.
    - RMSNorm, gemma style (``Gemma*RMSNorm``: ``y = norm(x.float()) * (1 + weight.float())``):
      x32, rsqrt, and y in fp32 when the weight is trainable.
    - RMSNorm, OLMo 2 style (``Olmo2RMSNorm``: ``(weight * y32).to(dtype)``): likewise x32, rsqrt
      and the fp32 y the weight's gradient reads (measured: bench/layer_inventory.py, OLMo 2 bf16).
    - LayerNorm (``native_layer_norm``): its input as is (CPU autocast does not cast layer_norm),
      mean and rstd per row -- fp32, or the input's dtype on CPU when input and weight share it
      (:attr:`ActMode.ln_stats_in_input_dtype`).
    - Cohere's Python LayerNorm: two copies of the centred fp32 input, rsqrt, and y in fp32 when
      the weight is trainable.
    ``rows_per_token`` > 1 for per-head q/k norms (Qwen3, Gemma3). ``input_bytes``: the input's
    element size, the residual stream's (``m.w``) unless given -- q/k norms read a projection's
    output, in the compute dtype: under autocast from fp32 weights the LayerNorm keeps that bf16
    input and ``LlamaRMSNorm``'s ``y.to(input_dtype)`` is bf16 (measured: layer_inventory, Qwen3,
    Phi and StableLM q/k norms, fp32-autocast).
    """
    inb = m.w if input_bytes is None else input_bytes
    if not input_requires_grad:
        return 0
    style = model.structure.norm
    if style is NormStyle.LAYER:
        stats = inb if (m.ln_stats_in_input_dtype and inb == m.w) else FP32
        return width * inb + 2 * stats * rows_per_token
    if style is NormStyle.LAYER_FP32_PY:
        # ``x - mean`` is computed twice (for the variance's pow and for the normalization's
        # multiply) and each keeps its own copy
        return 2 * width * FP32 + FP32 * rows_per_token + (0 if m.weights_frozen else width * FP32)
    saved = width * FP32 + FP32 * rows_per_token
    if not m.weights_frozen:
        saved += width * (FP32 if style in (NormStyle.RMS_GEMMA, NormStyle.RMS_FP32_PRODUCT) else inb)
    return saved


#: inputs fed by a norm output (the residual dtype), as opposed to a matmul output
_NORM_FED = (Input.ATTN_IN, Input.MLP_IN, Input.ROUTER_IN, Input.Q_LATENT, Input.KV_LATENT)


def _input_groups(model: ModelSpec, layer: Layer, train: TrainSpec, m: ActMode) -> list[tuple]:
    """The tensors the layer's linears keep for their weight gradients, per token: ``(input, linears
    reading it, width, fed by a norm)``. One group per distinct input tensor: the attention input, the
    router's input, the MLP input (one shared norm output in a single-norm parallel block), the
    MLP's hidden activation, and -- with PEFT, where the base saves nothing -- the attention output
    that LoRA A on the output projection keeps (already counted by SDPA when fp32)."""
    by_input: dict[Input, list] = {}
    for lin in layer.linears:
        by_input.setdefault(lin.role.input, []).append(lin)
    # ReLU keeps its output, the down projection's input (see _mlp_saved) -- unless PEFT gives LoRA A its
    # own copy: fp32 adapters, cast to by PEFT (and back by autocast) (measured: layer_inventory, OPT
    # LoRA bf16-noautocast: fc2's lora_A keeps an fp32 copy of the ReLU output)
    hidden_kept_by_act = model.structure.mlp is MlpStyle.PLAIN_RELU and not (train.finetune.peft and m.adapter != m.a)
    widths = {Input.ATTN_IN: model.hidden_size, Input.MLP_IN: model.hidden_size, Input.ROUTER_IN: model.hidden_size,
              Input.MLP_HIDDEN: 0 if hidden_kept_by_act else layer.mlp_intermediate,
              Input.ATTN_OUT: model.o_dim,
              Input.SHARED_HIDDEN: layer.moe.shared_intermediate if layer.moe is not None else 0}
    if model.structure.mla:
        mla = dict(model.structure.mla)
        widths.update({Input.Q_LATENT: mla["q_lora_rank"] or 0, Input.KV_LATENT: mla["kv_lora_rank"]})
    if layer.moe is not None:
        by_input.pop(Input.MLP_HIDDEN, None)  # routed / shared experts keep their own (see _moe_saved)
    if not train.finetune.peft:
        by_input.pop(Input.ATTN_OUT, None)
    if model.structure.shared_block_norm and Input.MLP_IN in by_input:
        by_input[Input.ATTN_IN] = by_input.get(Input.ATTN_IN, []) + by_input.pop(Input.MLP_IN)
    if Input.ROUTER_IN in by_input and Input.MLP_IN in by_input and (not model.structure.router_fp32
                                                                      or m.a == FP32):
        # a router that does not cast its input reads the very tensor the shared experts read
        # (Qwen2-MoE: ``hidden_states.view(-1, h)`` feeds the gate, the experts and the shared expert;
        # DeepSeek-V2's ``hidden_states.type(torch.float32)`` is that tensor when it is fp32)
        by_input[Input.MLP_IN] = by_input.pop(Input.ROUTER_IN) + by_input[Input.MLP_IN]
    return [(inp, tuple(lins), widths[inp], inp in _NORM_FED) for inp, lins in by_input.items() if inp in widths]


def _linear_inputs_saved(model: ModelSpec, layer: Layer, train: TrainSpec, m: ActMode,
                         input_requires_grad: bool = True, inputs: tuple[Input, ...] | None = None) -> int:
    """Inputs kept for the weight gradients of the layer's linears, per token.

    Full fine-tune: one saved copy per distinct input -- under autocast from fp32 weights, a
    norm-fed input is cast once per consuming matmul. PEFT: the frozen base saves nothing (a
    bitsandbytes 8-bit base keeps its input: :attr:`ActMode.base_keeps_input`), each wrapped
    linear's LoRA A saves its input -- the shared tensor when adapters and activations share a
    dtype, else its own copy in the adapter dtype (``_cast_input_dtype``, peft lora/layer.py and
    lora/bnb.py: QLoRA's bf16 adapters on fp32 activations) -- and LoRA B saves A's output (r per
    token, adapter dtype). ``inputs``: only the groups of these input tensors."""
    total = 0
    for inp, lins, width, norm_fed in _input_groups(model, layer, train, m):
        if inputs is not None and inp not in inputs:
            continue
        e = router_input_bytes(model, inp, m)  # m.a, but a DeepSeek-V2 router's fp32 copy without autocast
        if not train.finetune.peft:
            total += (len(lins) if m.autocast and m.w != m.a and norm_fed else 1) * width * e
            continue
        wrapped = [l for l in lins if model.wraps(l, train.lora_targets)]
        pw = sum(1 for l in wrapped if param_wrapped(layer, l))
        n = len(wrapped) - pw
        # adapters in the activations' dtype read the input itself (no cast, under autocast or not)
        shared = m.adapter == m.a and (not m.autocast or m.w == m.a or not norm_fed)
        # the width of an input SDPA already keeps (o_proj's), counted there when LoRA A shares it
        own = 0 if (inp is Input.ATTN_OUT and (m.a == FP32 or (shared and m.autocast))) else width
        if pw:
            # a ParamWrapper (MoE router) merges its adapters into the weight (lora_merged_weight_bytes)
            # and PEFT never casts its input: the matmul on the merged weight keeps that input for the
            # weight's gradient, as a trainable linear does (measured: layer_inventory, Mixtral LoRA
            # bf16-noautocast: the router keeps the bf16 norm output, no fp32 copy)
            per_matmul = m.autocast and m.w != m.a and norm_fed
            total += (pw if per_matmul else 1) * width * e
            if shared and not per_matmul:
                own = 0  # LoRA A on the same tensor reads the very copy counted here
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
    w, m = dtype_bytes(train.dtype), act_mode(train)
    # the router's ``F.linear`` is an autocast op: under autocast it keeps its compute-dtype cast of
    # the merged weight, not the merged weight itself (grouped_mm, the experts', is not one)
    router = m.a if m.autocast else router_weight_bytes(model, w)
    return sum(l.count * l.in_features * l.out_features * (w if l.count > 1 else router) for l in layer.linears
               if model.wraps(l, train.lora_targets) and param_wrapped(layer, l))


def param_wrapped(layer: Layer, lin: Linear) -> bool:
    """PEFT wraps this linear as a bare parameter (ParamWrapper: 3-D experts, an MoE router), not as a
    LoRA ``Linear`` module."""
    return lin.count > 1 or (layer.moe is not None and lin.role is Role.ROUTER)


def lora_factor_casts_bytes(model: ModelSpec, layer: Layer, train: TrainSpec) -> int:
    """Copies of the LoRA factors PEFT's ParamWrapper (MoE experts and router) keeps for backward:
    experts fold ``B @ A`` into the weight with one ``baddbmm`` (``_LoraFactorsProxy``, autocast
    disabled) on factors handed over in the weight's dtype (``get_delta_factors``: ``lhs.to(param.dtype),
    rhs.to(param.dtype)``), so each is a copy when the weights' dtype is not the adapters' (a bf16
    load, fp32 adapters), autocast or not; a one-matrix wrapper (the router) builds its delta with
    ``weight_B @ weight_A`` (``Linear.get_delta_weight``), which autocast casts and keeps only under
    autocast. Measured: bench/layer_inventory.py, Mixtral LoRA bf16 and bf16-noautocast."""
    if not train.finetune.peft:
        return 0
    m = act_mode(train)
    w = dtype_bytes(train.dtype)
    total = 0
    for l in layer.linears:
        if not model.wraps(l, train.lora_targets):
            continue
        factors = l.count * l.lora_rank_mult * train.lora_r * (l.in_features + l.out_features)
        if l.count > 1 and w != m.adapter:
            total += factors * w
        elif l.count == 1 and layer.moe is not None and l.role is Role.ROUTER and m.autocast and m.adapter != m.a:
            total += factors * m.a
    return total


def layer_weight_copies_bytes(model: ModelSpec, layer: Layer, train: TrainSpec,
                              input_requires_grad: bool = True) -> int:
    """Compute-dtype copies of the layer's linear weights that autocast makes from fp32 weights and
    the matmuls keep for backward (torch autocast's weight cache for leaves that require grad; a
    frozen base weight is cast per op and kept too, since the input gradient needs it), and of its
    LoRA adapters (:func:`lora_adapter_copies_bytes`). Zero without autocast. A matmul keeps the
    weight copy only for its input's gradient: under PEFT the first layer's input (a frozen
    embedding's output) takes none, so the frozen linears reading it keep no copy
    (``input_requires_grad`` False; measured: bench/layer_inventory.py, fp32-autocast LoRA)."""
    m = act_mode(train)
    merged = (lora_merged_weight_bytes(model, layer, train) + lora_factor_casts_bytes(model, layer, train)
              + lora_adapter_copies_bytes(model, layer, train, input_requires_grad))
    if not m.autocast or m.w == m.a or train.policy_quant is not Quant.NONE:
        # bitsandbytes' k-bit matmuls are custom ops that autocast does not cast
        return merged + router_weight_cast_bytes(model, layer, train, m)
    frozen_input = train.finetune.peft and not input_requires_grad
    # a router PEFT wraps as a parameter: autocast casts the merged weight (in ``merged``), not its own
    return merged + sum(l.in_features * l.out_features for l in layer.linears
                        if l.count == 1 and not (frozen_input and _reads_layer_input(model, l))
                        and not (train.finetune.peft and model.wraps(l, train.lora_targets)
                                 and param_wrapped(layer, l))) * m.a


def _reads_layer_input(model: ModelSpec, lin: Linear) -> bool:
    """The linear reads a norm of the layer's input (the attention input; a parallel block's MLP
    input too), which requires grad only when the layer's input does."""
    inp = lin.role.input
    return inp is Input.ATTN_IN or (model.structure.parallel_residual and inp in (Input.MLP_IN, Input.ROUTER_IN))


def lora_adapter_copies_bytes(model: ModelSpec, layer: Layer, train: TrainSpec,
                              input_requires_grad: bool = True) -> int:
    """Autocast's compute-dtype copies of the layer's LoRA A and B weights: PEFT keeps adapters in
    fp32 (``autocast_adapter_dtype``), autocast casts each for its matmul (and caches the cast, the
    weights requiring grad) and ``mm`` keeps it for the input gradient -- on bf16 and on fp32 bases
    alike (measured: trace engine, llama tiny, r = 32). Zero without autocast. ParamWrapper
    adapters (experts, router) are merged into the weight instead (:func:`lora_merged_weight_bytes`).
    A's copy is kept only when A's input takes a gradient (not in the first layer under PEFT:
    ``input_requires_grad`` False); B's always (A's output does)."""
    m = act_mode(train)
    if not train.finetune.peft or not m.autocast or dtype_bytes(adapter_dtype(train)) == m.a:
        return 0
    total = 0
    for l in layer.linears:
        if not model.wraps(l, train.lora_targets) or l.count != 1 or (layer.moe is not None and l.role is Role.ROUTER):
            continue
        a_kept = input_requires_grad or not _reads_layer_input(model, l)
        total += l.lora_rank_mult * train.lora_r * ((l.in_features if a_kept else 0) + l.out_features)
    return total * m.a


def _qk_norms_saved(model: ModelSpec, m: ActMode) -> int:
    qk = model.structure.qk_norm
    if qk is QKNorm.NONE:
        return 0
    per_head = qk is QKNorm.PER_HEAD
    # the norms read q_proj / k_proj outputs: compute-dtype inputs
    return (_norm_saved(model, model.q_dim, m, True, model.num_heads if per_head else 1, m.a)
            + _norm_saved(model, model.kv_dim, m, True, model.num_kv_heads if per_head else 1, m.a))


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
    if st.norm is NormStyle.LAYER and not st.shared_block_norm:
        total += 2 * (m.w if m.ln_stats_in_input_dtype else FP32)
    return total


def _mlp_saved(model: ModelSpec, layer: Layer, train: TrainSpec, m: ActMode) -> int:
    """MLP intermediates per token: gated (gate = the activation's input, act(gate), up), plain
    (fc_in's output, the activation's input), GPT-2's Python ``gelu_new`` (four intermediates),
    ReLU (its output, which the down projection's input group then does not count again)."""
    if layer.moe is not None:
        return _moe_saved(model, layer, train, m)
    style = model.structure.mlp
    per = {MlpStyle.GATED: 3, MlpStyle.PLAIN: 1, MlpStyle.PLAIN_PY_GELU: 4, MlpStyle.PLAIN_RELU: 1}[style]
    if style is MlpStyle.PLAIN:
        # the activation keeps fc_in's output in that linear's output dtype (fp32 for Falcon's biased
        # linears under autocast from fp32 weights: linear_out_bytes)
        return layer.mlp_intermediate * linear_out_bytes(model, layer.first(Role.MLP_IN), m)
    return per * layer.mlp_intermediate * m.a


def _functional_dropout_saved(model: ModelSpec, train: TrainSpec, m: ActMode) -> int:
    """Config-driven ``F.dropout`` calls TRL leaves on (:attr:`Structure.functional_dropouts`), per
    token: off CUDA, ATen's ``_dropout_impl`` multiplies by a scaled noise tensor of the input's
    dtype and keeps it; CUDA's fused ``native_dropout`` keeps a boolean mask."""
    per_elem = 1 if train.device == "cuda" else m.a
    return model.structure.functional_dropouts * model.hidden_size * per_elem


def layer_saved_bytes_per_token(model: ModelSpec, layer: Layer, train: TrainSpec,
                                input_requires_grad: bool = True, layer_idx: int | None = None) -> int:
    """Bytes autograd keeps for one decoder layer, per token, without checkpointing.

    Derived from the installed transformers modeling code and checked with
    ``bench/layer_inventory.py`` (saved-tensor inventory under refplan's live-bytes tracker).
    """
    m = act_mode(train)
    total = _block_norms_saved(model, layer, m, input_requires_grad)
    total += _qk_norms_saved(model, m) + mla_norms_saved(model, m, _norm_saved)
    total += _attention_saved(model, layer, train, m, layer_idx)
    total += _mlp_saved(model, layer, train, m)
    total += _functional_dropout_saved(model, train, m)
    return total + _linear_inputs_saved(model, layer, train, m, input_requires_grad)


def _moe_saved(model: ModelSpec, layer: Layer, train: TrainSpec, m: ActMode) -> int:
    """Routed MoE as transformers 5.x runs it (``grouped_mm_experts_forward``, experts stored as
    3-D parameters), per token, k = experts per token:
      router softmax (E fp32), top-k indices (k int64) and, where the router renormalizes them, the
      top-k weights (k fp32 + a sum),
      the sort / floor_divide / index / scatter bookkeeping (int64 and int32, ~36 bytes per k),
      grouped gate_up output (k x 2i), act(gate) (k x i) and the down projection output (k x h)
      kept for the routing-weight multiply; when the experts' weights take a gradient, also the
      token rows gathered per expert (k x h) and act*up (k x i), the grouped matmuls' inputs;
      shared experts (DeepSeek-V2, Qwen2-MoE) as a dense gated MLP, with Qwen2-MoE's sigmoid gate
      on their output.
    Checked against bench/layer_inventory.py (Mixtral, Qwen3-MoE)."""
    moe = layer.moe
    k, h, i = moe.top_k, model.hidden_size, moe.expert_intermediate
    per = moe.num_experts * FP32 + k * 36 + ((FP32 + k * FP32) if moe.normalized else 0)
    # grouped_mm is not an autocast op: transformers casts its input to the experts' weight dtype
    # (``input.to(weight.dtype)``, integrations/moe.py ``_grouped_mm``), so the experts' tensors are
    # in the weights' dtype -- fp32 under autocast from fp32 weights (measured: layer_inventory, Mixtral)
    e = m.w
    per += k * (2 * i + i + h) * e  # gate_up output, act(gate), down output
    experts = layer.first(Role.EXPERTS_GATE_UP)
    if not train.finetune.peft or (experts is not None and model.wraps(experts, train.lora_targets)):
        # grouped_mm keeps its inputs only for a weight gradient: frozen experts (PEFT without them
        # in its targets) keep neither the gathered rows nor act * up
        per += k * (h + i) * e
    if moe.shared_intermediate:
        # gated shared MLP: gate, act(gate), up; act * up is the shared down projection's input,
        # counted with the linears' inputs (Input.SHARED_HIDDEN): kept by a trainable down, by its
        # LoRA A under PEFT (an fp32 copy without autocast), by nothing when PEFT leaves it frozen
        # (measured: layer_inventory, Qwen2-MoE LoRA bf16-noautocast)
        per += 3 * moe.shared_intermediate * m.a
        if moe.shared_gated:
            # ``sigmoid(shared_expert_gate(x)) * shared_expert(x)``: the multiply keeps the shared
            # output [h] and the sigmoid its output [1] (Qwen2MoeSparseMoeBlock.forward)
            per += (h + 1) * m.a
        # DeepSeek-V2's shared MLP reads the MoE block's input itself: counted with the MLP's input group
    return per


def checkpoint_saved_bytes_per_token(model: ModelSpec, train: TrainSpec) -> int:
    """With gradient checkpointing (non-reentrant, torch.utils.checkpoint), a layer keeps only
    its input hidden state -- the residual stream, in the weights' dtype: fp32 under autocast from
    fp32 weights (embedding outputs and residual adds are not autocast ops; measured with the trace
    engine and a CPU burst of docs/examples/trl-dpo-lora.yaml)."""
    return model.hidden_size * act_mode(train).w


def per_layer_saved_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> list[int]:
    """Saved activations of each decoder layer for one forward of ``rows`` sequences (identical
    layers are computed once)."""
    tokens = rows * train.seq
    if train.grad_ckpt:
        return [tokens * (checkpoint_saved_bytes_per_token(model, train)
                          + kbit_ctx_inputs_bytes_per_token(model, layer, train)) for layer in model.layers]
    memo: dict = {}
    out = []
    # with a frozen embedding (PEFT), the first layer's input does not require grad -- unless a
    # LoRA-wrapped projection stands between them (OPT's project_in)
    first_irg = not train.finetune.peft or any(
        l.role is Role.PROJECT_IN and model.wraps(l, train.lora_targets) for l in model.outer_linears)
    for idx, layer in enumerate(model.layers):
        irg = first_irg or idx > 0
        key = (model.layer_groups[idx], irg, attention_masked(model, train, idx))
        if key not in memo:
            memo[key] = (tokens * layer_saved_bytes_per_token(model, layer, train, irg, idx)
                         + layer_weight_copies_bytes(model, layer, train, irg))
        out.append(memo[key])
    return out


def decoder_saved_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """All decoder layers' saved activations for one forward of ``rows`` sequences."""
    return sum(per_layer_saved_bytes(model, train, rows))


def recompute_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """Checkpointing recomputes one layer in backward: its full activations live at once (the
    largest layer's), less what is the checkpointed input itself (:func:`recompute_saved_bytes`)."""
    if not train.grad_ckpt:
        return 0
    memo: dict = {}
    for idx in range(model.num_layers):
        key = (model.layer_groups[idx], attention_masked(model, train, idx))
        if key not in memo:
            memo[key] = recompute_saved_bytes(model, train, rows, idx)
    return max(memo.values())


def recompute_saved_bytes(model: ModelSpec, train: TrainSpec, rows: int, layer_idx: int) -> int:
    """What the recompute of layer ``layer_idx`` saves for its backward: the layer's saved tensors
    less those that are the checkpointed input itself (:func:`checkpoint_input_resaved_bytes_per_token`),
    which :func:`checkpoint_saved_bytes_per_token` already counts."""
    layer = model.layers[layer_idx]
    per_token = (layer_saved_bytes_per_token(model, layer, train, True, layer_idx)
                 - checkpoint_input_resaved_bytes_per_token(model, train))
    return rows * train.seq * per_token + layer_weight_copies_bytes(model, layer, train)


def checkpoint_input_resaved_bytes_per_token(model: ModelSpec, train: TrainSpec) -> int:
    """Bytes of a layer's saved tensors that are its input itself, per token. The recompute runs on
    the tensor the checkpoint kept, so what saves it unchanged adds no storage: ``nn.LayerNorm``
    always (``native_layer_norm`` keeps its input), an RMSNorm when the residual stream is already
    fp32 (``x.to(torch.float32)`` / ``x.float()`` return ``x``). Post-norm layers (no input norm)
    feed the attention projections the input itself; they save it unchanged when
    :func:`matmuls_save_input_as_is`. Measured: trace engine, llama tiny, fp32 and fp32 + bf16
    autocast, full and LoRA: the recomputed layer holds ``h x 4`` bytes per token less than
    :func:`layer_saved_bytes_per_token`."""
    m = act_mode(train)
    h, st = model.hidden_size, model.structure
    if st.placement is NormPlacement.POST:
        return h * m.w if matmuls_save_input_as_is(model, model.layers[0], train, Input.ATTN_IN) else 0
    if st.norm is NormStyle.LAYER or m.w == FP32:
        return h * m.w
    return 0


def peft_input_cast_bytes(train: TrainSpec, input_bytes: int) -> int:
    """Bytes per element of PEFT's copy of a LoRA layer's input in the adapter dtype
    (``x = self._cast_input_dtype(x, lora_A.weight.dtype)``, peft lora/layer.py ``Linear.forward``):
    none when the input has the adapter dtype already, and none for bitsandbytes 4-bit layers under
    autocast (lora/bnb.py ``Linear4bit.forward``: ``requires_conversion = not
    torch.is_autocast_enabled()``). The copy lives until the layer's forward returns."""
    adapter = dtype_bytes(adapter_dtype(train))
    if input_bytes == adapter or (train.finetune is Finetune.QLORA and act_mode(train).autocast):
        return 0
    return adapter


def lora_keeps_input_as_is(train: TrainSpec, input_bytes: int) -> bool:
    """True when ``lora_A`` keeps its input tensor itself for backward: neither PEFT's cast
    (:func:`peft_input_cast_bytes`) nor autocast's (an input not in the compute dtype) copies it."""
    m = act_mode(train)
    return peft_input_cast_bytes(train, input_bytes) == 0 and (not m.autocast or input_bytes == m.a)


def matmuls_save_input_as_is(model: ModelSpec, layer: Layer, train: TrainSpec, inp: Input) -> bool:
    """True when the linears reading ``inp`` (a tensor in the residual dtype) keep that tensor
    itself for backward rather than a copy: trainable weights without a dtype cast (autocast copies
    an fp32 input per matmul), or a LoRA A that keeps its input as is
    (:func:`lora_keeps_input_as_is`)."""
    m = act_mode(train)
    lins = [l for l in layer.linears if l.role.input is inp]
    if not train.finetune.peft:
        return bool(lins) and m.w == m.a
    return lora_keeps_input_as_is(train, m.w) and any(model.wraps(l, train.lora_targets) for l in lins)
