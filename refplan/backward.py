"""The backward of one decoder layer, moment by moment: what is live besides the saved tensors.

Pure arithmetic, like :mod:`refplan.activations` (which says what a layer saves); this module says
which of those saved tensors are gone, and which gradients and forward locals are alive, at each
instant of the layer's backward that can hold its peak. Units: bytes; "per token" means per row
position of the forward (rows x seq tokens), "per layer" a fixed amount.

The order, for a pre-norm layer (``LlamaDecoderLayer``; torch's autograd engine runs the ready
node created last first):

1. the layer output's gradient reaches the MLP's down projection; with gradient checkpointing
   (non-reentrant ``torch.utils.checkpoint``) the first node that unpacks a saved tensor
   recomputes the layer's forward (``_checkpoint_hook.unpack_hook``), which stops at the layer's
   last saved tensor (``early_stop``: ``_recomputation_hook.pack_hook`` raises
   ``_StopRecomputationError``) with the forward's local tensors alive at that instant;
2. the down projection's backward, then the MLP's (the gated product, gate and up), freeing the
   MLP's saved tensors as it goes;
3. the backward of the norm that feeds the MLP (an fp32 chain of Python ops for RMSNorm), then
   attention's, with the MLP's tensors gone.

Sandwich and post-norm layers (Gemma 2/3, OLMo 2) add a norm after the MLP: its saved tensors are
the layer's last (the recompute runs through the down projection's output), its backward runs
first. A layer's end -- its saved tensors freed, all its gradients made -- is the planner's
(:func:`refplan.backward_walk._backward_moments`). Routed-expert (MoE) layers keep one moment. Attention's
own backward is not a moment: it runs once the MLP's tensors are freed.

Every term was derived from the installed code path and checked with the trace engine's
inventories (:func:`refplan.trace.peak_inventory`) on llama, Gemma 2/3, OLMo 2, Phi-3, Qwen3,
GPT-NeoX, Starcoder2 and Qwen3-MoE shapes, varying hidden, MLP width, heads, LoRA rank and length.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from refplan.activations import (
    FP32,
    _linear_inputs_saved,
    _mlp_saved,
    _norm_saved,
    act_mode,
    lora_keeps_input_as_is,
    matmuls_save_input_as_is,
    peft_input_cast_bytes,
)
from refplan.mla import routed_grads_bytes
from refplan.model import (
    Input,
    Layer,
    Linear,
    MlpStyle,
    ModelSpec,
    NormPlacement,
    NormStyle,
    Role,
)
from refplan.spec import TrainSpec
from refplan.terms import adapter_dtype
from refplan.units import dtype_bytes


def mlp_saved_bytes_per_token(model: ModelSpec, layer: Layer, train: TrainSpec) -> int:
    """The MLP's share of :func:`layer_saved_bytes_per_token`, per token: its intermediates and what
    its linears keep of their inputs (the MLP input and hidden activation)."""
    m = act_mode(train)
    return _mlp_saved(model, layer, train, m) + _linear_inputs_saved(model, layer, train, m,
                                                                     (Input.MLP_IN, Input.MLP_HIDDEN,
                                                                                        Input.SHARED_HIDDEN))


def norm_saved_bytes_per_token(model: ModelSpec, train: TrainSpec) -> int:
    """What one hidden-width norm whose input requires grad saves, per token (:func:`_norm_saved`)."""
    return _norm_saved(model, model.hidden_size, act_mode(train))


def norm_weight_operand_bytes_per_token(model: ModelSpec, train: TrainSpec) -> int:
    """The part of an RMSNorm's saved tensors kept for its weight's gradient (``weight * y`` keeps
    ``y``), per token; zero with a frozen weight (PEFT) and for LayerNorm (one fused kernel)."""
    if model.structure.norm is NormStyle.LAYER:
        return 0
    m = act_mode(train)
    h = model.hidden_size
    return _norm_saved(model, h, m) - _norm_saved(model, h, replace(m, weights_frozen=True))








@dataclass(frozen=True)
class LayerMoment:
    """One instant of a decoder layer's backward, relative to the layer's saved tensors (all of
    them, with checkpointing once recomputed) and the residual stream's gradient, both alive."""

    name: str
    #: bytes per token of forward locals the recompute holds beyond the saved tensors
    forward_locals: int = 0
    #: bytes per token of the layer's saved tensors already freed
    saved_freed: int = 0
    #: bytes of the layer's autocast / adapter weight copies already freed
    copies_freed: int = 0
    #: bytes per token of activation gradients alive beyond the residual stream's
    act_grads: int = 0
    #: bytes of the layer's parameter gradients made so far (before sharding)
    weight_grads: int = 0


