"""Tensors one forward keeps outside the decoder layers: the embedding's saved ids (and an
embedding norm), the final norm, the attention masks, the rotary tables, the backbone's output and
the projections around the decoder, and autocast's weight cache. Units: bytes; each function covers one forward of ``rows``
sequences. Split from :mod:`refplan.activations`, whose helpers it reads.
"""

from __future__ import annotations

from refplan.activations import FP32, _mask_kinds, _norm_saved, _own_sdpa, act_mode, attention_impl
from refplan.attention import _alibi_mask_cast
from refplan.model import ModelSpec, Positions, Role
from refplan.settings import Quant
from refplan.spec import TrainSpec
from refplan.units import dtype_bytes


def embedding_saved_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """Embedding backward keeps the token ids (int64) when the embedding is trainable; GPT-2's
    learned position embedding keeps its [1, S] position ids; a norm on the embeddings (BLOOM)
    keeps what a norm keeps (nothing under PEFT: frozen weights, an input without grad)."""
    if train.finetune.peft:
        return 0
    out = rows * train.seq * 8
    if model.structure.learned_positions:
        out += (rows if model.structure.positions_per_row else 1) * train.seq * 8
    if model.embed_norm is not None:
        out += rows * train.seq * _norm_saved(model, model.hidden_size, act_mode(train))
    return out


def final_norm_saved_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    if model.final_norm is None:
        return 0
    return rows * train.seq * _norm_saved(model, model.hidden_size, act_mode(train))


def mask_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """The explicit attention mask [rows, 1, S, S] built once per forward, when one is built
    (:func:`attention_masked`): kept by every layer's SDPA in the activation dtype on CUDA; on
    CPU each layer keeps its own float copy (counted per layer) and the boolean mask outlives the
    forward only as the input of checkpointed layers."""
    impl = attention_impl(model, train)
    if impl == "falcon":
        s, a = train.seq, act_mode(train).a
        if model.structure.positions is Positions.ALIBI:
            # FalconModel.forward folds the ALiBi biases into one float [rows, heads, S, S] mask in the
            # embeddings' dtype: the same tensor in every layer, kept by the SDPA call (none under the
            # math kernel or eager, which add it; none when autocast casts it, each layer keeping its
            # own cast: _alibi_mask_cast) and by checkpointed layers
            m = act_mode(train)
            kept = (_own_sdpa(model, train) and not _alibi_mask_cast(model, m)) or train.grad_ckpt
            return rows * model.num_heads * s * s * m.w if kept else 0
        # built every forward (``mask_always``); on CPU each layer's SDPA call keeps its own float
        # copy (_attention_saved), on CUDA one saved mask is assumed as on the standard path; else
        # the mask is kept only as the input of checkpointed layers: boolean (masking_utils
        # ``sdpa_mask``) unless eager attention asks for a float one
        if _own_sdpa(model, train) and train.device != "cpu":
            return rows * s * s * a
        if not train.grad_ckpt:
            return 0
        return rows * s * s * (a if train.attn.value == "eager" else 1)
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
    if train.device == "cpu":
        # the float copies each layer's SDPA keeps are counted per layer (_attention_saved); the
        # boolean masks themselves outlive the forward only as inputs of checkpointed layers
        return _mask_kinds(model, train) * rows * train.seq * train.seq if train.grad_ckpt else 0
    return _mask_kinds(model, train) * rows * train.seq * train.seq * act_mode(train).a


def backbone_output_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """The backbone's last hidden state, alive until the head consumes it: OPT's ``project_out``
    output (a matmul: the compute dtype), else the final norm's output or the last residual sum, in
    the residual stream's dtype -- fp32 under autocast from fp32 weights, norms and adds not being
    autocast ops (measured: bench/layer_inventory.py, fp32-autocast mode)."""
    m = act_mode(train)
    projected = any(l.role is Role.PROJECT_OUT for l in model.outer_linears)
    return rows * train.seq * model.token_dim * (m.a if projected else m.w)


