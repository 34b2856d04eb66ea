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

    a: int  # bytes per element of activations (compute dtype)
    weights_frozen: bool  # PEFT: base weights and norms do not require grad
    upcast_norm: bool  # RMSNorm upcasts to fp32 (hidden.to(float32)) when activations are not fp32


def act_mode(train: TrainSpec) -> ActMode:
    a = dtype_bytes(train.compute_dtype)
    return ActMode(a=a, weights_frozen=train.finetune.peft, upcast_norm=a != FP32)


def _norm_saved(h: int, m: ActMode, input_requires_grad: bool = True) -> int:
    """RMSNorm (transformers LlamaRMSNorm): ``x32 = x.to(f32); var = x32.pow(2).mean(-1);
    y = x32 * rsqrt(var + eps); out = weight * y.to(dtype)``.

    Saved: x32 by pow and mul (the residual itself when already fp32; an fp32 copy otherwise),
    rsqrt (1 fp32 per token), y.to(dtype) by the weight multiply when the weight is trainable.
    The output is saved by the next linear (counted there). Per token bytes.
    """
    if not input_requires_grad:
        return 0
    saved = h * FP32 + FP32  # x32 and rsqrt
    if not m.weights_frozen:
        saved += h * m.a  # y.to(dtype), kept for the weight's gradient
    return saved


def _layernorm_saved(h: int, m: ActMode, input_requires_grad: bool = True) -> int:
    """nn.LayerNorm: native_layer_norm saves its input, mean and rstd (fp32 per token)."""
    if not input_requires_grad:
        return 0
    return h * m.a + 2 * FP32


def _linear_input_saved(in_features: int, m: ActMode, lora: bool) -> int:
    """A linear saves its input for the weight gradient; a frozen base linear saves nothing, but
    its LoRA A saves the same input (PEFT lora/layer.py Linear.forward) -- so the input is saved in
    both cases. Shared inputs are counted once by the caller."""
    return in_features * m.a


def _lora_mid_saved(m: ActMode, train: TrainSpec, n_wrapped: int) -> int:
    """LoRA B saves A's output (r per token) for each wrapped linear; fp32 adapters."""
    if not train.finetune.peft:
        return 0
    return n_wrapped * train.lora_r * FP32


def layer_saved_bytes_per_token(model: ModelSpec, layer: Layer, train: TrainSpec,
                                input_requires_grad: bool = True) -> int:
    """Bytes autograd keeps for one decoder layer, per token, without checkpointing.

    Llama-style block (transformers modeling_llama.py, SDPA on CPU uses the flash kernel that
    saves its output and a logsumexp per head):
      norm1 (+ residual input), q/k/v input (norm output), rotated q and k, v, SDPA output and
      logsumexp, residual sum, norm2, MLP: gate, act(gate), up, act*up (down_proj's input).
    """
    m = act_mode(train)
    h, q, kv = model.hidden_size, model.q_dim, model.kv_dim
    heads = model.num_heads
    lora = train.finetune.peft
    norm = _layernorm_saved if model.norm_kind == "layer" else _norm_saved
    total = 0
    # ---- attention block
    total += norm(h, m, input_requires_grad)
    total += h * m.a  # norm output: input of q/k/v projections
    total += (q + kv) * m.a  # q and k after RoPE, saved by SDPA
    total += kv * m.a  # v
    if train.attn == "eager":
        # eager: softmax output (fp32 upcast then cast back) saved per head x S x S -- see
        # attention_transient; stored per token as heads*seq elements
        s = train.seq
        total += heads * s * m.a * 2 + heads * s * m.a  # attn weights (softmax out + dropout-free matmul input)
        total += q * m.a
    else:
        total += q * m.a + heads * FP32  # SDPA output (also o_proj's input) + logsumexp
    total += norm(h, m, True)  # norm2 input: residual sum (requires grad after attention)
    total += h * m.a  # norm2 output: MLP input
    # ---- MLP
    if layer.moe is not None:
        total += _moe_saved(model, layer, train, m)
    elif model.mlp_kind == "gated":
        i = layer.mlp_intermediate
        total += 4 * i * m.a  # gate, act(gate), up, act*up
    else:
        i = layer.mlp_intermediate
        total += 2 * i * m.a  # fc_in output (act input), act output (fc_out input)
    n_wrapped = len([l for l in layer.linears if l.lora_target]) if lora else 0
    total += _lora_mid_saved(m, train, n_wrapped)
    return total


def _moe_saved(model: ModelSpec, layer: Layer, train: TrainSpec, m: ActMode) -> int:
    """Routed MoE: router logits (E fp32), top-k weights; each token's hidden is gathered k times
    and runs a gated expert MLP (4 x expert width), plus shared experts as a dense gated MLP."""
    moe = layer.moe
    per = moe.num_experts * FP32 + moe.top_k * (FP32 + 8)  # router logits, routing weights, indices
    per += moe.top_k * (model.hidden_size * m.a + 4 * moe.expert_intermediate * m.a)
    if moe.shared_intermediate:
        per += 4 * moe.shared_intermediate * m.a
    return per


def embedding_saved_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """Embedding backward keeps the token ids (int64), when the embedding is trainable."""
    if train.finetune.peft:
        return 0
    return rows * train.seq * 8


def final_norm_saved_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    m = act_mode(train)
    norm = _layernorm_saved if model.norm_kind == "layer" else _norm_saved
    return rows * train.seq * norm(model.hidden_size, m)


def checkpoint_saved_bytes_per_token(model: ModelSpec, train: TrainSpec) -> int:
    """With gradient checkpointing (non-reentrant, torch.utils.checkpoint), a layer keeps only
    its input hidden state."""
    return model.hidden_size * act_mode(train).a


def decoder_saved_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """All decoder layers' saved activations for one forward of ``rows`` sequences."""
    tokens = rows * train.seq
    if train.grad_ckpt:
        return tokens * checkpoint_saved_bytes_per_token(model, train) * model.num_layers
    total = 0
    for idx, layer in enumerate(model.layers):
        # with a frozen embedding (PEFT), the first layer's input does not require grad
        irg = not (train.finetune.peft and idx == 0)
        total += tokens * layer_saved_bytes_per_token(model, layer, train, irg)
    return total


def recompute_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """Checkpointing recomputes one layer in backward: its full activations live at once."""
    if not train.grad_ckpt:
        return 0
    tokens = rows * train.seq
    return max(tokens * layer_saved_bytes_per_token(model, layer, train) for layer in model.layers)


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
        out += 7 * tok * cols * FP32 + tok * cols  # 7 fp32 tiles + 1 bool tile
    return out


def full_logits_saved_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """ORPO / CPO materialize ``outputs.logits`` [rows, S, V] in compute dtype and keep it for
    backward, plus ORPO's chosen NLL (cross-entropy's log_softmax output over [B, S-1, V])."""
    s, v = train.seq, model.vocab_size
    a = act_mode(train).a
    saved = rows * s * v * a
    if train.method.value == "orpo":
        saved += (rows // 2) * (s - 1) * v * FP32
    return saved


def full_logits_transient_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """Transient on top of the saved logits while the losses are formed: one [rows, S-1, V]
    fp32 shifted copy (``logits[:, :-1].contiguous()`` / log-softmax)."""
    return rows * (train.seq - 1) * model.vocab_size * FP32


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