def layer_moments(model: ModelSpec, layer: Layer, train: TrainSpec) -> tuple[LayerMoment, ...]:
    """The instants of ``layer``'s backward that can hold the step's peak, in order: ``recompute``
    (with checkpointing: the forward's locals at their largest), ``post-mlp norm`` (sandwich and
    post placements: that norm's fp32 gradient chain), ``down`` (the down projection's backward, its
    saved tensors still alive), ``mlp`` (the MLP's gradients at their widest, the down projection's
    saved tensors freed), ``mlp norm`` (the norm feeding the MLP: its fp32 chain once the MLP's
    saved tensors are gone). A routed-expert layer has one, ``experts``."""
    if not dense_mlp(layer):
        return (LayerMoment("experts", act_grads=moe_backward_grad_bytes_per_token(model, layer, train)),)
    moments = []
    if train.grad_ckpt:
        moments.append(LayerMoment("recompute", forward_locals=recompute_locals_bytes_per_token(model, layer, train),
                                   act_grads=recompute_grad_bytes_per_token(model, layer, train)))
    post_norm = post_mlp_norm_saved_bytes_per_token(model, train)
    if post_norm:
        moments.append(LayerMoment("post-mlp norm", saved_freed=norm_weight_operand_bytes_per_token(model, train),
                                   act_grads=rms_norm_backward_grad_bytes_per_token(model)))
    down_copies, down_grads = _linear_backward_bytes(model, _mlp_roles(layer)[1], train)
    moments.append(LayerMoment("down", saved_freed=post_norm,
                               act_grads=down_backward_grad_bytes_per_token(model, layer, train),
                               weight_grads=down_weight_grad_transient_bytes(model, layer, train)))
    moments.append(LayerMoment("mlp", saved_freed=post_norm + down_saved_bytes_per_token(model, layer, train),
                               copies_freed=down_copies,
                               act_grads=mlp_backward_grad_bytes_per_token(model, layer, train),
                               weight_grads=down_grads))
    if mlp_norm_backward_follows(model, layer):
        copies, grads = mlp_layer_bytes(model, layer, train)
        moments.append(LayerMoment("mlp norm", copies_freed=copies, weight_grads=grads,
                                   saved_freed=(post_norm + mlp_saved_bytes_per_token(model, layer, train)
                                                + norm_weight_operand_bytes_per_token(model, train)),
                                   act_grads=rms_norm_backward_grad_bytes_per_token(model)))
    return tuple(moments)


# -- the MLP's shape as the backward sees it --------------------------------------------------------

def _mlp_roles(layer: Layer) -> tuple[Linear | None, Linear | None]:
    """The MLP's last input projection (up, fused gate_up or plain fc_in) and its down projection."""
    return layer.first(Role.MLP_UP, Role.MLP_GATE_UP, Role.MLP_IN), layer.first(Role.MLP_DOWN)


def dense_mlp(layer: Layer) -> bool:
    """A dense MLP with a down projection (not routed experts): the layers modelled moment by moment."""
    return layer.moe is None and layer.mlp_intermediate > 0 and _mlp_roles(layer)[1] is not None


def _lora_on(model: ModelSpec, train: TrainSpec, lin: Linear | None) -> bool:
    return lin is not None and train.finetune.peft and model.wraps(lin, train.lora_targets)


def _adapter_bytes(train: TrainSpec) -> int:
    return dtype_bytes(adapter_dtype(train))


def _lora_output_bytes(train: TrainSpec) -> tuple[int, int, int]:
    """Element bytes of a LoRA layer's base output, of ``lora_B``'s output (and its ``* scaling``)
    and of their sum (type promotion): under autocast every matmul returns the compute dtype."""
    m = act_mode(train)
    branch = m.a if m.autocast else _adapter_bytes(train)
    return m.a, branch, max(m.a, branch)


def _post_mlp_norm(model: ModelSpec) -> bool:
    """A norm reads the MLP output before the residual add (sandwich and post placements)."""
    return model.structure.placement is not NormPlacement.PRE


def post_mlp_norm_saved_bytes_per_token(model: ModelSpec, train: TrainSpec) -> int:
    """What a norm after the MLP (sandwich / post placements) saves, per token: the layer's last
    saved tensors, and the first its backward frees."""
    return norm_saved_bytes_per_token(model, train) if _post_mlp_norm(model) else 0


