"""Read the user's own training config -- TRL CLI YAML, Axolotl YAML, LLaMA-Factory YAML -- with the
framework's hidden defaults, plus the DeepSpeed / FSDP / accelerate files that complete the picture.

:func:`read_config` recognises the format from the file's keys and returns an
:class:`~refplan.configs.run.ImportedRun`: the model, the methods the file configures, the
reference strategy the framework ends up with, and every memory-relevant setting with its origin
(the file's key and line, the framework's default, a derived value). :func:`merge` lays the
command line's flags over it (flags win) and fills the rest with refplan's defaults.

Pure standard library plus PyYAML (imported when a YAML file is read).
"""

from __future__ import annotations

from dataclasses import fields

from refplan.configs.run import ImportedRun
from refplan.configs.source import ConfigFile, Origin, Source, read_file
from refplan.errors import PlanError
from refplan.methods import Method

FRAMEWORKS = ("trl", "axolotl", "llamafactory")

#: keys that identify each framework's files
_AXOLOTL_KEYS = ("base_model", "micro_batch_size", "sequence_len", "rl", "adapter", "datasets")
_LLAMAFACTORY_KEYS = ("stage", "finetuning_type", "cutoff_len", "pref_loss", "lora_target", "template")


def detect(f: ConfigFile) -> str:
    """The framework that wrote ``f``, from its keys."""
    d = f.data
    if "base_model" in d or ("rl" in d and "micro_batch_size" in d):
        return "axolotl"
    if "stage" in d and any(k in d for k in ("finetuning_type", "cutoff_len", "pref_loss", "template")):
        return "llamafactory"
    if "model_name_or_path" in d or any(k in d for k in ("per_device_train_batch_size", "use_peft", "max_length")):
        return "trl"
    raise PlanError(str(f.path), "cannot tell which framework wrote this file: expected a TRL CLI config "
                                 "(model_name_or_path, per_device_train_batch_size...), an Axolotl config (base_model, "
                                 "rl...) or a LLaMA-Factory config (stage, finetuning_type...)")


def read_config(path: str, *, method: Method | None = None, model_type: str | None = None) -> ImportedRun:
    """Resolve ``path`` as its framework would (``model_type``: the trained model's, for PEFT defaults)."""
    f = read_file(path)
    kind = detect(f)
    if kind == "trl":
        from refplan.configs import trl

        return trl.read(f, method, model_type)
    if kind == "axolotl":
        from refplan.configs import axolotl

        return axolotl.read(f, method, model_type)
    from refplan.configs import llamafactory

    return llamafactory.read(f, method, model_type)


def model_of(path: str) -> str | None:
    """The model id a config file names (to resolve the model before the rest of the file)."""
    f = read_file(path)
    kind = detect(f)
    key = {"trl": "model_name_or_path", "axolotl": "base_model", "llamafactory": "model_name_or_path"}[kind]
    value = f.data.get(key)
    if value is not None and not isinstance(value, str):
        raise f.error(key, f"expected a model id or path, got {value!r}")
    return value


def merge(imported: ImportedRun | None, flags: dict, extra: dict | None = None) -> tuple[dict, dict]:
    """TrainSpec settings and their sources, in layers: refplan's defaults, the file, ``extra`` (the
    settings of a ``--deepspeed`` / ``--accelerate-config`` file, name -> (value, Source)), then the
    flags typed on the command line (``flags``: name -> value). A later layer wins; ``zero`` / ``fsdp``
    decide the sharding together, from the last layer that names either."""
    from refplan.settings import Sharding
    from refplan.spec import TrainSpec

    layers = [{f.name: (f.default.value if hasattr(f.default, "value") else f.default,
                        Source(Origin.REFPLAN, "refplan default"))
               for f in fields(TrainSpec) if f.name not in ("method", "strategy")}]
    if imported is not None:
        layers.append({k: (v, imported.provenance[k]) for k, v in imported.settings.items() if k != "strategy"})
    layers.append(dict(extra or {}))
    layers.append({k: (v, Source(Origin.FLAG, f"--{k.replace('_', '-')}")) for k, v in flags.items()})
    settings, provenance = {}, {}
    for layer in layers:
        if "zero" in layer or "fsdp" in layer:
            zero, zsrc = layer.get("zero", (0, None))
            fsdp, fsrc = layer.get("fsdp", (False, None))
            settings["sharding"] = Sharding.from_flags(zero or 0, bool(fsdp)).value
            provenance["sharding"] = zsrc if (zero or not fsdp) and zsrc is not None else (fsrc or zsrc)
        for k, (v, src) in layer.items():
            if k not in ("zero", "fsdp"):
                settings[k], provenance[k] = v, src
    return settings, provenance


__all__ = ["FRAMEWORKS", "ImportedRun", "detect", "merge", "model_of", "read_config"]
