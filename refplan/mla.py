"""DeepSeek-V2's multi-head latent attention (MLA): what its attention keeps for backward, per token. Part
of :mod:`refplan.activations` (through :mod:`refplan.attention`); same conventions (bytes, per token of
rows x seq)."""

from __future__ import annotations

from refplan.act_dtypes import FP32, ActMode
from refplan.model import ModelSpec
from refplan.spec import TrainSpec


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