def down_saved_bytes_per_token(model: ModelSpec, layer: Layer, train: TrainSpec) -> int:
    """What the down projection keeps for its backward, per token, freed once that backward has
    run: its input (``mm`` keeps it for a trainable weight; LoRA A keeps its own cast copy, or the
    input itself without casts) and, with LoRA, A's output (kept by B). A frozen base keeps no
    activation. Part of :func:`refplan.activations.layer_saved_bytes_per_token`."""
    _, down = _mlp_roles(layer)
    m = act_mode(train)
    if not train.finetune.peft:
        return down.in_features * m.a
    if not _lora_on(model, train, down):
        return 0
    return down.in_features * m.a + train.lora_r * down.lora_rank_mult * _lora_output_bytes(train)[1]


# -- 1. the recompute --------------------------------------------------------------------------------

def mlp_carry_bytes_per_token(model: ModelSpec, layer: Layer, train: TrainSpec) -> int:
    """Tensors the decoder layer's forward holds while its MLP runs that nothing saves, per token
    (``LlamaDecoderLayer.forward``: ``residual`` and the MLP's input are locals until the MLP
    returns): the residual sum, unless the MLP's norm keeps it as its own saved input (LayerNorm
    always; an RMSNorm when the residual stream is fp32: ``x.to(torch.float32)`` returns ``x``);
    the MLP input (the norm's output), unless its matmuls keep it as is
    (:func:`matmuls_save_input_as_is`). A post-norm layer's MLP reads the
    residual sum itself; a parallel block carries its attention output to the final three-way sum
    (``GPTNeoXLayer``: ``mlp_output + attn_output + hidden_states``), its residual being the layer
    input, which the checkpoint keeps."""
    m = act_mode(train)
    h, st = model.hidden_size, model.structure
    mlp_input = 0 if matmuls_save_input_as_is(model, layer, train, Input.MLP_IN) else h * m.w
    if st.parallel_residual:
        return mlp_input + h * m.a
    if st.placement is NormPlacement.POST:
        return mlp_input
    norm_keeps_residual = st.norm is NormStyle.LAYER or m.w == FP32
    return mlp_input + (0 if norm_keeps_residual else h * m.w)


def recompute_locals_bytes_per_token(model: ModelSpec, layer: Layer, train: TrainSpec) -> int:
    """The largest set of forward locals alive while the checkpoint recomputes the layer, beyond
    its saved tensors (less those not saved yet at that instant), per token; the largest of

    - the down projection: the carried tensors (:func:`mlp_carry_bytes_per_token`) and, with LoRA
      on it, its input (unless A keeps it as is), PEFT's cast of it
      (:func:`peft_input_cast_bytes`) and the base layer's output. In a
      pre-norm layer ``lora_B`` keeps the layer's last saved tensor, so the recompute stops there,
      before B's output; with a norm after the MLP it goes on through ``result +
      lora_B(lora_A(x)) * scaling`` (base output, B's output and its scaled copy, then the sum). A
      frozen down projection saves only its weight, after its input exists.
    - a norm after the MLP, which saves last: the residual sum and the MLP output (its fp32 copy is
      saved) -- the MLP's input died with the MLP's frame.
    - LoRA on the last input projection (up / gate_up / fc_in): base output, ``lora_B``'s output
      and the scaled copy (then their sum) at once with PEFT's input cast, while the tensors saved
      after it (the down projection's, a post-MLP norm's) do not exist yet.

    Measured with the trace engine, to the byte: llama, LoRA r 32, bf16: 8448 bytes per token at
    the stop (h = 384, i = 1024: residual, norm output and base output 3 x 2h, the down input 2i
    and its fp32 cast 4i); LoRA fp32: 3968 at the up projection."""
    if not train.grad_ckpt or not dense_mlp(layer):
        return 0
    m = act_mode(train)
    h = model.hidden_size
    last_in, down = _mlp_roles(layer)
    i = down.in_features
    carry = mlp_carry_bytes_per_token(model, layer, train)
    after = post_mlp_norm_saved_bytes_per_token(model, train)
    base_b, branch_b, sum_b = _lora_output_bytes(train)
    if _lora_on(model, train, down):
        down_local = (0 if lora_keeps_input_as_is(train, m.a) else i * m.a) + i * peft_input_cast_bytes(train, m.a)
        down_local += h * (base_b + branch_b + max(branch_b, sum_b) if after else base_b)
    elif train.finetune.peft:
        down_local = i * m.a + (h * m.a if after else 0)
    else:
        down_local = h * m.a if after else 0
    points = [carry + down_local - after]
    if after:
        residual = carry - (0 if matmuls_save_input_as_is(model, layer, train, Input.MLP_IN) else h * m.w)
        points.append(residual + (h * m.a if m.a != FP32 else 0))
    if _lora_on(model, train, last_in):
        o = last_in.out_features
        forming = o * (base_b + branch_b + max(branch_b, sum_b) - sum_b)
        later = down_saved_bytes_per_token(model, layer, train) + after
        if last_in.role is Role.MLP_GATE_UP:
            later += i * m.a  # act(gate), saved by the product after the fused projection
        points.append(carry + h * peft_input_cast_bytes(train, m.w) + forming - later)
    return max(max(points), 0)


