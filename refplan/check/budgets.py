"""Load a budgets file: one validated :class:`BudgetScenario` per table, or a PlanError naming the key.

Every error names the file, the table the offending key came from (the scenario or ``[defaults]``)
and the key. The harness is imported only for measured scenarios (its scenario module is standard
library too).
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from refplan.check.keys import ALL_KEYS, BENCH_ONLY_KEYS, EXPLICIT_KEYS, train_kwargs
from refplan.check.sizes import Tolerance, parse_size, percent
from refplan.errors import PlanError
from refplan.gpus import GPU, get_gpu
from refplan.model import ModelSpec
from refplan.spec import TrainSpec
from refplan.units import GIB

if TYPE_CHECKING:
    from refplan.harness.scenario import Scenario

DEFAULT_BUDGETS = "bench/budgets.toml"
DEFAULTS_TABLE = "defaults"
MODES = ("estimate", "measured")


@dataclass(frozen=True)
class BudgetScenario:
    """One named scenario of a budgets file, validated at load.

    ``model_spec`` is the resolved model in estimate mode (None in measured mode); ``bench`` is the
    harness scenario in measured mode (None in estimate mode). ``train`` is the planner's view in
    both modes.
    """

    name: str
    mode: str
    model: str
    train: TrainSpec
    budget_bytes: int
    budget_text: str  # for display: "40 GiB", "90% of H100-80GB"
    gpu: GPU | None = None
    tolerance: Tolerance | None = None
    model_spec: ModelSpec | None = None
    bench: Scenario | None = None

    @property
    def label(self) -> str:
        t = self.train
        return f"{self.model} {t.method.value}/{t.strategy.value}/{t.finetune.value} b{t.batch} s{t.seq}"


def load_budgets(path: str | Path, offline: bool | None = None) -> list[BudgetScenario]:
    """Parse and validate a budgets file. Any bad input raises PlanError naming file, scenario and key."""
    file = str(path)
    doc = _read_toml(path)
    for key, value in doc.items():
        if not isinstance(value, dict):
            raise PlanError(f"{file}: {key}", "top-level keys must be [scenario] tables (or [defaults])")
    defaults = doc.get(DEFAULTS_TABLE, {})
    _check_types(defaults, file, DEFAULTS_TABLE)
    out = []
    for name, table in doc.items():
        if name == DEFAULTS_TABLE:
            continue
        nested = [k for k, v in table.items() if isinstance(v, dict)]
        if nested:
            raise PlanError(_where(file, f"{name}.{nested[0]}", "(table)"),
                            "scenarios cannot nest; quote a name that has a dot: [\"a.b\"]")
        _check_types(table, file, name)
        out.append(_scenario(name, table, defaults, file, offline))
    if not out:
        raise PlanError(file, "no scenarios; add a [name] table with model, method, ... and budget")
    return out


def select(scenarios: list[BudgetScenario], names: str | None) -> list[BudgetScenario]:
    """The scenarios named in ``names`` (a comma list, as ``--scenario`` takes it); all when None."""
    if names is None:
        return scenarios
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {s.name for s in scenarios}
    for n in wanted:
        if n not in known:
            raise PlanError("--scenario", f"no scenario {n!r} in the budgets file; known: {', '.join(sorted(known))}")
    return [s for s in scenarios if s.name in wanted]


def _read_toml(path: str | Path) -> dict:
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(file, "no such budgets file (pass --budgets FILE)") from None
    except OSError as e:
        raise PlanError(file, f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise PlanError(file, "not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PlanError(file, f"not valid TOML: {e}") from None


def _flag_to_key(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _where(file: str, section: str, key: str) -> str:
    return f"{file}: [{section}] {key}"


def _check_types(table: dict, file: str, section: str) -> None:
    for key, value in table.items():
        if key not in ALL_KEYS:
            close = difflib.get_close_matches(key, list(ALL_KEYS), n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(sorted(ALL_KEYS))}"
            raise PlanError(_where(file, section, key), f"unknown key; {hint}")
        types = ALL_KEYS[key]
        if not (isinstance(value, types) and (bool in types or not isinstance(value, bool))):
            names = " or ".join(t.__name__ for t in types)
            hint = ""
            if key in ("budget", "tolerance") and isinstance(value, (int, float)) and not isinstance(value, bool):
                hint = f"; a size needs a unit, e.g. \"{value} GiB\" (or \"{value}%\")"
            raise PlanError(_where(file, section, key), f"expected {names}, got {type(value).__name__} "
                                                        f"{value!r}{hint}")


def _scenario(name: str, table: dict, defaults: dict, file: str, offline: bool | None) -> BudgetScenario:
    merged = {**defaults, **table}

    def where(key: str) -> str:  # name the table the offending key came from
        return _where(file, name if (key in table or key not in defaults) else DEFAULTS_TABLE, key)

    mode = merged.get("mode", "estimate")
    if mode not in MODES:
        raise PlanError(where("mode"), f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    gpu = None
    if "gpu" in merged:
        try:
            gpu = get_gpu(merged["gpu"])
        except PlanError as e:
            raise PlanError(where("gpu"), e.message) from None
    try:
        if "config" in merged or "deepspeed" in merged:
            train, spec, bench = _from_config(merged, mode, where, file, offline)
        else:
            train, spec, bench = _train_and_bench(merged, mode, where, offline)
    except PlanError as e:
        if e.where.startswith(f"{file}: "):
            raise
        raise PlanError(where(_flag_to_key(e.where)), e.message) from None
    budget_bytes, budget_text = _budget(merged, table, gpu, where)
    tol = Tolerance.parse(merged["tolerance"], where("tolerance")) if "tolerance" in merged else None
    model = spec.model_id if spec is not None else bench.model
    return BudgetScenario(name=name, mode=mode, model=model, train=train, budget_bytes=budget_bytes,
                          budget_text=budget_text, gpu=gpu, tolerance=tol, model_spec=spec, bench=bench)


def _from_config(merged: dict, mode: str, where, file: str, offline: bool | None):
    """A scenario that names the user's training config (and/or a DeepSpeed JSON), paths relative to
    the budgets file; the table's own training keys override the config, as flags do on the CLI."""
    from pathlib import Path

    from refplan.check.keys import EXPLICIT_KEYS, TRAIN_KEYS
    from refplan.inputs import gather
    from refplan.methods import Method, Strategy, parse_enum

    if mode != "estimate":
        raise PlanError(where("config"), "applies to mode = \"estimate\" (use refplan bench --config to measure)")
    base = Path(file).parent

    def rel(key):
        return str(base / merged[key]) if key in merged else None

    flags = {k: (",".join(v) if isinstance(v, list) else v) for k, v in merged.items()
             if k in TRAIN_KEYS and k not in EXPLICIT_KEYS}
    method = parse_enum(Method, merged["method"], "method") if "method" in merged else None
    try:
        inputs = gather(model=merged.get("model"), config=rel("config"), flags=flags,
                        methods=[method] if method else None, strategies=None, deepspeed=rel("deepspeed"),
                        offline=offline)
    except PlanError as e:
        raise PlanError(where("config"), f"{e.where}: {e.message}") from None
    cfg = inputs.config
    if method is None:
        if cfg is None or len(cfg.methods) != 1:
            raise PlanError(where("method"), "missing; the config does not name one method (set method = ...)")
        method = cfg.methods[0]
    if "strategy" in merged:
        strategy = parse_enum(Strategy, merged["strategy"], "strategy")
    elif cfg is not None:
        strategy = cfg.strategy_for(method)
    else:
        strategy = Strategy.NONE if not method.caps.needs_reference else Strategy.SEPARATE
    settings = {k: v for k, v in inputs.settings.items()}
    return TrainSpec.parse(method=method, strategy=strategy, **settings), inputs.model, None