def outer_linears_saved_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """What the linears outside the layers keep (OPT's ``project_in`` on the embeddings and
    ``project_out`` on the last hidden state), one input each, as a layer's linears do: the input
    for a trainable weight (under autocast from fp32 weights, a compute-dtype copy of the input and
    of the weight), or, for a LoRA-wrapped one, what :func:`_linear_inputs_saved` counts for a group of
    one -- the input (a compute-dtype copy under autocast) and A's output. ``project_in``'s input is
    the frozen embedding's output under PEFT: it needs nothing unless wrapped. Under PEFT with
    autocast, also autocast's kept casts of the fp32 adapters and (from fp32 weights) of a frozen
    weight whose input takes a gradient (project_out's)."""
    m = act_mode(train)
    tokens = rows * train.seq
    total = 0
    for lin in model.outer_linears:
        width = lin.in_features
        if not train.finetune.peft:
            total += tokens * width * m.a
            if m.autocast and m.w != m.a:
                total += lin.in_features * lin.out_features * m.a
            continue
        # project_in reads the frozen embedding's output: no input gradient, so its matmuls keep no
        # weight for one (as activations.layer_weight_copies_bytes for a first layer under PEFT)
        input_grad = lin.role is not Role.PROJECT_IN
        if model.wraps(lin, train.lora_targets):
            total += tokens * ((width + train.lora_r) * m.a if m.autocast else (width + train.lora_r) * FP32)
            if m.autocast and m.adapter != m.a:
                # autocast's casts of the fp32 adapters, kept by their matmuls: B's always, A's for A's
                # input gradient (measured: layer_inventory, OPT-350m layout LoRA bf16 / fp32-autocast)
                total += lin.lora_rank_mult * train.lora_r * ((width if input_grad else 0) + lin.out_features) * m.a
        if input_grad and m.autocast and m.w != m.a and train.policy_quant is Quant.NONE:
            total += lin.in_features * lin.out_features * m.a  # the frozen weight's cast, for the input gradient
    return total


def rope_table_bytes(model: ModelSpec, train: TrainSpec, rows: int) -> int:
    """cos and sin tables [1, S, rotary_dim] computed once per forward and saved by every
    layer's RoPE multiply (transformers ``*RotaryEmbedding``: ``cos.to(dtype=x.dtype)``, x the
    hidden states), in the residual stream's dtype: fp32 under autocast from fp32 weights -- always
    fp32 where the family skips that cast (:attr:`Structure.rope_tables_fp32`, OLMo 2); none when
    no layer rotates (all NoPE)."""
    if model.structure.positions is not Positions.ROPE or len(model.structure.nope_layers) == model.num_layers:
        return 0
    if model.structure.mla:
        # DeepSeek-V2: one complex64 table ``torch.polar(ones, freqs)`` [1, S, rope / 2] whatever the
        # dtype, applied to q_pe and k_pe only
        return train.seq * dict(model.structure.mla)["qk_rope_head_dim"] * 4
    rot = model.head_dim
    pct = model.structure.rotary_fraction
    if pct:
        rot = int(model.head_dim * pct)
    # the tables are ``cat((freqs, freqs))`` over ``arange(0, rot, 2)``: an odd rotary width rounds up
    rot += rot % 2
    return 2 * train.seq * rot * (4 if model.structure.rope_tables_fp32 else act_mode(train).w)


def autocast_weight_cache_bytes(model: ModelSpec, train: TrainSpec, requires_grad: bool,
                                ref_dtype: str | None = None) -> int:
    """All decoder linear weights' compute-dtype copies held by autocast's cache until the
    forward's autocast context exits: the cache keeps casts of leaves that require grad -- TRL
    leaves ``requires_grad=True`` on its reference, so a no-grad reference forward fills it too."""
    m = act_mode(train)
    wbytes = dtype_bytes(ref_dtype) if ref_dtype else m.w
    if not m.autocast or wbytes == m.a or not requires_grad:
        return 0
    return sum(l.in_features * l.out_features for l in model.all_linears if l.count == 1) * m.a
