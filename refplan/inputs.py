"""Everything a planning command is given -- flags, a training config, DeepSpeed / accelerate files,
a model -- parsed once into one :class:`Inputs` record: the model, the resolved settings with the
origin of each, the methods and strategies asked for, and the row the user's config describes.

``estimate`` and ``fit`` (and ``check`` for a budget scenario that names a config) build their
queries from it. Standard library only (PyYAML when a YAML file is read).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from refplan.configs.source import Origin, Source
from refplan.errors import PlanError
from refplan.methods import Method, Strategy
from refplan.model import ModelSpec

_DTYPE_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclass(frozen=True)
class Inputs:
    model: ModelSpec
    settings: dict  # TrainSpec keyword arguments (CLI spellings), method and strategy excluded
    provenance: dict  # setting -> Source
    methods: tuple[Method, ...] | None
    strategies: tuple[Strategy, ...] | None
    config: object | None = None  # refplan.configs.run.ImportedRun
    warnings: tuple[str, ...] = field(default=())
    #: --dataset: each method's derived padded length (refplan.seqlen); settings["seq"] is their largest
    seq_by_method: dict = field(default_factory=dict)
    #: --dataset: the line that says how seq was derived, for the table header
    seq_note: str | None = None

    def configured(self, method: str, strategy: str) -> bool:
        return self.config is not None and self.config.configured(Method(method), Strategy(strategy))

    def provenance_record(self) -> dict:
        out = {k: v.record() for k, v in self.provenance.items()}
        if self.config is not None:
            out.update({k: {**src.record(), "value": v} for k, (v, src) in self.config.padding.items()})
        return out


def gather(*, model: str | None, config: str | None, flags: dict, methods, strategies,
           deepspeed: str | None = None, accelerate: str | None = None, offline: bool | None = None) -> Inputs:
    """Resolve the inputs of a planning command. ``flags`` holds only the flags the user typed."""
    from refplan import configs
    from refplan.resolve import resolve_model

    if model is None and config is None:
        raise PlanError("--model", "give --model (a hub id, catalog name or config.json) or --config FILE")
    name = model or configs.model_of(config)
    if name is None:
        raise PlanError(config, "names no model (model_name_or_path / base_model); add --model")
    spec = resolve_model(name, offline=offline)
    imported = None
    method = methods[0] if methods and len(methods) == 1 else None
    if config is not None:
        imported = configs.read_config(config, method=method, model_type=spec.family)
    extra = _sharding_files(deepspeed, accelerate)
    settings, provenance = configs.merge(imported, flags, extra)
    if settings.get("dtype") == "auto":
        settings["dtype"], provenance["dtype"] = _auto_dtype(spec, provenance["dtype"])
    warnings = tuple(imported.warnings) if imported else ()
    if settings.get("sharding", "none") != "none" and settings.get("gpus", 1) == 1:
        warnings += ("sharding over 1 GPU shards nothing: pass --gpus N or --accelerate-config FILE",)
    chosen_methods = tuple(methods) if methods else None
    if chosen_methods is None and imported is not None and set(imported.methods) != set(Method):
        chosen_methods = imported.methods
    return Inputs(spec, settings, provenance, chosen_methods, tuple(strategies) if strategies else None, imported,
                  warnings)


def _sharding_files(deepspeed: str | None, accelerate: str | None) -> dict:
    from refplan.configs import sharding as sh

    extra: dict = {}
    if accelerate is not None:
        acc = sh.from_accelerate(accelerate)
        extra["gpus"] = (acc.gpus, acc.source)
        _plan(extra, acc.sharding)
    if deepspeed is not None:
        _plan(extra, sh.from_deepspeed(deepspeed, None, "--deepspeed"))
    return extra


def _plan(extra: dict, plan) -> None:
    if plan.source is None:
        return
    for k, v in (("zero", plan.zero), ("fsdp", plan.fsdp), ("offload", plan.offload)):
        extra[k] = (v, plan.source)


def _auto_dtype(spec: ModelSpec, src: Source) -> tuple[str, Source]:
    """``dtype: auto`` loads the weights in the dtype the checkpoint's config.json records."""
    raw = spec.config.get("torch_dtype") or spec.config.get("dtype")
    if raw in _DTYPE_NAMES:
        return _DTYPE_NAMES[raw], Source(Origin.DERIVED, f"dtype auto -> the model's config.json {raw}")
    sys.stderr.write(f"refplan: warning: {src}: 'auto' and the model's config.json names no dtype; "
                     "assuming bf16\n")
    return "bf16", Source(Origin.DERIVED, "dtype auto, no dtype in config.json -> bf16 (assumed)")