def _train_and_bench(merged: dict, mode: str, where, offline: bool | None):
    """(TrainSpec, model spec or None, harness Scenario or None) for one merged table."""
    kwargs = train_kwargs(merged)
    if mode == "estimate":
        extra = sorted(set(merged) & set(BENCH_ONLY_KEYS))
        if extra:
            raise PlanError(where(extra[0]), "applies to mode = \"measured\" only (a harness burst setting)")
        if "model" not in merged:
            raise PlanError(where("model"), "missing; set model = a catalog name, hub id or config.json path")
        train = TrainSpec.parse(**kwargs)
        from refplan.resolve import resolve_model

        try:
            spec = resolve_model(merged["model"], offline=offline)
        except PlanError as e:
            raise PlanError(where("model"), e.message) from None
        return train, spec, None

    from refplan.harness.scenario import DEFAULT_MODEL, FLAT_KEYS, Scenario

    extra = sorted(k for k in kwargs if k not in FLAT_KEYS)
    if extra:
        raise PlanError(where(extra[0]), "the harness cannot measure this setting; remove it or use "
                                         "mode = \"estimate\"")
    model = merged.get("model", DEFAULT_MODEL)
    _check_measured_model(model, where("model"), offline)
    # the harness's own defaults and validation apply: it gets the values as written (method, strategy
    # and fine-tune as parsed above)
    flat = {k: v for k, v in merged.items() if k in FLAT_KEYS}
    bench = Scenario.from_dict({**flat, **{k: kwargs[k] for k in EXPLICIT_KEYS}, "model": model})
    return bench.train, None, bench


