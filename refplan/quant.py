"""bitsandbytes k-bit linears: what each quantized linear stores, and the transients of its forward and
backward, by device. Pure arithmetic, integer bytes.

Which linears are quantized: transformers' ``replace_with_bnb_linear`` (integrations/bitsandbytes.py)
swaps every plain ``nn.Linear`` (and GPT-2's ``Conv1D``) for ``bnb.nn.Linear4bit`` / ``Linear8bitLt``,
except the modules ``get_keys_to_not_convert`` keeps (quantizers/base.py: the output embedding, every
tied weight, the last parameter's module) -- so the LM head, embeddings and norms stay in the load
dtype, and so do MoE experts and routers, which transformers 5.x stores as bare ``nn.Parameter``
(``MixtralExperts``, ``*TopKRouter``), not ``nn.Linear``. Biases stay unquantized.

What was measured where. ``bench/quant_inventory.py`` measures a single layer of each kind under
refplan's live-bytes tracker (which runs bitsandbytes' custom ops with the tracker still active, so
their kernels' temporaries count: :func:`refplan.harness.tracker._run_inside`) on this project's CPU
machine: bitsandbytes 0.50.0, torch 2.13 CPU, an AVX512-BF16 Xeon. Those terms are marked *measured
(CPU)*. The CUDA terms are read from bitsandbytes 0.50's ``backends/cuda/ops.py`` and
``autograd/_functions.py`` and marked *from the code (CUDA)*: no GPU was available to measure them.
"""

from __future__ import annotations

from refplan.model import Linear, ModelSpec, Role
from refplan.settings import Device, Dtype, Quant
from refplan.units import dtype_bytes

#: ``Params4bit`` blocksize (transformers' BitsAndBytesConfig leaves bitsandbytes' default 64)
BLOCK_4BIT = 64
#: nested (double) quantization quantizes the absmax in blocks of 256 (functional.quantize_4bit)
NESTED_BLOCK = 256
#: ``quant_state.code``: the 16 fp32 values of NF4 / FP4 (functional.get_4bit_type), one tensor per linear
CODE_4BIT_BYTES = 16 * 4
#: nested state: ``state2.code`` is a per-linear copy of the 256-entry fp32 dynamic map
#: (``quantize_blockwise``: ``code.to(A.device, copy=True)``) and ``offset`` an fp32 scalar
NESTED_CODE_BYTES = 256 * 4
NESTED_OFFSET_BYTES = 4
#: bitsandbytes' AVX512-BF16 CPU kernel (``_convert_weight_packed_for_cpu``) needs out_features in
#: blocks of 32 and in_features in whole 64-weight absmax blocks
CPU_PACK_BLOCK_N = 32


def quantized_linears(model: ModelSpec) -> list[Linear]:
    """Every linear bitsandbytes replaces, once per layer it appears in (see the module docstring)."""
    return [lin for layer in model.layers for lin in layer.linears
            if lin.count == 1 and lin.role is not Role.ROUTER]


