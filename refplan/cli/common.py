"""Shared CLI pieces: a parser whose errors are one line + exit 2, and list/enum option parsing."""

from __future__ import annotations

import argparse
import sys

from refplan.errors import PlanError


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage + message and exits 2; we print one line naming the flag."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"refplan {self.prog.split()[-1]}: {message}\n")
        raise SystemExit(2)


def split_list(value: str | None, enum_cls, flag: str):
    from refplan.methods import parse_enum

    if value is None:
        return None
    items = [v for v in (x.strip() for x in value.split(",")) if v]
    if not items:
        raise PlanError(flag, "expects a comma-separated list")
    return [parse_enum(enum_cls, v, flag) for v in items]


def fail(err: PlanError) -> int:
    sys.stderr.write(f"refplan: {err.where}: {err.message}\n")
    return 2


#: (flag, type, help) of every training setting a planning command takes; all default to None so
#: that a flag the user typed can be told from one left out (a config file's value wins over refplan's
#: default, a typed flag over both -- refplan.configs.merge)
TRAIN_FLAGS = (
    ("--finetune", str, "full | lora | qlora (default full)"),
    ("--lora-r", int, "LoRA rank (default 16)"),
    ("--lora-targets", str, "'all-linear' or module names, e.g. q_proj,v_proj (default all-linear)"),
    ("--dtype", str, "policy load dtype: bf16 | fp16 | fp32 (default bf16)"),
    ("--autocast", str, "autocast compute dtype when weights are fp32 (bf16|fp16); none: the Trainer runs no autocast (bf16 and fp16 false)"),
    ("--ref-dtype", str, "reference dtype (default: --dtype)"),
    ("--ref-quant", str, "none | 8bit | 4bit (separate reference)"),
    ("--batch", int, "per_device_train_batch_size (pairs; KTO: examples) (default 1)"),
    ("--seq", int, "padded tokens per sequence, prompt + completion (default 1024)"),
    ("--precompute-batch", int, "precompute_ref_batch_size"),
    ("--optim", str, "adamw (HF default, fused) | adamw-torch | adamw-8bit | paged-adamw | sgd | adafactor"),
    ("--attn", str, "sdpa | eager | flash (default sdpa)"),
    ("--gpus", int, "data-parallel ranks (default 1)"),
    ("--zero", int, "DeepSpeed ZeRO stage 0-3"),
    ("--offload", str, "none | optimizer | params | all: what a ZeRO/FSDP run keeps in CPU memory"),
    ("--modules-to-save", str, "modules PEFT trains as full copies beside LoRA, e.g. embed_tokens,lm_head "
                                "(PEFT modules_to_save); estimated by the trace engine"),
    ("--quant-bits", int, "the policy's k-bit load under --finetune qlora: 4 | 8 (default 4)"),
    ("--quant-type", str, "4-bit data type: nf4 | fp4 (bnb_4bit_quant_type; default nf4)"),
    ("--quant-compute-dtype", str, "4-bit matmul dtype: bf16 | fp16 | fp32 (bnb_4bit_compute_dtype; default --dtype)"),
    ("--device", str, "cuda | cpu (cpu drops CUDA-only terms; default cuda)"),
)
TRAIN_SWITCHES = (
    ("--grad-ckpt", "gradient checkpointing (--no-grad-ckpt to turn a config's off)"),
    ("--fsdp", "FSDP full sharding"),
    ("--double-quant", "4-bit double quantization of the absmax constants (bnb_4bit_use_double_quant; "
                       "default off)"),
    ("--prepare-kbit", "peft.prepare_model_for_kbit_training on the k-bit policy before the trainer"),
    ("--dora", "DoRA adapters (PEFT use_dora); estimated by the trace engine, seconds a row"),
)


def add_train_flags(p) -> None:
    """The training settings, ``--config`` and the files that complete it, on parser ``p``."""
    import argparse

    p.add_argument("--model", default=None, help="hub id, local dir / config.json, or catalog name (default: the "
                                                 "model --config names)")
    p.add_argument("--config", default=None, metavar="FILE", help="your training config: a TRL CLI YAML "
                   "(trl dpo --config) or an Axolotl YAML; flags given here override it")
    p.add_argument("--deepspeed", default=None, metavar="FILE", help="a DeepSpeed JSON (ZeRO stage, offload)")
    p.add_argument("--accelerate-config", default=None, metavar="FILE",
                   help="an accelerate config (num_processes -> --gpus; its DeepSpeed / FSDP section)")
    p.add_argument("--method", help="comma list of dpo,ipo,kto,orpo,simpo (default: all, or the config's)")
    p.add_argument("--strategy", help="comma list of separate,unwrap,ref-adapter,precompute,sync,none "
                                      "(default: all applicable)")
    for flag, typ, help_text in TRAIN_FLAGS:
        p.add_argument(flag, type=typ, default=None, help=help_text)
    for flag, help_text in TRAIN_SWITCHES:
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    p.add_argument("--offline", action="store_true", help="never touch the network for --model")
    p.add_argument("--dataset", default=None, metavar="FILE.jsonl",
                   help="derive --seq from your examples as TRL 1.16 truncates (max_length) and pads them "
                        "(prompt/chosen/rejected; KTO prompt/completion/label; message lists via the chat template)")
    p.add_argument("--tokenizer", default=None, metavar="DIR", help="the tokenizer --dataset is read with (a local "
                                                                    "directory; default: --model when it is one)")


def typed_train_flags(args) -> dict:
    """The training settings the user typed (name -> value), none of the left-out ones."""
    names = [f[0] for f in TRAIN_FLAGS] + [s[0] for s in TRAIN_SWITCHES]
    out = {}
    for flag in names:
        key = flag[2:].replace("-", "_")
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    return out


def gather_inputs(args):
    """Parse every input of a planning command once (refplan.inputs)."""
    from refplan.inputs import gather
    from refplan.methods import Method, Strategy

    inputs = gather(model=args.model, config=args.config, flags=typed_train_flags(args),
                    methods=split_list(args.method, Method, "--method"),
                    strategies=split_list(args.strategy, Strategy, "--strategy"), deepspeed=args.deepspeed,
                    accelerate=args.accelerate_config, offline=True if args.offline else None)
    if args.dataset is None:
        if args.tokenizer is not None:
            raise PlanError("--tokenizer", "reads --dataset; give --dataset FILE.jsonl too")
        return inputs
    from refplan.inputs import with_dataset

    return with_dataset(inputs, args.dataset, args.tokenizer, args.model or getattr(inputs.config, "model", None),
                        args.seq is not None)
