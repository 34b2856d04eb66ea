"""`refplan estimate`: the planner's face. Imports the standard library only (rich for tables)."""

from __future__ import annotations

import argparse

from refplan.errors import PlanError


def register(sub) -> None:
    p = sub.add_parser("estimate", help="peak memory per method x strategy for a model (pure arithmetic)",
                       description="Estimate the per-device peak memory of preference training.")
    p.add_argument("--model", required=True, help="hub id, local dir / config.json, or catalog name")
    p.add_argument("--method", help="comma list of dpo,ipo,kto,orpo,simpo (default: all)")
    p.add_argument("--strategy", help="comma list of separate,unwrap,ref-adapter,precompute,sync,none "
                                      "(default: all applicable)")
    p.add_argument("--finetune", default="full", help="full | lora | qlora (default full)")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--lora-targets", default="all-linear", help="'all-linear' or module names, e.g. q_proj,v_proj")
    p.add_argument("--dtype", default="bf16", help="policy load dtype: bf16 | fp16 | fp32 (default bf16)")
    p.add_argument("--autocast", default=None, help="autocast compute dtype when weights are fp32 (bf16|fp16)")
    p.add_argument("--ref-dtype", default=None, help="reference dtype (default: --dtype)")
    p.add_argument("--ref-quant", default="none", help="none | 8bit | 4bit (separate reference)")
    p.add_argument("--batch", type=int, default=1, help="per_device_train_batch_size (pairs; KTO: examples)")
    p.add_argument("--seq", type=int, default=1024, help="padded tokens per sequence (prompt+completion)")
    p.add_argument("--precompute-batch", type=int, default=None, help="precompute_ref_batch_size")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing")
    p.add_argument("--optim", default="adamw", help="adamw (HF default, fused) | adamw-torch | adamw-8bit | paged-adamw | sgd | adafactor")
    p.add_argument("--attn", default="sdpa", help="sdpa | eager | flash")
    p.add_argument("--gpus", type=int, default=1, help="data-parallel ranks")
    p.add_argument("--zero", type=int, default=0, help="DeepSpeed ZeRO stage 0-3")
    p.add_argument("--fsdp", action="store_true", help="FSDP full sharding")
    p.add_argument("--offload", default="none", help="none | optimizer | params: what a ZeRO/FSDP run keeps in CPU "
                                                     "memory (params: ZeRO-3 or FSDP)")
    p.add_argument("--quant-bits", type=int, default=4, help="the policy's k-bit load under --finetune qlora: 4 | 8")
    p.add_argument("--double-quant", action=argparse.BooleanOptionalAction, default=True,
                   help="NF4 double quantization of the absmax constants (bnb_4bit_use_double_quant)")
    p.add_argument("--gpu", default=None, help="GPU name for fits / does-not-fit (e.g. H100-80GB, A10G)")
    p.add_argument("--device", default="cuda", help="cuda | cpu (cpu drops CUDA-only terms)")
    p.add_argument("--format", default="table", help="table | json | csv")
    p.add_argument("--offline", action="store_true", help="never touch the network for --model")
    p.add_argument("--engine", default="formula",
                   help="formula (pure arithmetic, default) | trace (one real training step on fake tensors, "
                        "CPU code paths; imports torch, seconds per row)")
    p.set_defaults(run=run)


#: the flags that become TrainSpec settings (``zero`` / ``fsdp`` set its sharding)
TRAIN_FLAGS = ("finetune", "lora_r", "lora_targets", "dtype", "autocast", "ref_dtype", "ref_quant", "batch", "seq",
               "precompute_batch", "grad_ckpt", "optim", "attn", "gpus", "zero", "fsdp", "offload", "quant_bits",
               "double_quant", "device")


def settings_from_args(args) -> dict:
    """The settings as given, for the JSON document's ``settings``."""
    keys = ("engine", *(k for k in TRAIN_FLAGS[:16]), "gpu", "device")
    return {k: getattr(args, k) for k in keys}


def run(args) -> int:
    from refplan.cli.common import split_list
    from refplan.gpus import get_gpu
    from refplan.methods import Method, Strategy
    from refplan.output import emit, parse_format
    from refplan.query import Engine, EstimateQuery, answer
    from refplan.render import estimate_output
    from refplan.resolve import resolve_model

    parse_format(args.format)
    engine = Engine.parse(args.engine, "--engine")
    methods = split_list(args.method, Method, "--method")
    strategies = split_list(args.strategy, Strategy, "--strategy")
    gpu = get_gpu(args.gpu) if args.gpu else None
    model = resolve_model(args.model, offline=True if args.offline else None)
    query = EstimateQuery(model, {k: getattr(args, k) for k in TRAIN_FLAGS}, tuple(methods) if methods else None,
                          tuple(strategies) if strategies else None, gpu, engine)
    result = answer(query)
    emit(estimate_output(model, list(result.rows), settings_from_args(args), skipped_kto=result.skipped_kto),
         args.format)
    return 0
