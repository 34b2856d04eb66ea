"""Model-state memory terms: one pure function per term, integer bytes out.

Counted: parameters, LoRA adapters, the reference, gradients, optimizer state, fp32 master copies,
the batch tensors the collator builds, and (CUDA only) context and allocator slack. Not counted
here: activations and the log-prob path (``refplan.activations``).
"""

from __future__ import annotations

from refplan import quant as quant_terms
from refplan.methods import Finetune
from refplan.model import ModelSpec
from refplan.settings import ALL_LINEAR, Device, Dtype, Quant, Sharding, StateRule
from refplan.spec import TrainSpec
from refplan.units import MIB, dtype_bytes

#: Device memory a CUDA training process uses outside torch's caching allocator, as NVML sees it:
#: the CUDA context with its cuBLAS/cuDNN handles (726,466,560 B measured: NVML used after CUDA init,
#: a bf16 matmul and an SDPA call, minus used before init, minus torch's reserved bytes) plus the
#: driver's own reservation on an otherwise idle GPU (644,939,776 B used before init). Measured with
#: bench/gpu/calibrate.py on an NVIDIA H200, driver 580.159.04, torch 2.11.0+cu130
#: (reports/gpu/cuda_terms.csv); the bench's NVML peaks minus reserved peaks agree (1.35 GiB).
CUDA_CONTEXT_BYTES = 726_466_560 + 644_939_776
#: cuBLAS's workspace, allocated through the caching allocator on first use (32 MiB: the 1-byte
#: probe of bench/gpu/calibrate.py found 33,554,944 B allocated).
CUBLAS_WORKSPACE_BYTES = 32 * MIB
#: Reserved exceeds allocated by the caching allocator's rounding (512 B blocks, 2 MiB / 20 MiB
#: segments, CUDACachingAllocator.cpp) and fragmentation: max_reserved / max_allocated had a median
#: of 1.069 over the GPU bench matrix (reports/bench-gpu/bench.csv, DPO/KTO 1.04-1.08, ORPO/SimPO
#: with their fp32 full-vocabulary tensors 1.25-1.31). We add 7 %.
ALLOCATOR_SLACK_NUM, ALLOCATOR_SLACK_DEN = 7, 100


def weight_bytes(model: ModelSpec, dtype: str, quant: str = "none", double_quant: bool = False,
                 bias_dtype: str | None = None, cpu_packed: bool = False) -> int:
    """Bytes of one full copy of the weights in ``dtype``, or loaded k-bit through bitsandbytes with its
    quantization state: exact per quantized linear, everything transformers leaves unquantized in
    ``dtype`` (:func:`refplan.quant.kbit_weight_bytes`). ``bias_dtype``: the quantized linears' biases
    (the load dtype unless a forward has cast them); ``cpu_packed``: 4-bit weights after bitsandbytes'
    CPU repack. Non-parameter buffers (``ModelSpec.buffer_bytes``) come with every copy."""
    dtype = Dtype.parse(dtype, "--dtype")
    quant = Quant.parse(quant, "--ref-quant")
    if quant is Quant.NONE:
        return model.params * dtype.bytes + model.buffer_bytes
    bias = Dtype.parse(bias_dtype, "--dtype") if bias_dtype is not None else dtype
    return quant_terms.kbit_weight_bytes(model, dtype, quant, double_quant, bias, cpu_packed) + model.buffer_bytes


def lora_params(model: ModelSpec, r: int, targets: tuple[str, ...] = (ALL_LINEAR,)) -> int:
    """LoRA parameters: r*(in+out) per wrapped linear (A: r x in, B: out x r), PEFT LoraLayer."""
    return sum(l.count * l.lora_rank_mult * r * (l.in_features + l.out_features) for l in model.lora_linears(targets))


def lora_tensors(model: ModelSpec, targets: tuple[str, ...] = (ALL_LINEAR,)) -> int:
    """Number of LoRA parameter tensors (two per wrapped linear)."""
    return 2 * len(model.lora_linears(targets))


def param_tensors(model: ModelSpec) -> int:
    """Number of parameter tensors of the full model (AdamW keeps one ``step`` scalar per tensor)."""
    n = 1  # embeddings
    n += sum(layer.tensor_count for layer in model.layers)
    if model.final_norm is not None:
        n += 2 if model.final_norm.bias else 1
    n += sum(2 if l.bias else 1 for l in model.outer_linears)
    if model.embed_norm is not None:
        n += 2 if model.embed_norm.bias else 1
    if model.lm_head is not None:
        n += 2 if model.lm_head.bias else 1
    elif model.head_bias:
        n += 1  # a tied head's bias
    if model.structure.learned_positions:
        n += 1  # learned position embeddings
    return n


