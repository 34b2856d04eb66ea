"""How a run stores its activations -- element sizes and the autocast / k-bit switches every
activation term reads -- derived once from the TrainSpec (:func:`act_mode`)."""

from __future__ import annotations

from dataclasses import dataclass

from refplan.model import Linear, ModelSpec
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
    #: ``native_layer_norm`` on CPU returns its mean and rstd in the parameters' dtype -- the input's,
    #: or fp32 when a 16-bit input meets fp32 weights (ATen ``layer_norm_cpu``: ``param_scalar_type``);
    #: CUDA's kernel keeps them in fp32 (its accumulate type). Measured: bench/layer_inventory.py,
    #: bf16 LayerNorm families keep bf16 [rows, S, 1] mean / rstd
    ln_stats_in_input_dtype: bool = False


def act_mode(train: TrainSpec) -> ActMode:
    from refplan.terms import adapter_dtype  # terms imports this module's dependencies, not this module

    a = dtype_bytes(train.compute_dtype)
    # Not modelled: after prepare_model_for_kbit_training on a 16-bit load (and in ORPO/CPO's QLoRA with
    # bf16) the non-quantized weights are fp32, so the residual stream and every k-bit linear's output
    # (Linear4bit returns its input's dtype) stay fp32 under autocast; the activations below assume the
    # load dtype (measured: -13 % to -17 % on such CPU bursts; README, known gaps).
    w = dtype_bytes(train.dtype)
    # a 16-bit compute dtype runs under the Trainer's autocast unless the run has none (bf16 = fp16 =
    # False on a 16-bit load): then PEFT casts each LoRA input up to its fp32 adapters, nothing casts back
    return ActMode(a=a, weights_frozen=train.finetune.peft, w=w, autocast=a != FP32 and not train.no_autocast,
                   adapter=dtype_bytes(adapter_dtype(train)) if train.finetune.peft else FP32,
                   base_keeps_input=train.policy_quant is Quant.INT8, ln_stats_in_input_dtype=train.device == "cpu")


def linear_out_bytes(model: ModelSpec, lin: Linear | None, m: ActMode) -> int:
    """Bytes per element of a linear's output: the compute dtype -- or the weights' dtype for a biased
    linear that adds its bias after the matmul (:attr:`Structure.bias_after_matmul`, Falcon): the
    bf16 product plus an fp32 bias promotes to fp32 under autocast from fp32 weights (measured:
    bench/layer_inventory.py, Falcon fp32-autocast: the GELU keeps an fp32 input)."""
    if lin is not None and lin.bias and model.structure.bias_after_matmul:
        return max(m.a, m.w)
    return m.a
