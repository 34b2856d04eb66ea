"""The log-prob path: what turning the last hidden state into per-token log-probs keeps and
needs, and the no-grad reference forward's transient.

DPO and KTO call the model with TRL's fused head (``ChunkedLogProbFunction``: log-probs computed in
vocabulary tiles, never [N, S, V] logits); ORPO and CPO (SimPO) build full logits and run
``selective_log_softmax`` / cross-entropy on them. Units: bytes.
"""

from __future__ import annotations

from refplan.activations import FP32, act_mode
from refplan.model import ModelSpec
from refplan.spec import TrainSpec

#: TRL 1.16 trainer/utils.py: ``_CHUNKED_LOGPROB_CHUNK_SIZE = 32768`` vocabulary columns per tile;
#: kernels/chunked_logprob.py: ``TOKEN_CHUNK_SIZE = 4096`` tokens per tile.
FUSED_VOCAB_CHUNK = 32768
FUSED_TOKEN_CHUNK = 4096
#: per-token fp32 statistics the chunked log-prob forward keeps (running_max, sum_exp, x_sum_exp,
#: sq_sum_exp, z_sum, max_before_target, target_logit), chunked_logprob.py ~340-346.
FUSED_STATS = 7



def head_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> tuple[int, int, int]:
    """(saved for backward, forward transient, backward transient) of the method's log-prob path."""
    if train.method.caps.fused_logprob_head:
        return (fused_head_saved_bytes(model, train, rows), fused_head_forward_transient_bytes(model, train, rows),
                fused_head_backward_transient_bytes(model, train, rows))
    return (full_logits_saved_bytes(model, train, rows), full_logits_transient_bytes(model, train, rows),
            full_logits_backward_transient_bytes(model, train, rows))


def fused_head_saved_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """TRL's fused head (DPO, KTO) saves for backward: the [N, h] hidden copy
    (``hidden_states[:, :-1].reshape(-1, h)``), the targets (int64) and log_z (fp32), with
    N = rows * (seq - 1) (all positions on CPU; completion positions only on Triton devices,
    which we bound by all positions). The hidden states are the final norm's output, in the
    residual stream's dtype: fp32 under autocast from fp32 weights (measured: trace engine)."""
    n = rows * (train.seq - 1)
    return n * (model.token_dim * act_mode(train).w + 8 + FP32)


def fused_head_hidden_cast_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """``ChunkedLogProbFunction``'s compute-dtype copy of one token chunk of the hidden states,
    ``hidden[token_start:token_end].to(compute_dtype)`` [min(N, 4096), h], a local through the
    chunk's tiles in its forward and in its backward (chunked_logprob.py), when the hidden states
    are not in the autocast dtype (fp32 weights under autocast). Zero otherwise (``.to`` returns
    the tensor)."""
    m = act_mode(train)
    if not m.autocast or m.w == m.a:
        return 0
    return min(rows * (train.seq - 1), FUSED_TOKEN_CHUNK) * model.token_dim * m.a


def fused_head_weight_cast_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """The backward's compute-dtype copy of one vocabulary chunk of an fp32 head weight under
    autocast, ``w_chunk = weight[start:end].to(compute_dtype)`` [min(V, 32768), h], a local while
    the tile is folded (the forward casts inside the ``mm`` call, a temporary gone before its
    fold)."""
    m = act_mode(train)
    if not m.autocast or m.w == m.a:
        return 0
    return min(model.vocab_size, FUSED_VOCAB_CHUNK) * model.token_dim * m.a


