"""The bench scenarios a user's training config describes (``refplan bench --config FILE``).

The file is read exactly as ``refplan estimate --config`` reads it (:mod:`refplan.configs`); each
method it configures becomes one burst of its configured row -- the framework's own settings and
reference strategy -- run on the bench's model (``--model``, by default the tiny random one, in place
of the file's hub id) on this machine's device. Flags typed on the command line override the file.
"""

from __future__ import annotations

from refplan.errors import PlanError
from refplan.harness.scenario import DEFAULT_MODEL, FLAT_KEYS, OPTIONAL_KEYS, Scenario
from refplan.methods import Method

#: TrainSpec settings a burst takes from the file
_FROM_FILE = ("finetune", "dtype", "autocast", "ref_dtype", "lora_r", "lora_targets", "batch", "seq",
              "precompute_batch", "grad_ckpt", "attn", "optim")


def _model_type(model: str) -> str:
    from refplan.harness.tiny import PRESETS, RANDOM_PREFIX

    if model.startswith(RANDOM_PREFIX):
        return PRESETS[model[len(RANDOM_PREFIX):]].family
    from refplan.resolve import resolve_model

    return resolve_model(model, offline=True).family


def config_scenarios(path: str, *, model: str | None, methods, overrides: dict) -> list[Scenario]:
    """One scenario per configured method; ``overrides`` are flat keys typed on the command line."""
    from refplan import configs

    bench_model = model or DEFAULT_MODEL
    method = methods[0] if methods and len(methods) == 1 else None
    run = configs.read_config(path, method=method, model_type=_model_type(bench_model))
    settings, _ = configs.merge(run, {})
    if settings.get("sharding", "none") != "none" or settings.get("gpus", 1) != 1:
        raise PlanError("--config", f"{path} shards the run over several GPUs; the bench runs one process per "
                                    "scenario on one device and has no sharded bursts yet")
    out = []
    for m in (methods or run.methods):
        m = Method(m)
        flat = {k: settings[k] for k in _FROM_FILE}
        flat["lora_targets"] = ",".join(flat["lora_targets"]) if isinstance(flat["lora_targets"], tuple) else \
            flat["lora_targets"]
        flat.update(method=m.value, strategy=run.strategy_for(m).value, model=bench_model)
        flat.update({k: v for k, v in overrides.items() if k in (*FLAT_KEYS, *OPTIONAL_KEYS)})
        if flat.get("ref_dtype") == flat.get("dtype"):
            flat["ref_dtype"] = None
        flat = {k: v for k, v in flat.items() if v is not None or k in ("autocast", "ref_dtype")}
        out.append(Scenario.from_dict(flat))
    return out