def mlp_output_grad_bytes_per_token(model: ModelSpec, train: TrainSpec) -> int:
    """The MLP output's gradient where it is a tensor of its own next to the residual stream's:
    under autocast from fp32 weights the residual add's backward casts it to the MLP output's dtype
    (the autograd engine casts each input's gradient to that input's dtype, engine.cpp
    ``validate_outputs``); after a post-MLP norm it is that norm's input gradient. Alive until the
    down projection's base backward has consumed it."""
    m = act_mode(train)
    if _post_mlp_norm(model) or m.w != m.a:
        return model.hidden_size * m.a
    return 0


def recompute_grad_bytes_per_token(model: ModelSpec, layer: Layer, train: TrainSpec) -> int:
    """Activation gradients alive while the recompute runs, beyond the residual stream's: the MLP
    output's (:func:`mlp_output_grad_bytes_per_token`) and, when LoRA wraps the down projection, the
    ``* scaling`` backward's output, made before ``lora_B``'s backward unpacks the first saved
    tensor. With a norm after the MLP the recompute starts in that norm's backward, after its fp32
    cast of the incoming gradient (``.to(input_dtype)`` / ``.type_as(x)``)."""
    if not train.grad_ckpt or not dense_mlp(layer):
        return 0
    m = act_mode(train)
    h = model.hidden_size
    if _post_mlp_norm(model):
        return h * FP32 if m.a != FP32 else 0
    out = mlp_output_grad_bytes_per_token(model, train)
    if _lora_on(model, train, _mlp_roles(layer)[1]):
        out += h * _lora_output_bytes(train)[1]
    return out


# -- 2. the MLP's backward ---------------------------------------------------------------------------

def down_backward_grad_bytes_per_token(model: ModelSpec, layer: Layer, train: TrainSpec) -> int:
    """Activation gradients alive while the down projection's (base) backward runs, its saved
    tensors not yet freed, per token: its incoming gradient where it is a tensor of its own
    (:func:`mlp_output_grad_bytes_per_token`) and the input gradient it makes (i, compute dtype).
    The peak of a plain MLP's backward under autocast (Starcoder2 shape, ``AddmmBackward0``)."""
    return mlp_output_grad_bytes_per_token(model, train) + _mlp_roles(layer)[1].in_features * act_mode(train).a


def mlp_backward_grad_bytes_per_token(model: ModelSpec, layer: Layer, train: TrainSpec) -> int:
    """Activation gradients alive at the worst moment of the MLP's backward once the down
    projection's saved tensors are freed (:func:`down_saved_bytes_per_token`), per token, i = the
    MLP width, in the compute dtype (the MLP's tensors are autocast matmul outputs):

    - the gated product's backward (``act(gate) * up``, ``MulBackward0``): its incoming gradient
      and the two it returns, 3 i; a plain MLP's activation backward, 2 i (BLOOM's Python GELU
      backward: 6 i, :attr:`Structure.act_backward_live`);
    - LoRA on the down projection: the base layer's and the adapter path's input gradients and
      their sum, 3 i; before that, PEFT's cast backward (``ToCopyBackward0``) holds the gradient
      in the adapter dtype with the compute-dtype one, while the MLP output's gradient
      (:func:`mlp_output_grad_bytes_per_token`) waits for the base layer's backward.

    Measured with the trace engine (llama tiny): every fine-tune x dtype combination to the byte."""
    m = act_mode(train)
    _, down = _mlp_roles(layer)
    i = down.in_features
    points = [(3 if model.structure.mlp is MlpStyle.GATED else model.structure.act_backward_live) * i * m.a]
    if _lora_on(model, train, down):
        points.append(3 * i * m.a)
        cast = peft_input_cast_bytes(train, m.a)
        if cast:
            points.append(i * (m.a + cast) + mlp_output_grad_bytes_per_token(model, train))
    return max(points)


