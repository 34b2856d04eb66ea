"""The keys a budgets scenario may set, and how its TOML values become TrainSpec arguments.

The training keys are :class:`~refplan.spec.TrainSpec`'s own fields, read with
``dataclasses.fields``: a new planner setting is a budget key with no edit here, and a key a
scenario leaves out takes TrainSpec's default. Values pass as written (an array as a tuple) for
TrainSpec to validate, except method, strategy and fine-tune, which are parsed here first.
"""

from __future__ import annotations

import enum
import types
import typing
from dataclasses import fields

from refplan.errors import PlanError
from refplan.methods import Finetune, Method, Strategy, applicable_strategies, parse_enum
from refplan.spec import TrainSpec

#: TrainSpec fields a budgets file cannot set, and why.
NOT_BUDGET_KEYS = {
    "padded": "the harness sets it from its dataset (synthetic rows have no padding); "
              "`refplan estimate` has no flag for it either",
}
#: parsed before the other keys: a missing strategy follows from the method, and its message lists
#: the strategies the fine-tune mode allows.
EXPLICIT_KEYS = ("method", "strategy", "finetune")
#: budget-file spellings of a TrainSpec setting that are not fields of their own: ``zero`` / ``fsdp``
#: set the ``sharding`` field, as the CLI's ``--zero`` / ``--fsdp`` do (``TrainSpec.parse``).
SPELLINGS: dict[str, tuple[type, ...]] = {"zero": (int,), "fsdp": (bool,)}


def toml_types(hint) -> tuple[type, ...]:
    """The TOML value types a field annotated ``hint`` accepts.

    An enum is written as its value (a string); ``X | None`` as an X (TOML has no null: leave the key
    out); a tuple as an array, or a string for TrainSpec to split.
    """
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"no TOML form for {hint!r}")
        hint = args[0]
    if typing.get_origin(hint) is tuple:
        return (str, list)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return (str,)
    if hint in (bool, int, str):
        return (hint,)
    if hint is float:
        return (int, float)
    raise TypeError(f"no TOML form for {hint!r}; add one in refplan/check/keys.py")


def _train_keys() -> dict[str, tuple[type, ...]]:
    hints = typing.get_type_hints(TrainSpec)
    derived = {f.name: toml_types(hints[f.name]) for f in fields(TrainSpec) if f.name not in NOT_BUDGET_KEYS}
    return {**SPELLINGS, **derived}


#: training keys (TrainSpec's fields, plus SPELLINGS) with the TOML types each accepts.
TRAIN_KEYS = _train_keys()
#: harness Scenario fields that the planner has no use for: measured mode only.
BENCH_ONLY_KEYS: dict[str, tuple[type, ...]] = {"steps": (int,), "seed": (int,), "dataset": (str,)}
#: keys of the check itself.
CHECK_KEYS: dict[str, tuple[type, ...]] = {
    "model": (str,), "mode": (str,), "gpu": (str,), "budget": (str,), "budget_fraction": (int, float),
    "tolerance": (str,), "config": (str,), "deepspeed": (str,),
}
ALL_KEYS = {**CHECK_KEYS, **TRAIN_KEYS, **BENCH_ONLY_KEYS}

_DEFAULTS = {f.name: f.default for f in fields(TrainSpec)}


def train_kwargs(table: dict) -> dict:
    """TrainSpec keyword arguments from a scenario's merged table (its training keys; others ignored).

    The one place a budgets file meets TrainSpec. Raises PlanError whose ``where`` is the bare key.
    """
    if "method" not in table:
        raise PlanError("method", f"missing; set method = one of {', '.join(m.value for m in Method)}")
    method = parse_enum(Method, table["method"], "method")
    finetune = parse_enum(Finetune, table["finetune"], "finetune") if "finetune" in table else _DEFAULTS["finetune"]
    if "strategy" in table:
        strategy = parse_enum(Strategy, table["strategy"], "strategy")
    elif not method.caps.needs_reference:
        strategy = Strategy.NONE
    else:
        choices = ", ".join(s.value for s in applicable_strategies(method, finetune))
        raise PlanError("strategy", f"missing; {method.value} needs a reference strategy: {choices}")
    rest = {k: tuple(v) if isinstance(v, list) else v
            for k, v in table.items() if k in TRAIN_KEYS and k not in EXPLICIT_KEYS}
    return {"method": method, "strategy": strategy, "finetune": finetune, **rest}