def fused_head_forward_transient_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """Peak extra bytes inside ChunkedLogProbFunction.forward: the 7 fp32 statistics, the
    ``mm_buf`` tile [min(N, 4096), 32768] in compute dtype, the cast of one hidden chunk
    (:func:`fused_head_hidden_cast_bytes`), and, on CPU (torch fallback
    ``_forward_tile``), fp32 copies of one tile while it is folded (transform, z - max, exp)."""
    n = rows * (train.seq - 1)
    tok = min(n, FUSED_TOKEN_CHUNK)
    cols = min(model.vocab_size, FUSED_VOCAB_CHUNK)
    a = act_mode(train).a
    out = FUSED_STATS * n * FP32 + tok * FUSED_VOCAB_CHUNK * a
    out += fused_head_hidden_cast_bytes(model, train, rows)
    fold_tiles = 3 if train.device == "cpu" else 0
    return out + fold_tiles * tok * cols * FP32


def fused_head_backward_transient_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """ChunkedLogProbFunction.backward: fp32 grad_hidden [N, h], fp32 grad_weight [V, h] when the
    head is trainable, the mm_buf tile, the compute-dtype casts of one hidden chunk and one weight
    chunk (:func:`fused_head_hidden_cast_bytes`, :func:`fused_head_weight_cast_bytes`), and on CPU
    the torch fallback ``_backward_tile``'s temporaries of one tile: y, z, log_p, p, grad,
    is_target.float(), (is_target - p) alive at once (7 fp32 tiles) plus the bool ``is_target``
    tile."""
    n = rows * (train.seq - 1)
    tok = min(n, FUSED_TOKEN_CHUNK)
    cols = min(model.vocab_size, FUSED_VOCAB_CHUNK)
    a = act_mode(train).a
    out = n * model.token_dim * FP32 + tok * FUSED_VOCAB_CHUNK * a
    out += fused_head_hidden_cast_bytes(model, train, rows) + fused_head_weight_cast_bytes(model, train)
    if not train.finetune.peft:
        out += model.vocab_size * model.token_dim * FP32
    if train.device == "cpu":
        # final logit soft-capping (Gemma 2/3) keeps tanh's output as one more tile
        tiles = 7 + (1 if model.structure.final_softcap else 0)
        out += tiles * tok * cols * FP32 + tok * cols  # fp32 tiles + 1 bool tile
    return out


def _logits_stay_16bit(train: TrainSpec) -> bool:
    """A 16-bit run without mixed precision (``bf16 = fp16 = False``, TrainSpec ``autocast="none"``):
    accelerate converts the model's outputs to fp32 only under mixed precision
    (``convert_outputs_to_fp32`` around the autocast forward), so ORPO's / CPO's losses then run on the
    16-bit logits themselves: cross-entropy's log-softmax output and the backward's gradients are
    16-bit, not fp32 (measured: validate_precision ORPO bursts in bf16-noautocast, +68..+180 %
    with the fp32 terms)."""
    m = act_mode(train)
    return m.a != FP32 and not m.autocast


