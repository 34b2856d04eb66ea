"""DeepSeek-V2's own terms: what its multi-head latent attention (MLA) keeps for backward, and its fp32
router's input. Part of :mod:`refplan.activations` (through :mod:`refplan.attention` for attention); same
conventions (bytes, per token of rows x seq)."""

from __future__ import annotations

from collections.abc import Callable

from refplan.act_dtypes import FP32, ActMode
from refplan.model import Input, Layer, ModelSpec, Role
from refplan.spec import TrainSpec
from refplan.units import dtype_bytes


def mla_attention_saved(model: ModelSpec, train: TrainSpec, m: ActMode, impl: str, o_in: int, masked: bool) -> int:
    """DeepSeek-V2's multi-head latent attention (``DeepseekV2Attention.forward``), per token, from the
    per-head tensors on: ``query_states`` (``cat`` of q_nope and the rotated q_pe) and ``key_states``
    (``new_empty`` + ``copy_`` of k_nope and the broadcast k_pe) are new head-major tensors at query
    width; ``value_states`` is a split view of kv_b_proj's output, which so stays alive whole
    (heads x (nope + v)). The latent norms and the up-projections' inputs are counted with the norms
    and the linears' inputs.

    - SDPA with equal q/k and v head dims (CPU flash kernel): q, k, the value's storage, the output
      and its logsumexp, and the output's ``transpose(1, 2).contiguous()`` copy for o_proj (q reaches
      SDPA head-major, so its output comes back head-major).
    - SDPA on CPU with a v head dim of its own: the CPU flash kernel needs one head dim, so torch runs
      its math kernel (``_scaled_dot_product_attention_math``): the scaled q, the scaled transposed k,
      the softmax output [heads, S] (kept by the softmax and the second matmul) and a contiguous copy
      of v (reshaped for bmm) -- all four in fp32 whatever the activations' dtype: the math kernel
      upcasts 16-bit q, k and v (unless ``allow_fp16_bf16_reduction_math_sdp``) and casts only its
      output back; the output's reshape for o_proj is o_proj's input (``o_in``, compute dtype).
      Measured: bf16, fp32-autocast and bf16-noautocast, tensor by tensor (fp32 [rows, heads, S, hd]
      scaled q / k, fp32 softmax, fp32 v copy, a bf16 o_proj input).
    - eager: matmul copies of q and k, the value's storage, the fp32 softmax (cast back when the
      activations are 16-bit), the output's reshape for o_proj.
    CUDA is not measured: it is counted as the flash form (its kernels take their own v head dim).
    Measured: bench/layer_inventory.py's DeepSeek-V2 configs on CPU, saved tensor by tensor."""
    mla = dict(model.structure.mla)
    q, heads, s, v = model.q_dim, model.num_heads, train.seq, model.o_dim
    v_storage = heads * (mla["qk_nope_head_dim"] + mla["v_head_dim"])
    if impl == "eager":
        total = (2 * q + v_storage) * m.a + heads * s * FP32 + (heads * s * m.a if m.a != FP32 else 0)
        return total + o_in
    if train.device == "cpu" and model.head_dim != mla["v_head_dim"]:
        # CPU-only: CUDA's kernels take the v head dim as is (not measured: counted as the flash form)
        return (2 * q + v) * FP32 + heads * s * FP32 + o_in
    mask_copy = s * m.a if masked and train.device == "cpu" else 0
    return (2 * q + v_storage + v) * m.a + heads * FP32 + o_in + mask_copy


def router_input_bytes(model: ModelSpec, inp: Input, m: ActMode) -> int:
    """Bytes per element of what the linears reading ``inp`` keep: the compute dtype's, but for the
    input of a router that runs in fp32 (:attr:`Structure.router_fp32`, ``DeepseekV2TopkRouter``:
    ``F.linear(hidden_states.type(torch.float32), self.weight.type(torch.float32))``). Without autocast
    a 16-bit input so gets an fp32 copy, which the linear keeps (trainable or PEFT-merged router
    weight alike); under autocast F.linear casts it back to the compute dtype (measured:
    bench/layer_inventory.py, DeepSeek-V2 bf16-noautocast: an fp32 [tokens, h] copy per MoE layer;
    bf16: a bf16 one)."""
    if inp is Input.ROUTER_IN and model.structure.router_fp32 and not m.autocast:
        return FP32
    return m.a