def describe(inputs: Inputs, keys: tuple[str, ...]) -> list[str]:
    """One line per shown setting: ``name value (origin)``, for table headers."""
    out = []
    for k in keys:
        if k not in inputs.settings:
            continue
        src = inputs.provenance.get(k)
        out.append(f"{k.replace('_', '-')} {_spell(inputs.settings[k])} ({src})" if src else k)
    return out


def _spell(v) -> str:
    if isinstance(v, (tuple, list)):
        return ",".join(map(str, v))
    return "-" if v is None else str(getattr(v, "value", v))


def with_dataset(inputs: Inputs, dataset: str, tokenizer: str | None, model: str | None, seq_typed: bool) -> Inputs:
    """``seq`` derived from a ``.jsonl`` dataset as TRL pads it (refplan.seqlen), per method asked for."""
    from dataclasses import replace
    from pathlib import Path

    from refplan import seqlen
    from refplan.configs.defaults import TRL_VERSION

    if seq_typed:
        raise PlanError("--seq", "give --seq or --dataset, not both: --dataset derives seq from the examples")
    if tokenizer is None and not (model and Path(model).expanduser().is_dir()):
        raise PlanError("--tokenizer", "--dataset needs the model's tokenizer: give --tokenizer DIR (or --model DIR, "
                                       "a local model directory)")
    tok = seqlen.Tokenizer(tokenizer or model, "--tokenizer" if tokenizer else "--model")
    pad = inputs.config.padding if inputs.config is not None else {}
    padding = seqlen.Padding(pad.get("max_length", (1024,))[0], pad.get("truncation_mode", ("keep_start",))[0],
                             pad.get("pad_to_multiple_of", (None,))[0])
    derived, by_family = {}, {}
    for m in inputs.methods or tuple(Method):
        key = (seqlen.FAMILY[m], m is Method.KTO)
        if key not in by_family:
            by_family[key] = seqlen.derive(dataset, tok, m, padding, int(inputs.settings.get("batch", 1)))
        derived[m] = by_family[key]
    top = max(derived.values(), key=lambda d: d.seq)
    detail = top.detail()
    if inputs.config is None:
        detail += f"; max_length is TRL {TRL_VERSION}'s default (give --config to read yours)"
    if len({d.seq for d in derived.values()}) > 1:
        detail += "; per method " + ", ".join(f"{m.value} {d.seq}" for m, d in derived.items())
    settings, provenance = dict(inputs.settings), dict(inputs.provenance)
    settings["seq"], provenance["seq"] = top.seq, Source(Origin.DERIVED, detail)
    warnings = inputs.warnings
    if inputs.config is not None and inputs.config.framework == "axolotl":
        warnings += ("Axolotl drops the rows whose prompt + completion exceed sequence_len before TRL sees them "
                     "(utils/data/rl.py drop_long_rl_seq); refplan replays TRL alone, so its seq is an upper bound",)
    return replace(inputs, settings=settings, provenance=provenance, warnings=warnings,
                   seq_by_method={m: d.seq for m, d in derived.items()}, seq_note=f"seq {top.seq}: {detail}")