def _linear_backward_bytes(model: ModelSpec, lin: Linear, train: TrainSpec) -> tuple[int, int]:
    """(weight copies freed, gradients made) by one linear's backward: its autocast weight copy
    (fp32 weights under autocast) and LoRA adapter copies
    (:func:`refplan.activations.layer_weight_copies_bytes`), and its weight's (or adapters')
    gradients, in the trainable dtype."""
    m = act_mode(train)
    copies = lin.in_features * lin.out_features * m.a if m.autocast and m.w != m.a else 0
    if _lora_on(model, train, lin):
        adapters = lin.lora_rank_mult * train.lora_r * (lin.in_features + lin.out_features)
        if m.autocast and _adapter_bytes(train) != m.a:
            copies += adapters * m.a
        return copies, adapters * _adapter_bytes(train)
    if train.finetune.peft:
        return copies, 0
    return copies, lin.params * m.w


def down_weight_grad_transient_bytes(model: ModelSpec, layer: Layer, train: TrainSpec) -> int:
    """The down projection's weight gradient while its backward makes it: under autocast from fp32
    weights ``mm`` returns the gradient of the compute-dtype copy, cast to fp32 after
    (``ToCopyBackward0``); otherwise the gradient itself."""
    _, grads = _linear_backward_bytes(model, _mlp_roles(layer)[1], train)
    m = act_mode(train)
    if train.finetune.peft or not m.autocast or m.w == m.a:
        return grads
    return grads // m.w * m.a


def mlp_layer_bytes(model: ModelSpec, layer: Layer, train: TrainSpec) -> tuple[int, int]:
    """(weight copies freed, gradients made) once the whole MLP's backward has run."""
    freed = grads = 0
    for lin in layer.linears:
        if lin.role.input in (Input.MLP_IN, Input.MLP_HIDDEN) and lin.count == 1:
            f, g = _linear_backward_bytes(model, lin, train)
            freed, grads = freed + f, grads + g
    return freed, grads


# -- 3. the norms' backward ----------------------------------------------------------------------------

def rms_norm_backward_grad_bytes_per_token(model: ModelSpec) -> int:
    """Activation gradients inside one RMSNorm's backward at its widest, per token. The norm is
    Python ops in fp32 (``LlamaRMSNorm``: ``x32 * torch.rsqrt(x32.pow(2).mean(-1) + eps)``), so its
    backward is an fp32 chain of h-wide tensors: the gradient of ``x32`` from the product, held
    until the ``rsqrt`` path's is added to it, that path's ``MeanBackward`` expansion and
    ``PowBackward``'s ``grad * (2 * x.pow(1))`` (three tensors: the C++ temporaries live to the end
    of the expression) -- five at once, once the weight's operand is freed
    (:func:`norm_weight_operand_bytes_per_token`). Measured with the trace
    engine (llama with h > i, bf16; Gemma 2 and 3 shapes). Zero for ``nn.LayerNorm`` (one fused
    backward kernel)."""
    if model.structure.norm is NormStyle.LAYER:
        return 0
    return 5 * model.hidden_size * FP32


def mlp_norm_backward_follows(model: ModelSpec, layer: Layer) -> bool:
    """The norm that feeds the MLP runs its backward right after the MLP's, with attention's saved
    tensors still alive: pre-norm and sandwich layers with an RMSNorm -- not parallel blocks (their
    MLP norm reads the layer input) nor post-norm ones (the MLP reads the residual sum)."""
    st = model.structure
    return (dense_mlp(layer) and not st.parallel_residual and st.placement is not NormPlacement.POST
            and st.norm is not NormStyle.LAYER)


# -- routed experts --------------------------------------------------------------------------------

def moe_backward_grad_bytes_per_token(model: ModelSpec, layer: Layer, train: TrainSpec) -> int:
    """Activation gradients alive early in a routed-expert layer's backward, per token, k = experts
    per token: three [k x tokens, h] gradients of the routed rows -- the expert outputs' (cloned out
    of the combining view), their product with the routing weights (``MulBackward0``) and the
    zero-filled buffer the gather's backward scatters into (``index_backward``:
    ``grad.new_zeros(...).index_put_(...)``), in the compute dtype. Measured with the trace engine
    (Qwen3-MoE shape, fp32 and bf16). The rest of the experts' backward is not modelled. Routing
    weights kept in fp32 (DeepSeek-V2) make the three fp32: :func:`refplan.mla.routed_grads_bytes`."""
    if layer.moe is None:
        return 0
    m = act_mode(train)
    return routed_grads_bytes(model, layer, m) or 3 * layer.moe.top_k * model.hidden_size * m.a