def router_weight_bytes(model: ModelSpec, weight_bytes: int) -> int:
    """Bytes per element of the router's weight: the model's, but fp32 for a router transformers keeps in
    fp32 (``_keep_in_fp32_modules_strict = ["gate.weight"]``, :attr:`Structure.router_fp32`) -- so the
    weight PEFT's ParamWrapper merges (``weight + B @ A``) and the matmul keeps is fp32 too, without
    autocast (measured: bench/layer_inventory.py, DeepSeek-V2 LoRA bf16-noautocast)."""
    return FP32 if model.structure.router_fp32 else weight_bytes


def router_weight_cast_bytes(model: ModelSpec, layer: Layer, train: TrainSpec, m: ActMode) -> int:
    """Autocast over 16-bit weights casts an fp32 router weight (:func:`router_weight_bytes`) to the
    compute dtype for its ``F.linear``, which keeps the copy for its input's gradient: [E, h] per MoE
    layer (measured: bench/layer_inventory.py, DeepSeek-V2 full bf16). A router PEFT wraps keeps its
    cast merged weight instead (counted by ``lora_merged_weight_bytes``). Autocast from fp32 weights
    casts every weight (counted by ``layer_weight_copies_bytes``)."""
    router = layer.first(Role.ROUTER)
    if (router is None or not model.structure.router_fp32 or not m.autocast or m.a == FP32
            or dtype_bytes(train.dtype) == FP32 or (train.finetune.peft and model.wraps(router, train.lora_targets))):
        return 0
    return router.in_features * router.out_features * m.a


def routed_grads_bytes(model: ModelSpec, layer: Layer, m: ActMode) -> int:
    """Early in a routed-expert layer's backward, per token, when the routing weights are fp32 and the
    experts are not (:attr:`Structure.router_fp32`: ``DeepseekV2TopkRouter``'s fp32 softmax and
    ``topk_weights * routed_scaling_factor`` stay fp32): grouped_mm_experts_forward's
    ``proj_out * sample_weights_g`` promotes to fp32, so the zero-filled buffer of the inverse
    permutation's index backward, ``MulBackward0``'s gradient for the expert outputs and its full-width
    product for the routing weights' gradient (summed to [k x tokens, 1] only after) are fp32
    [k x tokens, h], and the first is cast back to the experts' dtype for grouped_mm's backward
    (measured: validate_precision burst v3-014, DeepSeek-V2 SimPO LoRA bf16-noautocast, the live
    tensors at the peak). 0 when the generic term applies (routing weights in the experts' dtype)."""
    if layer.moe is None or not model.structure.router_fp32 or m.w == FP32:
        return 0
    kh = layer.moe.top_k * model.hidden_size
    return 3 * kh * FP32 + kh * m.w


def mla_norms_saved(model: ModelSpec, m: ActMode, norm_saved: Callable[..., int]) -> int:
    """MLA's latent RMSNorms (DeepSeek-V2): q_a_layernorm on q_a_proj's output (when q_lora_rank is
    set) and kv_a_layernorm on the kv_nope split of kv_a_proj_with_mqa's output -- in fp32 its
    ``to(float32)`` is the split view itself, which keeps the whole output (kv_lora_rank + the rope
    dims) alive (measured: bench/layer_inventory.py's DeepSeek-V2 configs, fp32). ``norm_saved``: what
    one norm keeps (:func:`refplan.activations._norm_saved`)."""
    if not model.structure.mla:
        return 0
    mla = dict(model.structure.mla)
    # they read projection outputs: compute-dtype inputs, so ``y.to(input_dtype)`` (kept for the weight's
    # gradient) is bf16 under autocast from fp32 weights (measured: fp32-autocast, tensor by tensor)
    total = norm_saved(model, mla["kv_lora_rank"], m, True, 1, m.a)
    if m.a == FP32:
        total += mla["qk_rope_head_dim"] * FP32
    return total + (norm_saved(model, mla["q_lora_rank"], m, True, 1, m.a) if mla["q_lora_rank"] else 0)