def full_logits_saved_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """ORPO / CPO (orpo_trainer.py / cpo_trainer.py ``concatenated_forward``) keep for backward:
    the LM head's input [rows, S, h] (when the head is trainable), the full ``outputs.logits`` [rows, S, V] in compute dtype,
    ORPO's chosen NLL (cross-entropy's log-softmax output over [B, S-1, V], fp32 -- the logits' 16-bit
    dtype when they stay 16-bit: :func:`_logits_stay_16bit`), and, when the
    logits are not fp32, ``selective_log_softmax``'s per-row log-softmax outputs [rows, S-1, V]."""
    s, v, a = train.seq, model.vocab_size, act_mode(train).a
    if train.device == "cuda" and a != FP32 and not _logits_stay_16bit(train):
        # CUDA autocast runs log_softmax / cross_entropy in fp32 on casts of the logits; by the
        # backward peak (see full_logits_backward_transient_bytes) those are freed -- measured on
        # an H200 (reports/gpu/diagnose.json): only the head's input (when trainable) remains
        return 0 if train.finetune.peft else rows * s * model.token_dim * a
    # the logits themselves -- except on 16-bit logits, where selective_log_softmax's per-row
    # log_softmax keeps only its outputs, cross-entropy its log-softmax output, and nothing keeps the
    # logits once TRL's loss returns (measured: ORPO bf16-noautocast bursts, and the same losses on
    # bf16 logits under refplan's tracker)
    saved = 0 if _logits_stay_16bit(train) else rows * s * v * a
    if not train.finetune.peft:
        saved += rows * s * model.token_dim * a  # a frozen LM head (PEFT) needs no input for backward
    if model.structure.final_softcap:
        saved += rows * s * v * a  # Gemma's cap: tanh(logits / cap) is kept for backward
    if train.method.value == "orpo":
        saved += (rows // 2) * (s - 1) * v * (a if _logits_stay_16bit(train) else FP32)
    if a != FP32:
        saved += rows * (s - 1) * v * a
    return saved


def full_logits_transient_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """Forward: one [rows, S-1, V] fp32 shifted copy while the losses are formed. On 16-bit logits
    (:func:`_logits_stay_16bit`) only ORPO's cross-entropy copies its shifted chosen half
    (``logits[..., :-1, :].contiguous()``), in the logits' dtype; ``selective_log_softmax`` works one
    row at a time (measured: TRL's ORPO / SimPO losses on bf16 logits under refplan's tracker)."""
    if _logits_stay_16bit(train):
        orpo = train.method.value == "orpo"
        return (rows // 2) * (train.seq - 1) * model.vocab_size * act_mode(train).a if orpo else 0
    return rows * (train.seq - 1) * model.vocab_size * FP32


def full_logits_backward_transient_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """Backward peak of the log-prob path: in ``selective_log_softmax``'s gather backward three
    [rows, S-1, V] fp32 tensors are alive at once -- the stacked logsumexp gradient, gather's
    ``new_zeros`` and its ``scatter_add`` result (measured: peak op aten.scatter_add)."""
    if _logits_stay_16bit(train):
        # the logits' gradient [rows, S, V] (slice_backward of each loss's shifted view), and for
        # ORPO the cross-entropy's log-softmax gradient beside it, all in the logits' 16-bit dtype
        # (measured: TRL's ORPO / SimPO losses on bf16 logits under refplan's tracker)
        a = act_mode(train).a
        nll = (rows // 2) * (train.seq - 1) * model.vocab_size * a if train.method.value == "orpo" else 0
        return rows * train.seq * model.vocab_size * a + nll
    if train.device == "cuda" and act_mode(train).a != FP32:
        # CUDA + autocast (H200, reports/gpu/diagnose.json, ORPO LoRA peak at aten.add): the fp32
        # gradients of the [rows, S, V] logits from each consumer's ``logits[:, :-1]`` slice
        # (``slice_backward``) and their sum -- ORPO has two consumers (NLL and log-probs), so
        # three tensors; SimPO/CPO without the NLL term has one slice and its upstream gradient
        n = 3 if train.method.value == "orpo" else 2
        return n * rows * train.seq * model.vocab_size * FP32
    return 3 * rows * (train.seq - 1) * model.vocab_size * FP32


def reference_forward_transient_bytes(model: ModelSpec, train: TrainSpec, rows: int, layer_extra: int = 0) -> int:
    """A no-grad forward keeps nothing, so its peak is the largest live set inside one layer
    (residual + MLP intermediates, + ``layer_extra``: a k-bit matmul's own temporaries) or the fused
    head's forward transient."""
    a = act_mode(train).a
    tokens = rows * train.seq
    width = max((l.mlp_intermediate or 0) for l in model.layers)
    moe = next((l.moe for l in model.layers if l.moe), None)
    if moe:
        width = max(width, moe.top_k * moe.expert_intermediate)
    layer_peak = tokens * (2 * model.hidden_size + 3 * width) * a
    n = rows * (train.seq - 1)
    head = n * model.token_dim * a + fused_head_forward_transient_bytes(model, train, rows) + n * FP32
    return max(layer_peak + layer_extra, head)
