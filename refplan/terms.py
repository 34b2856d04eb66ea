"""Model-state memory terms: one pure function per term, integer bytes out.

Counted: parameters, LoRA adapters, the reference, gradients, optimizer state, fp32 master copies,
the batch tensors the collator builds, and (CUDA only) context and allocator slack. Not counted
here: activations and the log-prob path (``refplan.activations``).
"""

from __future__ import annotations

from refplan.model import ModelSpec
from refplan.spec import TrainSpec
from refplan.settings import ALL_LINEAR, Sharding, StateRule
from refplan.units import MIB, dtype_bytes

#: bitsandbytes NF4 (QLoRA, Dettmers et al. 2023, sec. 3 "Double Quantization"): 4-bit weights,
#: one 8-bit absmax per 64-weight block and one fp32 constant per 256 blocks:
#: 0.5 + 1/64 + 4/(64*256) bytes per weight. Expressed as an exact fraction of bytes.
NF4_NUM, NF4_DEN = 64 * 256 * 4 + 256 * 8 + 4 * 8, 64 * 256 * 8  # bytes*8 per weight, exact
#: bitsandbytes LLM.int8 (Dettmers et al. 2022): int8 weights + one fp32 scale per output row.
INT8_BYTES_PER_WEIGHT = 1

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


def _quantizable_params(model: ModelSpec) -> int:
    """Parameters bitsandbytes quantizes: the decoder layers' nn.Linear weights (not embeddings,
    norms, LM head or biases)."""
    return sum(l.count * l.in_features * l.out_features for l in model.all_linears)


def weight_bytes(model: ModelSpec, dtype: str, quant: str = "none", double_quant: bool = True) -> int:
    """Bytes of one full copy of the weights in ``dtype``, or k-bit with its quantization constants.

    Source: bitsandbytes Linear4bit/Linear8bitLt storage (see NF4 constants above); the LM head,
    embeddings, norms and biases stay in ``dtype`` (transformers' BitsAndBytes integration skips
    ``lm_head`` by default); non-parameter buffers (``buffer_bytes``) come with every copy. Without
    double quantization each 64-weight block keeps an fp32 absmax (bitsandbytes ``quantize_4bit``:
    0.5 + 4/64 bytes per weight).
    """
    total = model.params * dtype_bytes(dtype) + model.buffer_bytes
    if quant == "none":
        return total
    q = _quantizable_params(model)
    rest = (model.params - q) * dtype_bytes(dtype) + model.buffer_bytes
    if quant == "4bit":
        if not double_quant:
            return rest + -(-q // 2) + -(-q // 64) * 4
        return rest + -(-q * NF4_NUM // NF4_DEN)
    if quant == "8bit":
        # one fp32 scale per output row of every quantized linear
        rows = sum(l.count * l.out_features for l in model.all_linears)
        return rest + q * INT8_BYTES_PER_WEIGHT + rows * 4
    raise ValueError(f"unknown quantization {quant!r}")


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
    """PEFT upcasts adapter weights to fp32 (``autocast_adapter_dtype=True``, peft tuners_utils),
    so LoRA weights, their gradients and AdamW moments are fp32 whatever the base dtype -- except
    under DeepSpeed ZeRO-3 with a non-quantized base, where TRL 1.16 passes
    ``autocast_adapter_dtype=False`` and the adapters keep the base dtype (dpo_trainer.py ~650)."""
    if train.sharding is Sharding.ZERO3 and train.finetune.value == "lora":
        return train.dtype.value
    return "fp32"


def trainable_params(model: ModelSpec, train: TrainSpec) -> int:
    if train.finetune.peft:
        return lora_params(model, train.lora_r, train.lora_targets)
    return model.params


def trainable_dtype(train: TrainSpec) -> str:
    return adapter_dtype(train) if train.finetune.peft else train.dtype


def policy_weight_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """The policy's frozen-or-trained base weights (QLoRA: its k-bit base)."""
    quant = ("4bit" if train.quant_bits == 4 else "8bit") if train.finetune.value == "qlora" else "none"
    return weight_bytes(model, train.dtype, quant, train.double_quant)


def lora_weight_bytes(model: ModelSpec, train: TrainSpec) -> int:
    if not train.finetune.peft:
        return 0
    return lora_params(model, train.lora_r, train.lora_targets) * dtype_bytes(adapter_dtype(train))


def reference_weight_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """Bytes the reference holds during training.

    separate / sync: a full copy in ``--ref-dtype`` (or 8/4-bit); TRL reloads it from
    ``config._name_or_path`` (dpo_trainer.py ~927). ref-adapter: a copy of the trained adapter
    named "ref". unwrap, precompute, none: nothing.
    """
    s = train.strategy.value
    if s in ("separate", "sync"):
        return weight_bytes(model, train.reference_dtype, train.ref_quant, train.double_quant)
    if s == "ref-adapter":
        return lora_weight_bytes(model, train)
    return 0


def gradient_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """One gradient per trainable parameter, in the parameter's dtype (autograd accumulates
    ``.grad`` in the leaf's dtype)."""
    return trainable_params(model, train) * dtype_bytes(trainable_dtype(train))


def optimizer_state_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """Optimizer state for the trainable parameters.

    - adamw (the HF Trainer's default ``adamw_torch_fused`` since torch 2.8, training_args.py) /
      paged-adamw: exp_avg + exp_avg_sq in the parameter dtype (torch.optim.AdamW ``_init_group``:
      ``zeros_like(p)``) + a 4-byte fp32 ``step`` per tensor, on the parameter's device when
      fused (``adamw-torch``, the non-fused implementation, keeps the same state). paged-adamw keeps
      the same bytes in unified memory that can be evicted; counted in full (worst case).
    - adamw-8bit: bitsandbytes 8-bit blockwise states: 2 bytes per parameter + one fp32 absmax
      per 2048-block per state (Dettmers et al. 2021).
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
        return 2 * n + 2 * 4 * -(-n // 2048)
    if rule is StateRule.NONE:
        return 0
    return _adafactor_elems(model, train) * 4


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


def master_weight_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """fp32 master weights: kept by DeepSpeed ZeRO (bf16/fp16 config) for low-precision trainable
    weights (DeepSpeed ``bf16_optimizer`` / ``stage_1_and_2``: ``single_partition_of_fp32_groups``).
    The plain HF Trainer keeps none: a bf16-loaded model trains in pure bf16."""
    if train.sharding.caps.master_weights and trainable_dtype(train) != "fp32":
        return trainable_params(model, train) * 4
    return 0


def batch_bytes(train: TrainSpec) -> int:
    """Collated batch tensors (int64): DPO/ORPO/CPO: input_ids, attention_mask, completion_mask
    (or labels) for 2B rows; KTO: input_ids, attention_mask, completion_mask for the example and
    its KL pair. The Trainer's dataloader prefetches the next batch, so two are live
    (accelerate DataLoaderShard)."""
    rows = train.sequences_per_forward * (2 if train.method.caps.kl_forward else 1)
    return 2 * 3 * rows * train.seq * 8