def adapter_dtype(train: TrainSpec) -> str:
    """dtype of the trained LoRA adapters (their gradients and AdamW moments follow it).

    PEFT upcasts adapter weights to fp32 (``autocast_adapter_dtype=True``, peft tuners_utils), except:
    - under DeepSpeed ZeRO-3 with a non-quantized base TRL 1.16 passes ``autocast_adapter_dtype=False``
      and the adapters keep the base dtype (dpo_trainer.py ~650);
    - on a k-bit base DPOTrainer and KTOTrainer cast every trainable parameter to bf16 after wrapping
      (dpo_trainer.py ~726, kto_trainer.py ~777: QLoRA's bf16 adapters), whatever the load dtype;
      ORPO and CPO do not (their adapters stay fp32). Measured: bench QLoRA rows."""
    if train.sharding is Sharding.ZERO3 and train.finetune is Finetune.LORA:
        return train.dtype.value
    if train.finetune is Finetune.QLORA and train.method.caps.needs_reference:
        return "bf16"
    return "fp32"


def reference_adapter_dtype(train: TrainSpec) -> str:
    """dtype of the frozen "ref" adapter (ref-adapter strategy): PEFT's ``add_adapter`` creates it in fp32
    (``autocast_adapter_dtype``), and TRL's bf16 cast on a k-bit base touches trainable parameters only,
    so it stays fp32 there while the trained adapter is bf16 (measured: a 4-bit KTO ref-adapter burst)."""
    if train.finetune is Finetune.QLORA:
        return "fp32"
    return adapter_dtype(train)


def trainable_params(model: ModelSpec, train: TrainSpec) -> int:
    if train.finetune.peft:
        return lora_params(model, train.lora_r, train.lora_targets)
    return model.params


def trainable_dtype(train: TrainSpec) -> str:
    return adapter_dtype(train) if train.finetune.peft else train.dtype


def kbit_bias_dtype(train: TrainSpec, quant: Quant) -> Dtype:
    """The dtype a k-bit linear's bias ends up in: ``Linear4bit.forward`` casts it in place to the compute
    dtype, ``Linear8bitLt.forward`` to its input's (bitsandbytes nn/modules.py)."""
    return train.kbit_compute_dtype if quant is Quant.NF4 else train.compute_dtype


def policy_repacked_on_cpu(model: ModelSpec, train: TrainSpec) -> bool:
    """A 4-bit QLoRA policy that bitsandbytes repacks for its CPU kernel: TRL's precompute pass runs the
    policy in eval mode without grad (dpo_trainer.py ``_precompute_ref_logps``; ``from_pretrained``
    leaves a model in eval mode), which on an AVX512-BF16 CPU triggers the repack
    (:func:`refplan.quant.linear4bit_cpu_packed_bytes`). From then on training goes through the same
    no-grad kernel: the base linears pass no gradient to their input (bitsandbytes 0.50, measured)."""
    return (train.device is Device.CPU and train.policy_quant is Quant.NF4 and train.strategy.caps.precompute_phase
            and quant_terms.cpu_repacks(model))


def reference_repacked_on_cpu(model: ModelSpec, train: TrainSpec) -> bool:
    """A 4-bit separate reference on CPU: TRL runs it in eval mode without grad, so bitsandbytes repacks it at
    its first forward (see :func:`policy_repacked_on_cpu`)."""
    return train.device is Device.CPU and train.ref_quant is Quant.NF4 and quant_terms.cpu_repacks(model)


def policy_weight_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """The policy's frozen-or-trained base weights. QLoRA: its k-bit base (:func:`weight_bytes`), the rest in
    the load dtype -- or fp32 after ``prepare_model_for_kbit_training`` (peft utils/other.py: every
    fp16/bf16 parameter that is not a ``Params4bit`` is cast to fp32)."""
    quant = train.policy_quant
    if quant is Quant.NONE:
        return weight_bytes(model, train.dtype)
    rest = Dtype.FP32 if train.kbit_prepared else train.dtype
    bias = Dtype.FP32 if train.kbit_prepared else kbit_bias_dtype(train, quant)
    return weight_bytes(model, rest, quant, train.double_quant, bias, policy_repacked_on_cpu(model, train))


