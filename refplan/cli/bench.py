"""`refplan bench`: run real TRL bursts and measure them (the harness's face).

With no arguments it runs the default suite (refplan/suites/default.toml) on a random-weight model
built offline. ``--model`` (and/or --method/--strategy/--finetune) runs the matrix those flags name
instead; shape flags (--batch, --seq, --steps, --dtype, ...) override either. Heavy modules are
imported inside :func:`run` only, so ``refplan estimate`` never imports torch.

Exit codes: 0 when every scenario ran (an OOM is a result), 1 when a scenario crashed, timed out,
errored or failed parity, 2 on bad input (one line naming the flag), 130 on Ctrl-C (the rows written
so far stay; ``--resume`` runs the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from refplan.errors import PlanError

DEVICES = ("auto", "cuda", "cpu")


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure real TRL bursts (memory by phase, speed, loss parity)",
                       description="Run preference-training bursts with TRL and measure them. With no "
                                   "arguments: the default matrix on a random-weight model, offline.")
    p.add_argument("--suite", default=None, help="a suite shipped in refplan/suites (ci, default, gpu) or a "
                                                 ".toml path (default: default)")
    p.add_argument("--model", default=None, help="directory, cached hub id, or random:<preset> "
                                                 "(tiny, micro, llama-0.5b)")
    p.add_argument("--dataset", default=None, help="synthetic (default), a .jsonl file, or a cached dataset name")
    p.add_argument("--method", default=None, help="comma list of dpo,ipo,kto,orpo,simpo (default: all)")
    p.add_argument("--strategy", default=None, help="comma list of separate,unwrap,ref-adapter,precompute,"
                                                    "sync,none (default: every applicable one)")
    p.add_argument("--finetune", default=None, help="comma list of full,lora,qlora (default: full,lora)")
    p.add_argument("--ref-dtype", default=None, help="also run 'separate' with a reference in this dtype "
                                                     "(e.g. bf16)")
    p.add_argument("--ref-quant", default=None, help="also run 'separate' with a reference loaded k-bit: comma "
                                                     "list of 8bit,4bit (bitsandbytes)")
    p.add_argument("--quant-bits", type=int, default=None, help="the QLoRA policy's load: 4 | 8 (default 4)")
    p.add_argument("--quant-type", default=None, help="4-bit data type: nf4 | fp4 (default nf4)")
    p.add_argument("--double-quant", action=argparse.BooleanOptionalAction, default=None,
                   help="4-bit double quantization (default off, as BitsAndBytesConfig)")
    p.add_argument("--quant-compute-dtype", default=None, help="4-bit compute dtype: bf16 | fp16 | fp32 "
                                                               "(default: --dtype)")
    p.add_argument("--prepare-kbit", action=argparse.BooleanOptionalAction, default=None,
                   help="peft.prepare_model_for_kbit_training on the QLoRA policy before the trainer")
    p.add_argument("--batch", type=_positive(int), default=None, help="per_device_train_batch_size (pairs; KTO: examples)")
    p.add_argument("--seq", type=_positive(int), default=None, help="padded tokens per sequence, after TRL's BOS/EOS")
    p.add_argument("--steps", type=_positive(int), default=None, help="optimizer steps per burst")
    p.add_argument("--dtype", default=None, help="policy load dtype: fp32 | bf16 | fp16 "
                                                 "(default: fp32 on cpu, bf16 on cuda)")
    p.add_argument("--lora-r", type=_positive(int), default=None, help="LoRA rank")
    p.add_argument("--grad-ckpt", default=None, choices=("on", "off"), help="activation checkpointing")
    p.add_argument("--attn", default=None, help="sdpa | eager | flash")
    p.add_argument("--seed", type=int, default=None, help="seed (weights of random models, data, LoRA init)")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu (default auto)")
    p.add_argument("--gpus", type=_positive(int), default=None, help="ranks of a sharded burst (accelerate launch; "
                   "CPU ranks talk over gloo)")
    p.add_argument("--zero", type=int, default=None, help="DeepSpeed ZeRO stage of a sharded burst: 2 or 3")
    p.add_argument("--fsdp", action="store_true", help="FSDP2 FULL_SHARD instead of DeepSpeed")
    p.add_argument("--offload", default=None, help="none | optimizer | params | all (CUDA only)")
    p.add_argument("--out", default=None, help="output directory (default reports/bench-<suite>)")
    p.add_argument("--resume", action="store_true", help="skip scenarios already in the output CSV")
    p.add_argument("--timeout", type=_positive(float), default=None, help="seconds per scenario (default 300 cpu, 600 cuda)")
    p.add_argument("--isolation", default="auto", choices=("auto", "fork", "spawn"),
                   help="process per scenario: fork of a pre-imported server (cpu default) or spawn (cuda)")
    p.add_argument("--no-track", action="store_true", help="turn the CPU tensor tracker off (speed only)")
    p.add_argument("--no-progress", action="store_true", help="no live progress display")
    p.add_argument("--config", default=None, metavar="FILE", help="run the row your TRL/Axolotl config describes "
                   "(its settings and reference strategy) on --model (default: the tiny random model)")
    p.add_argument("--list", action="store_true", help="print the scenarios and exit")
    p.add_argument("--format", default="table", help="table | json | csv: the end-of-run summary on stdout "
                                                     "(progress goes to stderr)")
    p.set_defaults(run=run)


# --------------------------------------------------------------------------------------------------
# input checks (no torch)
# --------------------------------------------------------------------------------------------------

def _positive(kind):
    """An argparse type for a count or a duration that must be > 0, refused when the flags are parsed:
    a value of 0 would otherwise make every scenario of a suite an 'unsupported' row."""
    noun = {int: "integer", float: "number"}[kind]

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {noun} (got {text!r})") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be a positive {noun} (got {text})")
        return value

    return parse


def check_model(model: str) -> None:
    """Refuse a model that cannot be found offline, naming --model."""
    from refplan.harness.tiny import PRESETS, RANDOM_PREFIX

    if model.startswith(RANDOM_PREFIX):
        if model[len(RANDOM_PREFIX):] not in PRESETS:
            raise PlanError("--model", f"unknown random preset {model!r}; choose from "
                                       + ", ".join(RANDOM_PREFIX + p for p in PRESETS))
        return
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PlanError("--model", f"{model}: directory has no config.json")
        return
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        raise PlanError("--model", f"{model}: no such directory")
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(model, local_files_only=True)
    except Exception:
        raise PlanError("--model", f"{model!r} is not a directory nor in the local Hugging Face cache "
                                   "(nothing is downloaded)") from None


def check_dataset(dataset: str, methods) -> None:
    """Refuse a missing dataset or one without the columns the methods need, naming --dataset."""
    if dataset == "synthetic":
        return
    path = Path(dataset).expanduser()
    if path.suffix in (".jsonl", ".json") or os.sep in dataset and not re.fullmatch(r"[\w.-]+/[\w.-]+", dataset):
        if not path.is_file():
            raise PlanError("--dataset", f"{dataset}: no such file")
        with open(path) as f:
            first = next((line for line in f if line.strip()), None)
        if first is None:
            raise PlanError("--dataset", f"{dataset}: empty")
        try:
            cols = set(json.loads(first))
        except (ValueError, TypeError):
            raise PlanError("--dataset", f"{dataset}: first line is not a JSON object") from None
        paired = {"prompt", "chosen", "rejected"} <= cols
        unpaired = {"prompt", "completion", "label"} <= cols
        for m in methods:
            if not (paired or (m.value == "kto" and unpaired)):
                need = "prompt/chosen/rejected" + (" or prompt/completion/label" if m.value == "kto" else "")
                raise PlanError("--dataset", f"{dataset}: {m.value} needs columns {need}; found "
                                             f"{', '.join(sorted(cols)) or 'none'}")
        return
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(dataset, repo_type="dataset", local_files_only=True)
    except Exception:
        raise PlanError("--dataset", f"{dataset!r} is neither 'synthetic', a .jsonl file, nor a dataset in "
                                     "the local Hugging Face cache") from None


def resolve_device(device: str) -> str:
    if device not in DEVICES:
        raise PlanError("--device", f"unknown device {device!r}; choose auto, cuda or cpu")
    if device == "cpu":
        return "cpu"
    import torch

    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise PlanError("--device", "torch sees no CUDA device here; use --device cpu")
    return "cuda" if has_cuda else "cpu"


# --------------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------------

def _overrides(args, device: str) -> dict:
    o = {"device": device}
    for flag in ("model", "dataset", "batch", "seq", "steps", "dtype", "lora_r", "attn", "seed"):
        v = getattr(args, flag)
        if v is not None:
            o[flag] = v
    if args.grad_ckpt is not None:
        o["grad_ckpt"] = args.grad_ckpt == "on"
    if device == "cuda" and args.dtype is None:
        o["dtype"] = "bf16"
    o.update(_sharding_overrides(args))
    return o


def _sharding_overrides(args) -> dict:
    """--gpus/--zero/--fsdp/--offload as scenario keys, checked here (one line naming the flag)."""
    from refplan.settings import Offload, Sharding

    if args.zero is None and not args.fsdp:
        if args.gpus not in (None, 1) or args.offload not in (None, "none"):
            raise PlanError("--gpus" if args.gpus not in (None, 1) else "--offload",
                            "a sharded burst needs --zero 2|3 or --fsdp")
        return {}
    sharding = Sharding.from_flags(args.zero or 0, args.fsdp)
    if sharding.value not in ("zero2", "zero3", "fsdp"):
        raise PlanError("--zero", f"the bench launches ZeRO-2, ZeRO-3 or FSDP (got --zero {args.zero})")
    return {"sharding": sharding.value, "gpus": args.gpus or 2,
            "offload": Offload.parse(args.offload or "none", "--offload").value}


#: bench flags that set a k-bit setting (applied to the scenarios that read it: scenario.kbit_keys_read)
KBIT_FLAGS = ("quant_bits", "quant_type", "double_quant", "quant_compute_dtype", "prepare_kbit")


def _kbit_settings(args) -> dict:
    """The k-bit settings typed on the command line, each parsed once (a bad value exits 2 naming its flag)."""
    from refplan.methods import parse_enum
    from refplan.settings import Dtype, QuantType

    kbit = {k: getattr(args, k) for k in KBIT_FLAGS if getattr(args, k) is not None}
    if "quant_bits" in kbit and kbit["quant_bits"] not in (4, 8):
        raise PlanError("--quant-bits", f"bitsandbytes loads in 4 or 8 bits (got {kbit['quant_bits']})")
    if "quant_type" in kbit:
        kbit["quant_type"] = QuantType.parse(kbit["quant_type"], "--quant-type").value
    if "quant_compute_dtype" in kbit:
        kbit["quant_compute_dtype"] = Dtype.parse(kbit["quant_compute_dtype"], "--quant-compute-dtype").value
    if args.ref_quant is not None:
        from refplan.settings import Quant

        kbit["ref_quant"] = [parse_enum(Quant, q, "--ref-quant").value for q in args.ref_quant.split(",") if q.strip()]
        if not kbit["ref_quant"] or "none" in kbit["ref_quant"]:
            raise PlanError("--ref-quant", "expects a comma list of 8bit,4bit")
    return kbit


def _with_kbit(items: list, kbit: dict) -> list:
    """``items`` with the typed k-bit settings on every scenario that reads them, plus -- for --ref-quant --
    each 'separate' scenario again with a reference loaded in those bits."""
    from refplan.harness.scenario import kbit_keys_read
    from refplan.harness.suites import Unsupported, make_item, order_baselines_first
    from refplan.methods import Strategy

    if not kbit:
        return items
    settings = {k: v for k, v in kbit.items() if k != "ref_quant"}
    out, seen, applied = [], set(), set()
    for it in items:
        variants = [it]
        if not isinstance(it, Unsupported):
            flat = it.as_dict()
            flats = [flat]
            if it.train.strategy is Strategy.SEPARATE and it.train.ref_dtype is None:
                flats += [{**flat, "ref_quant": q} for q in kbit.get("ref_quant", ())]
                applied |= {"ref_quant"} if len(flats) > 1 else set()
            reads = [kbit_keys_read({**f, **settings}) for f in flats]
            applied |= {k for r in reads for k in settings if k in r}
            variants = [make_item({**f, **{k: x for k, x in settings.items() if k in r}}) for f, r in zip(flats, reads)]
        for v in variants:
            if v.key not in seen:
                seen.add(v.key)
                out.append(v)
    unread = [k for k in kbit if k not in applied]
    if unread:
        flag = "--" + unread[0].replace("_", "-")
        raise PlanError(flag, "no scenario here loads k-bit weights that read it (--finetune qlora for the policy; "
                              "--ref-quant with strategy separate for a reference; 4-bit settings need a 4-bit load)")
    return order_baselines_first(out)


def run(args) -> int:
    from refplan.cli.common import split_list
    from refplan.harness import runner, suites
    from refplan.methods import Finetune, Method, Strategy

    from refplan.output import parse_format

    parse_format(args.format)
    methods = split_list(args.method, Method, "--method")
    strategies = split_list(args.strategy, Strategy, "--strategy")
    finetunes = split_list(args.finetune, Finetune, "--finetune")
    if args.model is not None:
        check_model(args.model)
    if args.dataset is not None:
        check_dataset(args.dataset, methods or list(Method))
    device = resolve_device(args.device)
    overrides = _overrides(args, device)
    kbit = _kbit_settings(args)

    custom = args.model is not None or methods or strategies or finetunes
    if args.config is not None:
        from refplan.harness.from_config import config_scenarios

        typed = {k: v for k, v in overrides.items() if k != "model" and getattr(args, k, None) is not None}
        typed["device"] = device
        items = config_scenarios(args.config, model=args.model, methods=methods, overrides=typed)
        name = "config"
    elif args.suite is not None or not custom:
        suite = suites.load_suite(args.suite or "default")
        if device == "cuda" and args.suite is None:
            suite = suites.load_suite("gpu")
        items = suites.expand(suite, overrides)
        if methods or strategies or finetunes:
            items = [it for it in items if _selected(it, methods, strategies, finetunes)]
        name = suite["name"]
    else:
        defaults = {**suites.load_suite("default").get("defaults", {}), **overrides}
        if device == "cuda":
            defaults.update({k: v for k, v in suites.load_suite("gpu").get("defaults", {}).items()
                             if k not in overrides and k != "model"})
        explicit = [n for n, v in (("method", methods), ("strategy", strategies), ("finetune", finetunes)) if v]
        items = suites.scenarios_from_flags(methods or list(Method), strategies,
                                            finetunes or [Finetune.FULL, Finetune.LORA], defaults, explicit)
        if args.ref_dtype:
            from refplan.harness.scenario import Scenario

            items += [Scenario.from_dict({**it.as_dict(), "ref_dtype": args.ref_dtype}) for it in items
                      if it.train.strategy is Strategy.SEPARATE and it.train.ref_dtype is None]
        name = "custom"
    items = _with_kbit(items, kbit)
    if not items:
        raise PlanError("--strategy", "no scenario matches these flags")
    if args.list:
        for it in items:
            print(it.key + (f"  (unsupported: {it.reason})" if isinstance(it, suites.Unsupported) else ""))
        return 0

    out = Path(args.out or Path("reports") / f"bench-{name}")
    timeout = args.timeout or (600.0 if device == "cuda" else 300.0)
    opts = runner.RunOptions(out_dir=out, suite=name, timeout_s=timeout, resume=args.resume,
                             isolation=args.isolation, track=not args.no_track, progress=not args.no_progress)
    try:
        rows = runner.run_matrix(items, opts)
    except KeyboardInterrupt:  # the runner has ended its processes; every row in the CSV is whole
        from refplan.harness.rows import read_done

        kept = len(read_done(out / "bench.csv"))
        sys.stderr.write(f"refplan bench: interrupted; {kept} finished rows kept in {out / 'bench.csv'} "
                         "(--resume runs the rest)\n")
        return 130

    from refplan.harness.report import print_summary, rows_frame

    print_summary(rows_frame(rows), out, rows, args.format)
    bad = [r for r in rows if r.get("status") in ("error", "crash", "timeout") or r.get("parity_ok") == "fail"]
    return 1 if bad else 0


def _selected(item, methods, strategies, finetunes) -> bool:
    from refplan.harness.suites import Unsupported

    if isinstance(item, Unsupported):
        s = item.scenario
        m, st, ft = s.get("method"), s.get("strategy"), s.get("finetune", "full")
    else:
        m, st, ft = item.train.method.value, item.train.strategy.value, item.train.finetune.value
    return ((not methods or m in [x.value for x in methods])
            and (not strategies or st in [x.value for x in strategies])
            and (not finetunes or ft in [x.value for x in finetunes]))
