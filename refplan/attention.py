"""What attention keeps for backward, per token, by the code path that runs (SDPA, eager, Falcon's own
SDPA call), and whether a layer builds an explicit mask. Part of :mod:`refplan.activations`, which sums
a layer's saved tensors; same conventions (bytes, per token of rows x seq)."""

from __future__ import annotations

from refplan.act_dtypes import FP32, ActMode, linear_out_bytes
from refplan.methods import Finetune
from refplan.mla import mla_attention_saved
from refplan.model import AttentionKernel, KVToAttention, Layer, ModelSpec, Positions, Role
from refplan.spec import TrainSpec


def attention_masked(model: ModelSpec, train: TrainSpec, layer_idx: int | None = None) -> bool:
    """True when the model builds an explicit mask for this layer: padding in the batch, or a
    sliding window shorter than the sequence on a sliding-attention layer (transformers
    masking_utils; without a mask SDPA runs causal and, on recent torch, with native GQA)."""
    if train.padded or model.structure.mask_always:
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
    fine-tuning), by its LoRA A when that reads it as is -- adapters in the activations' dtype, or a
    4-bit base under autocast (lora/bnb.py ``Linear4bit.forward`` skips PEFT's cast then and autocast
    casts only the adapter weights) --, by an 8-bit base. Otherwise LoRA A keeps its own cast
    (counted with the linears' inputs): PEFT's cast to the adapter dtype, and under autocast
    autocast's cast back to the compute dtype (measured: bench/layer_inventory.py, bf16 LoRA on
    GPT-NeoX), and a frozen base keeps nothing."""
    if not train.finetune.peft or m.base_keeps_input or m.adapter == m.a:
        return True
    return train.finetune is Finetune.QLORA and m.autocast


def _own_sdpa(model: ModelSpec, train: TrainSpec) -> bool:
    """A model that calls attention itself (Falcon) runs SDPA's fused kernel: ``sdpa`` asked, and
    K/V as many heads as Q (a single broadcast K/V head sends torch to its math kernel)."""
    return (attention_impl(model, train) == "falcon" and train.attn.value != "eager"
            and model.structure.kv_to_attention is not KVToAttention.BROADCAST)


def _alibi_mask_cast(model: ModelSpec, m: ActMode) -> bool:
    """Falcon's ALiBi mask is built in the embeddings' dtype (``build_alibi_tensor(...,
    dtype=inputs_embeds.dtype)``): fp32 under autocast from fp32 weights, which each layer's SDPA
    call casts to the compute dtype and keeps (measured: bench/layer_inventory.py, falcon-alibi
    fp32-autocast: one bf16 [rows, heads, S, S] copy per layer)."""
    return model.structure.positions is Positions.ALIBI and m.autocast and m.w != m.a


def _math_upcast(model: ModelSpec, train: TrainSpec, m: ActMode) -> bool:
    """Falcon's own SDPA call on a single broadcast K/V head runs torch's math kernel, in fp32 for
    16-bit inputs."""
    return (attention_impl(model, train) == "falcon" and train.attn.value != "eager" and m.a != FP32
            and model.structure.kv_to_attention is KVToAttention.BROADCAST)


def _attention_saved(model: ModelSpec, layer: Layer, train: TrainSpec, m: ActMode,
                     layer_idx: int | None = None) -> int:
    """What attention itself keeps, per token (projections' inputs excluded)."""
    q, kv, heads, s = model.q_dim, model.kv_dim, model.num_heads, train.seq
    impl = attention_impl(model, train)
    o_in = model.o_dim * m.a if _o_proj_input_kept(train, m) else 0
    if model.structure.mla:
        return mla_attention_saved(model, train, m, impl, o_in, attention_masked(model, train))
    fused = layer.first(Role.QKV) is not None
    if _own_sdpa(model, train):
        # FalconAttention.forward: q, k and v -- materialized at query width when expanded, else
        # rotated copies of q and k (RoPE) or views (ALiBi) beside v, views of the fused output that
        # keep it whole --, SDPA's output (read by ``dense`` through a view) and its logsumexp
        rotated = model.structure.positions is Positions.ROPE
        if model.structure.kv_to_attention is KVToAttention.EXPANDED:
            qkv_saved = 3 * q
        elif linear_out_bytes(model, layer.first(Role.QKV), m) != m.a:
            # an fp32 fused output (biased FalconLinear under autocast): SDPA keeps its own
            # compute-dtype casts of q, k and v, and neither the fused output nor the rotated copies
            qkv_saved = q + 2 * kv
        elif rotated:
            qkv_saved = q + kv + (q + 2 * kv if fused else kv)
        else:
            qkv_saved = q + 2 * kv
        total = (qkv_saved + q) * m.a + heads * FP32
        if _alibi_mask_cast(model, m):
            total += heads * s * m.a  # this layer's compute-dtype cast of the fp32 ALiBi mask
        if rotated and train.device == "cpu":
            # the mask is boolean: on CPU, SDPA keeps its own float copy [rows, 1, S, S] from every
            # call (per token, one row of S; see the standard path below); with ALiBi the model
            # folds the biases into one float mask (mask_bytes)
            total += s * m.a
        return total
    if _math_upcast(model, train, m):
        # Falcon multi-query through SDPA's math kernel, which computes 16-bit inputs in fp32 (torch's
        # math backend upcasts q, k and v unless allow_fp16_bf16_reduction_math_sdp): fp32 q (scaled),
        # K and V expanded to every head, the fp32 softmax output; the output is cast back for o_proj
        # (measured: bench/layer_inventory.py, falcon-multi-query bf16 and fp32-autocast)
        return 3 * q * FP32 + heads * s * FP32 + o_in
    if impl in ("eager", "falcon"):
        # eager_attention_forward: matmul copies of q and of k, v expanded to all heads, the
        # softmax output (fp32 upcast, then cast back), soft-capped scores where capped
        total = 3 * q * m.a + heads * s * FP32
        if m.a != FP32:
            total += heads * s * m.a
        if model.structure.attn_softcap:
            total += heads * s * m.a
        return total + o_in  # output reshaped for o_proj (a copy)
    masked = attention_masked(model, train, layer_idx)
    # torch's SDPA turns a boolean mask into a float copy on every call, and the CPU kernel keeps
    # that copy for backward: one [rows, 1, S, S] per masked layer, one mask row of S per token
    # (bench/layer_inventory.py: Mistral, StarCoder2; the trace check's padded rows). Counted on
    # CPU only: CUDA's kernels were not measured with masks (the GPU bench runs unpadded)
    mask_copy = s * m.a if masked and train.device == "cpu" else 0
    if fused and model.structure.fused_view_qkv:
        # no rotation: q, k and v are views of the fused output, which stays alive whole (GPT-2);
        # + the SDPA output (o_proj's input) and its logsumexp
        return (q + 2 * kv) * m.a + q * m.a + heads * FP32 + mask_copy
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
    if fused or model.structure.rotary_concat:
        # q sliced from a fused projection, or rebuilt by ``torch.cat((q_rot, q_pass))`` around the
        # rotation, reaches SDPA head-major and contiguous: its output comes back head-major,
        # so sdpa_attention_forward's ``transpose(1, 2).contiguous()`` is a copy (phi3, gpt_neox, phi)
        total += o_in
    return total + mask_copy