def lora_weight_bytes(model: ModelSpec, train: TrainSpec) -> int:
    if not train.finetune.peft:
        return 0
    return lora_params(model, train.lora_r, train.lora_targets) * dtype_bytes(adapter_dtype(train))


def reference_weight_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """Bytes the reference holds during training.

    separate / sync: a full copy in ``--ref-dtype`` (or 8/4-bit, as :func:`weight_bytes`); TRL reloads
    it from ``config._name_or_path`` (dpo_trainer.py ~927). ref-adapter: a copy of the trained adapter
    named "ref" (:func:`reference_adapter_dtype`). unwrap, precompute, none: nothing.
    """
    s = train.strategy.value
    if s in ("separate", "sync"):
        return weight_bytes(model, train.reference_dtype, train.ref_quant, train.double_quant,
                            kbit_bias_dtype(train, train.ref_quant), reference_repacked_on_cpu(model, train))
    if s == "ref-adapter":
        return lora_params(model, train.lora_r, train.lora_targets) * dtype_bytes(reference_adapter_dtype(train))
    return 0


def gradient_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """One gradient per trainable parameter, in the parameter's dtype (autograd accumulates
    ``.grad`` in the leaf's dtype)."""
    return trainable_params(model, train) * dtype_bytes(trainable_dtype(train))


def optimizer_state_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """Optimizer state for the trainable parameters.

    - adamw (the HF Trainer's default ``adamw_torch_fused`` since torch 2.8, training_args.py):
      exp_avg + exp_avg_sq in the parameter dtype (torch.optim.AdamW ``_init_group``:
      ``zeros_like(p)``) + a 4-byte fp32 ``step`` per tensor, on the parameter's device when
      fused (``adamw-torch``, the non-fused implementation, keeps the same state).
    - adamw-8bit: bitsandbytes 8-bit blockwise states (Dettmers et al. 2021), per tensor as
      :func:`bnb8_state_bytes`, + the two 1 KiB dynamic maps.
    - paged-adamw: bitsandbytes ``PagedAdamW32bit``: two fp32 states per parameter whatever its dtype
      (``get_state_buffer(p, dtype=torch.float32)``), no step tensor; paged (evictable unified memory)
      on CUDA, counted in full; plain memory on CPU. Measured (CPU): bench/quant_inventory.py.
    - sgd: none (HF's default SGD has momentum 0).
    - adafactor: factored second moment: rows + cols per matrix, full vector for 1-D (Shazeer &
      Stern 2018); HF Adafactor, beta1=None.
    """
    n = trainable_params(model, train)
    pbytes = dtype_bytes(trainable_dtype(train))
    ntens = lora_tensors(model, train.lora_targets) if train.finetune.peft else param_tensors(model)
    step_bytes = 4 * ntens
    rule = train.optim.caps.state
    if rule is StateRule.ADAM:
        return 2 * n * pbytes + step_bytes
    if rule is StateRule.ADAM_8BIT:
        return BNB_QMAPS_BYTES + sum(bnb8_state_bytes(numel, emb) for numel, emb in trainable_tensors(model, train))
    if rule is StateRule.BNB_32BIT:
        return 8 * n
    if rule is StateRule.NONE:
        return 0
    return _adafactor_elems(model, train) * 4


#: bitsandbytes 8-bit optimizers below this many elements keep fp32 states (``min_8bit_size``)
BNB_MIN_8BIT_SIZE = 4096
#: their blockwise absmax: one fp32 per 256 elements per state (optim/optimizer.py ``init_state``)
BNB_OPTIM_BLOCK = 256
#: the signed and unsigned 8-bit dynamic maps an 8-bit bitsandbytes optimizer builds once (2 x 256 fp32)
BNB_QMAPS_BYTES = 2 * 256 * 4