def _check_measured_model(model: str, where: str, offline: bool | None) -> None:
    """A measured model must be a ``random:`` preset or something the planner can resolve (validated now)."""
    from refplan.harness.tiny import PRESETS, RANDOM_PREFIX

    if model.startswith(RANDOM_PREFIX):
        if model[len(RANDOM_PREFIX):] not in PRESETS:
            raise PlanError(where, f"unknown random preset {model!r}; choose from "
                                   f"{', '.join(RANDOM_PREFIX + p for p in PRESETS)}")
        return
    from refplan.resolve import resolve_model

    try:
        resolve_model(model, offline=offline)
    except PlanError as e:
        raise PlanError(where, e.message) from None


def _budget(merged: dict, table: dict, gpu: GPU | None, where) -> tuple[int, str]:
    """(bytes, display text) of the budget: a size, or a fraction of the gpu's memory."""
    both = ("budget", "budget_fraction")
    if all(k in merged for k in both) and sum(k in table for k in both) == 1:
        merged = {k: v for k, v in merged.items() if k in table or k not in both}  # the scenario's wins
    if all(k in merged for k in both):
        raise PlanError(where("budget_fraction"), "set either budget or budget_fraction, not both")
    if "budget_fraction" in merged:
        frac, text = float(merged["budget_fraction"]), f"{merged['budget_fraction']:g} of"
        key = "budget_fraction"
    elif "budget" in merged:
        frac, key = percent(merged["budget"]), "budget"
        text = f"{merged['budget'].strip()} of" if frac is not None else merged["budget"].strip()
    else:
        raise PlanError(where("budget"), "missing; set budget = \"40 GiB\", budget = \"90%\" or "
                                         "budget_fraction = 0.9 (of the gpu's memory)")
    if frac is None:
        nbytes = parse_size(merged["budget"], where("budget"))
        if nbytes <= 0:
            raise PlanError(where("budget"), f"must be positive (got {merged['budget']!r})")
    else:
        if not 0 < frac <= 1:
            raise PlanError(where(key), f"a fraction of the gpu's memory must be in (0, 100%] (got {merged[key]!r})")
        if gpu is None:
            raise PlanError(where(key), "a fraction needs the gpu it is a fraction of; set gpu = \"H100-80GB\" "
                                        "(or give the budget in GiB)")
        nbytes, text = int(gpu.memory_bytes * frac), f"{text} {gpu.name}"
    if gpu is not None and nbytes > gpu.memory_bytes:
        raise PlanError(where(key), f"{nbytes / GIB:.2f} GiB is more than {gpu.name}'s "
                                    f"{gpu.memory_bytes / GIB:.2f} GiB")
    return nbytes, text