def _blocks(n: int) -> int:
    return -(-n // BLOCK_4BIT)


def linear4bit_bytes(n: int, double_quant: bool) -> int:
    """Bytes one ``Linear4bit`` of ``n`` weights stores (measured (CPU); the layout is the same on CUDA):

    - the packed weight, two 4-bit codes per byte: ceil(n / 2) uint8 (``quantize_4bit`` pads an odd n);
    - ``quant_state.absmax``: one fp32 per 64-weight block, or with nested quantization one uint8
      per block plus ``state2.absmax`` (one fp32 per 256 blocks), ``state2.code`` (1024 B) and the
      fp32 ``offset``;
    - ``quant_state.code`` (64 B).

    QLoRA's "0.5 + 1/64 + 4/(64*256) bytes per weight" (Dettmers et al. 2023, sec. 3) is the limit of
    the nested case for large n. Not counted: the 1 KiB dynamic map bitsandbytes caches once per
    process (``name2qmap["dynamic"]``)."""
    blocks = _blocks(n)
    out = -(-n // 2) + CODE_4BIT_BYTES
    if not double_quant:
        return out + 4 * blocks
    return out + blocks + 4 * -(-blocks // NESTED_BLOCK) + NESTED_CODE_BYTES + NESTED_OFFSET_BYTES


def linear4bit_cpu_packed_bytes(n: int, double_quant: bool) -> int:
    """A ``Linear4bit`` after bitsandbytes repacked it for its AVX512-BF16 CPU kernel, measured (CPU): the
    first forward in eval mode without grad (a reference model, or the policy during TRL's precompute
    pass) calls ``_convert_weight_packed_for_cpu`` (functional.py), which re-tiles the packed weight
    (same n / 2 bytes), dequantizes a nested absmax and stores the absmax as bf16 [in/64, out] -- two
    bytes per block either way; the nested ``state2`` is dropped, its ``offset`` kept."""
    return n // 2 + CODE_4BIT_BYTES + 2 * _blocks(n) + (NESTED_OFFSET_BYTES if double_quant else 0)


def linear8bit_bytes(lin: Linear) -> int:
    """Bytes one ``Linear8bitLt`` stores (LLM.int8, Dettmers et al. 2022), measured (CPU): the int8 weight
    ``CB`` [out, in] and one fp32 row scale ``SCB`` per output row (``int8_vectorwise_quant``)."""
    return lin.in_features * lin.out_features + 4 * lin.out_features


def cpu_repacks(model: ModelSpec) -> bool:
    """True when every quantized linear fits bitsandbytes' CPU repack (out_features % 32 == 0 and
    in_features % 64 == 0). On an AVX512-BF16 CPU a 4-bit model with another shape fails its first
    eval-mode no-grad forward (``AssertionError: N must be divisible by block_n`` or a reshape error);
    the planner then assumes no repack."""
    return all(lin.out_features % CPU_PACK_BLOCK_N == 0 and lin.in_features % BLOCK_4BIT == 0
               for lin in quantized_linears(model))


def kbit_weight_bytes(model: ModelSpec, dtype: Dtype, quant: Quant, double_quant: bool, bias_dtype: Dtype,
                      cpu_packed: bool = False) -> int:
    """One copy of the weights loaded k-bit: the quantized linears as above, everything else in ``dtype``.

    ``bias_dtype``: ``Linear4bit.forward`` casts its bias to the compute dtype in place on the first
    call (``bias.data = bias.data.to(x.dtype)``), ``Linear8bitLt`` to its input's dtype.
    ``cpu_packed``: 4-bit weights as :func:`linear4bit_cpu_packed_bytes` leaves them."""
    qlins = quantized_linears(model)
    q_params = sum(l.in_features * l.out_features for l in qlins)
    q_bias = sum(l.out_features for l in qlins if l.bias)
    rest = (model.params - q_params - q_bias) * dtype_bytes(dtype) + q_bias * dtype_bytes(bias_dtype)
    if quant is Quant.INT8:
        return rest + sum(linear8bit_bytes(l) for l in qlins)
    store = linear4bit_cpu_packed_bytes if cpu_packed else linear4bit_bytes
    return rest + sum(store(l.in_features * l.out_features, double_quant) for l in qlins)


# --------------------------------------------------------------------------------------------------
# transients, per quantized linear of ``tokens`` rows
# --------------------------------------------------------------------------------------------------

def nested_absmax_bytes(n: int, double_quant: bool) -> int:
    """A nested absmax dequantized to fp32 for one matmul (``dequantize_blockwise`` + offset)."""
    return 4 * _blocks(n) if double_quant else 0


def backward_transient_bytes(lin: Linear, quant: Quant, load: Dtype, compute: Dtype) -> int:
    """Extra bytes while the input gradient of one frozen k-bit linear is computed (training mode), on top
    of the activation gradients (incoming and outgoing) the planner counts anyway:

    - 4-bit (``MatMul4Bit.backward``), measured (CPU), the same code on CUDA: the weight dequantized
      in ``quant_state.dtype`` -- the dtype the weight had when quantized, i.e. the load dtype --
      (``F.dequantize_4bit``), and its cast to the gradient's dtype (the compute dtype) when the two
      differ; peak op ``aten.mm`` (same dtypes) or ``aten._to_copy`` (the cast). A nested absmax is
      dequantized too but freed before the matmul.
    - 8-bit, measured (CPU: ``MatMul8bitFp.backward``; CUDA ``MatMul8bitLt.backward`` does the
      same): ``CB.to(dtype_A).mul_(SCB / 127)``, the weight in the input's dtype; peak op ``aten.mm``.
    Added to the moment where the layer's outgoing gradient is also counted, this is exact when the
    weight and the gradient share a dtype and an upper bound by the outgoing gradient otherwise (the
    fp32 dequant is freed before the bf16 matmul makes it): bench/quant_inventory.py."""
    n = lin.in_features * lin.out_features
    if quant is Quant.INT8:
        return n * dtype_bytes(compute)
    out = n * dtype_bytes(load)
    if compute is not load:
        out += n * dtype_bytes(compute)
    return out


def input_grad_weight_bytes(lin: Linear, quant: Quant, load: Dtype, compute: Dtype) -> tuple[int, int]:
    """The frozen k-bit linear's weight as its input-gradient matmul needs it, as ``(before the matmul, while
    it writes the input gradient)``: :func:`backward_transient_bytes` split at the matmul.

    4-bit (``MatMul4Bit.backward``: ``grad_output @ F.dequantize_4bit(B, state).to(grad_output.dtype).t()``):
    the dequantized weight in the load dtype and, when the compute dtype differs, its cast -- both alive
    until the cast returns, the load-dtype one then freed, so the matmul runs beside the cast alone.
    8-bit (``CB.to(dtype_A).mul_(SCB / 127)``): one weight in the input's dtype throughout."""
    n = lin.in_features * lin.out_features
    if quant is Quant.INT8:
        return n * dtype_bytes(compute), n * dtype_bytes(compute)
    during = n * dtype_bytes(compute)
    return (n * dtype_bytes(load) + (during if compute is not load else 0)), during


def no_grad_forward_transient_bytes(lin: Linear, tokens: int, quant: Quant, double_quant: bool, act: Dtype,
                                    compute: Dtype, device: Device, eval_mode: bool, cpu_packed: bool) -> int:
    """Extra bytes of one frozen k-bit linear's forward without grad (a reference forward, or the policy in
    TRL's precompute pass), beyond its input and its output in ``act``:

    - 4-bit repacked for the CPU kernel (``cpu_packed``), measured (CPU, AVX512-BF16): ``gemv_4bit``
      runs bitsandbytes' bf16 kernel whatever the compute dtype: the input cast to bf16 and the bf16
      output, then cast to ``act`` (functional.gemv_4bit, backends/cpu/ops.py).
    - 4-bit otherwise (``matmul_4bit`` without grad -> ``gemm_4bit``), measured (CPU: the default
      kernel); from the code (CUDA, past 1536 rows: ``_dequant_linear_fallback``): the weight
      dequantized into the compute dtype, a nested absmax in fp32 (CUDA keeps two), and, when the
      compute dtype is not ``act``, the input and output casts of ``Linear4bit.forward`` (its peak is
      the larger of the dequant moment and the cast back).
    - 8-bit, eval mode, or any mode on CUDA (``MatMul8bitLt``), measured (CPU): the input quantized
      row-wise to int8 (T x in bytes + an fp32 scale per row), the int32 product
      (``int8_linear_matmul``: 4 T x out) and ``int8_mm_dequant``'s ``A * (row * col) * c``: the
      fp32 ``row * col`` and the product are alive with the int32 tensor (peak op ``aten.mul``
      inside ``bitsandbytes::int8_mm_dequant``), the last multiply makes the output (its cast to a
      16-bit ``act`` happens with the int32 tensor still alive: the same bytes). Outlier columns (LLM.int8's threshold 6.0) are data-dependent and not
      counted; without any the path allocates nothing more. CUDA runs the same ops (its dequant
      kernel fused: an upper bound there).
    - 8-bit, train mode on CPU (``MatMul8bitFp``), measured (CPU): the weight dequantized into the
      input's dtype (``CB.to(A.dtype).mul_(SCB / 127)``).
    """
    n_in, n_out = lin.in_features, lin.out_features
    n = n_in * n_out
    a = dtype_bytes(act)
    if quant is Quant.INT8:
        if device is Device.CPU and not eval_mode:
            return n * a
        return tokens * n_in + 4 * tokens + 8 * tokens * n_out
    if cpu_packed:
        return tokens * n_out * 2 + (tokens * n_in * 2 if act is not Dtype.BF16 else 0)
    c = dtype_bytes(compute)
    absmax = nested_absmax_bytes(n, double_quant) * (2 if device is Device.CUDA else 1)
    if compute is act:
        return n * c + absmax
    x_c, y_c, y_a = tokens * n_in * c, tokens * n_out * c, tokens * n_out * a
    return max(x_c + n * c + absmax + y_c, x_c + y_c + y_a) - y_a


def largest_no_grad_forward_transient_bytes(model: ModelSpec, tokens: int, quant: Quant, double_quant: bool,
                                            act: Dtype, compute: Dtype, device: Device, eval_mode: bool,
                                            cpu_packed: bool) -> int:
    """:func:`no_grad_forward_transient_bytes` of the linear where it is largest (one matmul runs at a time)."""
    return max((no_grad_forward_transient_bytes(l, tokens, quant, double_quant, act, compute, device, eval_mode,
                                                cpu_packed) for l in quantized_linears(model)), default=0)


def cpu_repack_transient_bytes(n: int) -> int:
    """The one-time repack of a 4-bit linear of ``n`` weights at its first eval-mode no-grad forward on an
    AVX512-BF16 CPU, measured (CPU): ``_convert_weight_packed_for_cpu`` keeps the int32 unpacked codes
    (4n), their uint8 copy (n), the re-tiled copy (n) and the two shifted halves (n / 2 each) alive at
    once: 7n bytes, made by ``aten.bitwise_or`` (its peak op)."""
    return 7 * n


def largest_cpu_repack_transient_bytes(model: ModelSpec) -> int:
    """:func:`cpu_repack_transient_bytes` of the model's largest quantized linear (one repacks at a time)."""
    return max((cpu_repack_transient_bytes(l.in_features * l.out_features) for l in quantized_linears(model)),
               default=0)