def bnb8_state_bytes(numel: int, embedding: bool = False) -> int:
    """State of one tensor under bitsandbytes' 8-bit AdamW (0.50, ``Optimizer2State.init_state``), measured
    (CPU): two uint8 states and an fp32 absmax per 256-element block each; two fp32 states for a tensor
    under 4096 elements, or an embedding (the HF Trainer registers ``nn.Embedding`` weights for 32-bit
    optimization: trainer.py ``register_module_override``). ``step`` is a Python int."""
    if embedding or numel < BNB_MIN_8BIT_SIZE:
        return 8 * numel
    return 2 * numel + 2 * 4 * -(-numel // BNB_OPTIM_BLOCK)


def bnb_cpu_step_bytes(numel: int, eight_bit: bool, fp32_param: bool) -> int:
    """Temporaries of a bitsandbytes AdamW step on one tensor on CPU (backends/cpu/ops.py), measured (CPU:
    bench/quant_inventory.py): the 8-bit path (``_optimizer_update_8bit_blockwise_cpu``) dequantizes
    both states to fp32 and builds the fp32 gradient and ``sqrt(v) / c`` -- 20 bytes per element; the
    32-bit path (``_optimizer_update_32bit_cpu``: paged-adamw, and 8-bit AdamW's tensors under 4096
    elements or embeddings) the scaled gradient, ``sqrt(v) + eps`` and the update -- 12 bytes per
    element. A parameter that is not fp32 adds its fp32 copy (4 bytes per element). On CUDA both are
    fused in-place kernels."""
    per = 20 if eight_bit and numel >= BNB_MIN_8BIT_SIZE else 12
    return numel * (per + (0 if fp32_param else 4))


def trainable_tensors(model: ModelSpec, train: TrainSpec) -> list[tuple[int, bool]]:
    """``(elements, is an embedding)`` of every trainable tensor: LoRA's A and B per wrapped linear, or every
    parameter of the model (token and learned-position embeddings, each linear's weight and bias, norms,
    the LM head unless tied)."""
    if train.finetune.peft:
        return [(n, False) for n in lora_tensor_params(model, train)]
    return model_tensors(model)


def lora_tensor_params(model: ModelSpec, train: TrainSpec) -> list[int]:
    """Elements of each LoRA tensor (A: r x in, B: out x r, per wrapped linear)."""
    r = train.lora_r
    return [l.count * l.lora_rank_mult * r * f for l in model.lora_linears(train.lora_targets)
            for f in (l.in_features, l.out_features)]


def model_tensors(model: ModelSpec) -> list[tuple[int, bool]]:
    """``(elements, is an embedding)`` of every parameter tensor of the model."""
    tokens = model.vocab_size * model.hidden_size
    out = [(tokens, True)] + ([(model.embed_params - tokens, True)] if model.embed_params > tokens else [])
    for layer in model.layers:
        for l in layer.linears:
            out.append((l.count * l.in_features * l.out_features, False))
            if l.bias:
                out.append((l.count * l.out_features, False))
        for nm in layer.norms:
            out += [(nm.size, False)] * (2 if nm.bias else 1)
        if layer.extra_params:
            out.append((layer.extra_params, False))
    out += [(model.final_norm.size, False)] * (2 if model.final_norm.bias else 1)
    if model.lm_head is not None:
        out.append((model.lm_head.in_features * model.lm_head.out_features, False))
        if model.lm_head.bias:
            out.append((model.lm_head.out_features, False))
    return out


def _adafactor_elems(model: ModelSpec, train: TrainSpec) -> int:
    if train.finetune.peft:
        r = train.lora_r
        return sum(l.count * ((r + l.in_features) + (l.out_features + r)) for l in model.lora_linears(train.lora_targets))
    total = 0
    for layer in model.layers:
        for l in layer.linears:
            total += l.count * (l.in_features + l.out_features + (l.out_features if l.bias else 0))
        total += sum(nm.params for nm in layer.norms) + layer.extra_params
    total += model.vocab_size + model.token_dim  # embeddings (factored)
    total += sum(l.in_features + l.out_features + (l.out_features if l.bias else 0) for l in model.outer_linears)
    if model.lm_head is not None:
        total += model.lm_head.in_features + model.lm_head.out_features + (model.vocab_size if model.head_bias else 0)
    elif model.head_bias:
        total += model.vocab_size
    if model.embed_norm is not None:
        total += model.embed_norm.params
    return total + (model.final_norm.params if model.final_norm is not None else 0)


def batch_bytes(train: TrainSpec) -> int:
    """Collated batch tensors (int64): DPO/ORPO/CPO: input_ids, attention_mask, completion_mask
    (or labels) for 2B rows; KTO: input_ids, attention_mask, completion_mask for the example and
    its KL pair. The Trainer's dataloader prefetches the next batch, so two are live
    (accelerate DataLoaderShard)."""
    rows = train.sequences_per_forward * (2 if train.method.caps.kl_forward else 1)
    return 2 * 3 * rows * train.seq * 8
