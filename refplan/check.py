"""Memory budgets that fail CI: load a budgets file, check each scenario's peak, keep a baseline.

A budgets file (TOML, ``bench/budgets.toml`` by default) holds one table per named scenario, plus an
optional ``[defaults]`` table whose keys every scenario inherits::

    [defaults]
    gpu = "H100-80GB"
    tolerance = "2%"

    [llama8b-dpo-lora]
    model = "meta-llama/Llama-3.1-8B"
    method = "dpo"
    strategy = "separate"
    finetune = "lora"
    batch = 4
    seq = 2048
    budget = "60 GiB"          # or "90%" / budget_fraction = 0.9 of the gpu's memory

A scenario is checked in one of two modes (``mode``, default ``"estimate"``):

- ``estimate``: the planner's peak (pure arithmetic, standard library only, milliseconds);
- ``measured``: the peak of a real TRL burst (``refplan.harness``), either run here or read from a
  bench CSV. Its unset fields take the harness's defaults (``random:tiny``, fp32, CPU, batch 2,
  seq 128), not the planner's.

Each check compares the peak with the budget (``now > budget`` fails) and, when the scenario has a
``tolerance`` and the baseline (``reports/baseline.json``) has an entry of the same mode, with the
baseline (``now - baseline > tolerance`` fails). Sizes are integer bytes inside; GiB is 2^30.

This module imports the standard library and the planner only; the harness is imported when a
measured scenario is loaded (its scenario module is standard library too) or run.
"""

from __future__ import annotations

import csv
import datetime
import difflib
import json
import math
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from refplan.errors import PlanError
from refplan.gpus import GPU, get_gpu
from refplan.methods import Finetune, Method, Strategy, applicable_strategies, parse_enum
from refplan.model import ModelSpec
from refplan.spec import TrainSpec
from refplan.units import GIB, KIB, MIB

if TYPE_CHECKING:
    from refplan.harness.scenario import Scenario

DEFAULT_BUDGETS = "bench/budgets.toml"
DEFAULT_BASELINE = "reports/baseline.json"
DEFAULTS_TABLE = "defaults"
MODES = ("estimate", "measured")

#: TrainSpec fields a scenario may set, with the TOML type each must have.
TRAIN_KEYS: dict[str, type | tuple[type, ...]] = {
    "method": str, "strategy": str, "finetune": str, "dtype": str, "autocast": str, "ref_dtype": str,
    "ref_quant": str, "lora_r": int, "lora_targets": str, "batch": int, "seq": int, "precompute_batch": int,
    "grad_ckpt": bool, "optim": str, "attn": str, "gpus": int, "zero": int, "fsdp": bool, "device": str,
}
#: harness Scenario fields that the planner has no use for: measured mode only.
BENCH_ONLY_KEYS: dict[str, type | tuple[type, ...]] = {"steps": int, "seed": int, "dataset": str}
#: keys of the check itself.
CHECK_KEYS: dict[str, type | tuple[type, ...]] = {
    "model": str, "mode": str, "gpu": str, "budget": str, "budget_fraction": (int, float), "tolerance": str,
}
ALL_KEYS = {**CHECK_KEYS, **TRAIN_KEYS, **BENCH_ONLY_KEYS}

#: CSV / runner fields that do not change a burst's peak, so a row matches whatever they are.
UNMATCHED_FIELDS = ("steps", "seed")

_UNITS = {"b": 1, "kib": KIB, "mib": MIB, "gib": GIB, "tib": 1024 * GIB}
_DECIMAL = {"kb", "mb", "gb", "tb"}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z%]*)\s*$")


# -- sizes -----------------------------------------------------------------------------------------


def parse_size(value, where: str) -> int:
    """``"40 GiB"`` / ``"512 MiB"`` / ``"1024 B"`` -> bytes. A bare number or a decimal unit is refused."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PlanError(where, f"expected a size such as \"40 GiB\" (got {value!r})")
    if not isinstance(value, str):
        raise PlanError(where, f"{value!r} has no unit; write \"{value} GiB\" (or MiB, KiB, B)")
    m = _SIZE.match(value)
    if not m:
        raise PlanError(where, f"cannot read {value!r}; write a number and a unit, e.g. \"40 GiB\"")
    number, unit = float(m.group(1)), m.group(2).lower()
    if not unit:
        raise PlanError(where, f"{value!r} has no unit; write \"{value.strip()} GiB\" (or MiB, KiB, B)")
    if unit in _DECIMAL:
        raise PlanError(where, f"{value!r}: decimal units are ambiguous here; write {unit[0].upper()}iB "
                               "(2^10 multiples: GiB = 2^30 bytes)")
    if unit not in _UNITS:
        raise PlanError(where, f"{value!r}: unknown unit {m.group(2)!r}; use B, KiB, MiB, GiB or TiB")
    return int(round(number * _UNITS[unit]))


def _percent(value: str) -> float | None:
    """``"90%"`` -> 0.9; None when ``value`` is not a percentage."""
    m = _SIZE.match(value) if isinstance(value, str) else None
    return float(m.group(1)) / 100 if m and m.group(2) == "%" else None


@dataclass(frozen=True)
class Tolerance:
    """How much a peak may grow over its baseline: a fraction of the baseline, or bytes."""

    text: str  # as written in the budgets file: "5%", "0.5 GiB"
    fraction: float | None = None
    bytes: int | None = None

    def allowed_bytes(self, baseline_bytes: int) -> int:
        if self.fraction is not None:
            return int(baseline_bytes * self.fraction)
        return self.bytes or 0

    @classmethod
    def parse(cls, value, where: str) -> Tolerance:
        frac = _percent(value)
        if frac is not None:
            return cls(value.strip(), fraction=frac)
        nbytes = parse_size(value, where)
        return cls(value.strip(), bytes=nbytes)


def fmt_size(n_bytes: int, signed: bool = False) -> str:
    """GiB for GiB-sized numbers, MiB below (tiny measured scenarios), with the unit."""
    sign = "+" if signed else ""
    if abs(n_bytes) >= GIB // 2:
        return f"{n_bytes / GIB:{sign}.2f} GiB"
    return f"{n_bytes / MIB:{sign}.1f} MiB"


# -- scenarios -------------------------------------------------------------------------------------


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
        want = ALL_KEYS[key]
        types = want if isinstance(want, tuple) else (want,)
        if not (isinstance(value, types) and (bool in types or not isinstance(value, bool))):
            names = " or ".join(t.__name__ for t in types)
            hint = ""
            if key in ("budget", "tolerance") and isinstance(value, (int, float)) and not isinstance(value, bool):
                hint = f"; a size needs a unit, e.g. \"{value} GiB\" (or \"{value}%\")"
            raise PlanError(_where(file, section, key), f"expected {names}, got {type(value).__name__} "
                                                        f"{value!r}{hint}")


def _budget(merged: dict, table: dict, gpu: GPU | None, where) -> tuple[int, str]:
    both = ("budget", "budget_fraction")
    if all(k in merged for k in both) and sum(k in table for k in both) == 1:
        merged = {k: v for k, v in merged.items() if k in table or k not in both}  # the scenario's wins
    if all(k in merged for k in both):
        raise PlanError(where("budget_fraction"), "set either budget or budget_fraction, not both")
    if "budget_fraction" in merged:
        frac, text = float(merged["budget_fraction"]), f"{merged['budget_fraction']:g} of"
        key = "budget_fraction"
    elif "budget" in merged:
        frac, key = _percent(merged["budget"]), "budget"
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


def _train_and_bench(merged: dict, mode: str, where, offline: bool | None):
    """(TrainSpec, model spec or None, harness Scenario or None) for one merged table."""
    method = parse_enum(Method, merged["method"], "method") if "method" in merged else None
    if method is None:
        raise PlanError(where("method"), f"missing; set method = one of {', '.join(m.value for m in Method)}")
    finetune = parse_enum(Finetune, merged.get("finetune", "full"), "finetune")
    if "strategy" in merged:
        strategy = parse_enum(Strategy, merged["strategy"], "strategy")
    elif not method.caps.needs_reference:
        strategy = Strategy.NONE
    else:
        choices = ", ".join(s.value for s in applicable_strategies(method, finetune))
        raise PlanError(where("strategy"), f"missing; {method.value} needs a reference strategy: {choices}")
    rest = {k: v for k, v in merged.items() if k in TRAIN_KEYS and k not in ("method", "strategy", "finetune")}

    if mode == "estimate":
        extra = sorted(set(merged) & set(BENCH_ONLY_KEYS))
        if extra:
            raise PlanError(where(extra[0]), "applies to mode = \"measured\" only (a harness burst setting)")
        if "model" not in merged:
            raise PlanError(where("model"), "missing; set model = a catalog name, hub id or config.json path")
        train = TrainSpec.parse(method=method, strategy=strategy, finetune=finetune, **rest)
        from refplan.resolve import resolve_model

        try:
            spec = resolve_model(merged["model"], offline=offline)
        except PlanError as e:
            raise PlanError(where("model"), e.message) from None
        return train, spec, None

    from refplan.harness.scenario import DEFAULT_MODEL, Scenario

    known = {f.name for f in fields(Scenario)}
    extra = sorted(k for k in rest if k not in known)
    if extra:
        raise PlanError(where(extra[0]), "the harness cannot measure this setting; remove it or use "
                                         "mode = \"estimate\"")
    bench_fields = {k: v for k, v in merged.items() if k in known and k not in ("method", "strategy", "finetune")}
    model = merged.get("model", DEFAULT_MODEL)
    _check_measured_model(model, where("model"), offline)
    bench = Scenario(method=method, strategy=strategy, finetune=finetune, **{**bench_fields, "model": model})
    return bench.train_spec(), None, bench


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


def load_budgets(path: str | Path, offline: bool | None = None) -> list[BudgetScenario]:
    """Parse and validate a budgets file. Any bad input raises PlanError naming file, scenario and key."""
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
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PlanError(file, f"not valid TOML: {e}") from None
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


# -- peaks -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """One scenario's peak from a burst or a CSV row; ``peak_bytes`` None when the burst failed."""

    peak_bytes: int | None
    status: str  # the harness's status: "ok", "oom", "error"
    error: str
    source: str  # "burst", "csv:FILE row N"


def estimate_peak(sc: BudgetScenario) -> int:
    """The planner's peak for an estimate-mode scenario, bytes per device."""
    from refplan.planner import estimate

    return estimate(sc.model_spec, sc.train, sc.gpu).peak_bytes


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip().lower()


def _match_fields(bench) -> dict[str, str]:
    return {k: _cell(v) for k, v in bench.as_dict().items() if k not in UNMATCHED_FIELDS}


def match_rows(rows: list[dict], sc: BudgetScenario, source: str) -> Measurement | None:
    """The newest row (last) whose every shared scenario field equals ``sc``'s; None when none does."""
    want = _match_fields(sc.bench)
    found = None
    for i, row in enumerate(rows):
        shared = [k for k in want if k in row]
        if "method" not in shared or any(_cell(row[k]) != want[k] for k in shared):
            continue
        found = (i, row)
    if found is None:
        return None
    i, row = found
    return _measurement(row, f"{source} row {i + 1}")


def _measurement(row: dict, source: str) -> Measurement:
    status = str(row.get("status") or "ok").strip()
    peak = row.get("peak_bytes")
    try:
        peak = int(float(peak)) if peak not in (None, "") else None
    except ValueError:
        peak = None
    error = str(row.get("error") or "").strip()
    if status == "ok" and peak is None:
        status, error = "error", error or "no peak_bytes recorded"
    return Measurement(peak if status == "ok" else None, status, error, source)


def read_csv_rows(path: str | Path) -> list[dict]:
    file = str(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = reader.fieldnames or []
    except FileNotFoundError:
        raise PlanError(f"--from-csv {file}", "no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PlanError(f"--from-csv {file}", f"cannot read: {e}") from None
    missing = [c for c in ("method", "strategy", "peak_bytes") if c not in header]
    if missing:
        raise PlanError(f"--from-csv {file}", f"not a bench CSV: no column {missing[0]!r}")
    return rows


def measurements_from_csv(path: str | Path, scenarios: list[BudgetScenario]) -> dict[str, Measurement]:
    """Match each measured scenario to a row of a bench CSV; a scenario with no row is bad input."""
    rows = read_csv_rows(path)
    out = {}
    for sc in scenarios:
        if sc.mode != "measured":
            continue
        m = match_rows(rows, sc, f"csv:{path}")
        if m is None:
            raise PlanError(f"--from-csv {path}", f"no row matches scenario [{sc.name}] ({sc.bench.key}); "
                                                  f"run `refplan check --measured` or bench it")
        out[sc.name] = m
    return out


def measure(scenarios: list[BudgetScenario], out_dir: str | Path, progress: bool = False
            ) -> dict[str, Measurement]:
    """Run one burst per measured scenario with the bench harness (each in its own process).

    ``out_dir`` receives the harness's ``bench.csv`` and logs, so CI can keep them as an artifact.
    """
    from refplan.harness.runner import RunOptions, run_matrix

    measured = [sc for sc in scenarios if sc.mode == "measured"]
    if not measured:
        return {}
    rows = run_matrix([sc.bench for sc in measured],
                      RunOptions(out_dir=Path(out_dir), suite="check", progress=progress, report=False))
    by_key = {row.get("key"): row for row in rows}
    out = {}
    for sc in measured:
        row = by_key.get(sc.bench.key)
        out[sc.name] = (_measurement(row, "burst") if row is not None
                        else Measurement(None, "error", "the harness returned no row", "burst"))
    return out


# -- baseline --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaselineEntry:
    peak_bytes: int
    mode: str
    refplan_version: str
    updated: str  # ISO 8601, UTC


def read_baseline(path: str | Path) -> dict[str, BaselineEntry]:
    """Scenario name -> entry; an absent file is an empty baseline."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(file, f"cannot read: {e}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise PlanError(file, f"not valid JSON (line {e.lineno}: {e.msg}); regenerate it with "
                              "refplan check --update-baseline") from None
    if not isinstance(doc, dict):
        raise PlanError(file, "expected an object of scenario name -> entry")
    out = {}
    for name, entry in doc.items():
        try:
            out[name] = BaselineEntry(int(entry["peak_bytes"]), str(entry["mode"]), str(entry["refplan_version"]),
                                      str(entry["updated"]))
        except (TypeError, KeyError, ValueError):
            raise PlanError(f"{file}: {name}", "expected peak_bytes, mode, refplan_version and updated") from None
    return out


def updated_baseline(old: dict[str, BaselineEntry], rows: list[CheckRow], names: list[str] | None = None,
                     now: str | None = None) -> dict[str, BaselineEntry]:
    """The baseline after accepting ``rows``' peaks.

    Unchanged peaks keep their entry (no churn in review); scenarios without a peak now (skipped,
    failed, or not selected) keep theirs; entries for names not in ``names`` (the budgets file's
    scenarios; default: the rows') are dropped.
    """
    from refplan import __version__

    stamp = now or datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    keep = set(names) if names is not None else {r.scenario.name for r in rows}
    out = {name: entry for name, entry in old.items() if name in keep}
    for r in rows:
        if r.now_bytes is None:
            continue
        prev = old.get(r.scenario.name)
        if prev is None or prev.peak_bytes != r.now_bytes or prev.mode != r.scenario.mode:
            out[r.scenario.name] = BaselineEntry(r.now_bytes, r.scenario.mode, __version__, stamp)
    return dict(sorted(out.items()))


def write_baseline(path: str | Path, entries: dict[str, BaselineEntry]) -> None:
    doc = {name: {"peak_bytes": e.peak_bytes, "mode": e.mode, "refplan_version": e.refplan_version,
                  "updated": e.updated} for name, e in sorted(entries.items())}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


# -- verdicts --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckRow:
    """One scenario's check. ``now_bytes`` None: skipped (``skipped``) or the burst failed (``error``).

    ``baseline`` is the comparable entry (same mode) or None; ``baseline_note`` says why one was not
    compared.
    """

    scenario: BudgetScenario
    now_bytes: int | None
    source: str  # "planner", "burst", "csv:FILE row N", "" when skipped
    baseline: BaselineEntry | None = None
    baseline_note: str = ""
    skipped: bool = False
    error: str = ""

    @property
    def budget_bytes(self) -> int:
        return self.scenario.budget_bytes

    @property
    def baseline_bytes(self) -> int | None:
        return None if self.baseline is None else self.baseline.peak_bytes

    @property
    def delta_bytes(self) -> int | None:
        if self.now_bytes is None or self.baseline is None:
            return None
        return self.now_bytes - self.baseline.peak_bytes

    @property
    def delta_pct(self) -> float | None:
        if self.delta_bytes is None or not self.baseline.peak_bytes:
            return None
        return 100.0 * self.delta_bytes / self.baseline.peak_bytes

    @property
    def allowed_growth_bytes(self) -> int | None:
        tol = self.scenario.tolerance
        return None if tol is None or self.baseline is None else tol.allowed_bytes(self.baseline.peak_bytes)

    @property
    def over_budget(self) -> bool:
        return self.now_bytes is not None and self.now_bytes > self.budget_bytes

    @property
    def regressed(self) -> bool:
        allowed = self.allowed_growth_bytes
        return allowed is not None and self.delta_bytes is not None and self.delta_bytes > allowed

    @property
    def failed(self) -> bool:
        """The measurement itself failed (OOM or crash)."""
        return self.now_bytes is None and not self.skipped

    @property
    def passed(self) -> bool:
        return not (self.over_budget or self.regressed or self.failed)

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "skipped"
        if self.failed:
            return "oom" if "oom" in self.error[:4] else "failed"
        bad = [w for w, b in (("over budget", self.over_budget), ("regressed", self.regressed)) if b]
        return " + ".join(bad) if bad else "pass"

    @property
    def reasons(self) -> tuple[str, ...]:
        """One sentence per failed condition, in GiB."""
        out = []
        if self.failed:
            out.append(self.error)
        if self.over_budget:
            out.append(f"peak {fmt_size(self.now_bytes)} exceeds the budget {fmt_size(self.budget_bytes)} "
                       f"({self.scenario.budget_text}) by {fmt_size(self.now_bytes - self.budget_bytes)}")
        if self.regressed:
            out.append(f"peak grew {fmt_size(self.delta_bytes, signed=True)} ({self.delta_pct:+.1f}%) over the "
                       f"baseline {fmt_size(self.baseline_bytes)}; tolerance {self.scenario.tolerance.text} "
                       f"= {fmt_size(self.allowed_growth_bytes)}")
        return tuple(out)


def check(scenarios: list[BudgetScenario], baseline: dict[str, BaselineEntry],
          measurements: dict[str, Measurement] | None = None) -> list[CheckRow]:
    """Check every scenario. Measured scenarios without a measurement are skipped (no verdict)."""
    rows = []
    for sc in scenarios:
        entry = baseline.get(sc.name)
        note = ""
        if entry is not None and entry.mode != sc.mode:
            entry, note = None, f"baseline is {baseline[sc.name].mode}; not compared with a {sc.mode} peak"
        if sc.mode == "estimate":
            rows.append(CheckRow(sc, estimate_peak(sc), "planner", entry, note))
            continue
        m = (measurements or {}).get(sc.name)
        if m is None:
            rows.append(CheckRow(sc, None, "", entry, note, skipped=True,
                                 error="measured scenario; run with --measured or --from-csv FILE"))
        else:
            rows.append(CheckRow(sc, m.peak_bytes, m.source, entry, note,
                                 error="" if m.peak_bytes is not None else f"{m.status}: {m.error}"))
    return rows


def exit_code(rows: list[CheckRow]) -> int:
    """0 when every checked scenario passes, 1 when a budget or tolerance is exceeded or a burst failed."""
    return 0 if all(r.passed for r in rows) else 1


def _round(x: float | None, nd: int) -> float | None:
    return None if x is None or math.isnan(x) else round(x, nd)


def row_record(r: CheckRow) -> dict:
    """The JSON view of one row (integer bytes, with GiB copies for reading)."""
    sc, t = r.scenario, r.scenario.train
    return {
        "scenario": sc.name,
        "mode": sc.mode,
        "model": sc.model,
        "method": t.method.value,
        "strategy": t.strategy.value,
        "finetune": t.finetune.value,
        "batch": t.batch,
        "seq": t.seq,
        "gpu": sc.gpu.name if sc.gpu else None,
        "budget": sc.budget_text,
        "budget_bytes": r.budget_bytes,
        "baseline_bytes": r.baseline_bytes,
        "now_bytes": r.now_bytes,
        "now_gib": _round(r.now_bytes / GIB if r.now_bytes is not None else None, 3),
        "delta_bytes": r.delta_bytes,
        "delta_pct": _round(r.delta_pct, 2),
        "tolerance": sc.tolerance.text if sc.tolerance else None,
        "allowed_growth_bytes": r.allowed_growth_bytes,
        "source": r.source,
        "verdict": r.verdict,
        "passed": r.passed,
        "over_budget": r.over_budget,
        "regressed": r.regressed,
        "skipped": r.skipped,
        "reasons": list(r.reasons),
        "note": r.baseline_note or (r.error if r.skipped else ""),
    }


# -- JUnit -----------------------------------------------------------------------------------------


def junit_xml(rows: list[CheckRow], suite: str = "refplan check") -> str:
    """JUnit XML (one testcase per scenario) in the dialect GitHub, GitLab and Jenkins render."""
    import xml.etree.ElementTree as ET

    failures = sum(1 for r in rows if r.over_budget or r.regressed)
    errors = sum(1 for r in rows if r.failed)
    skipped = sum(1 for r in rows if r.skipped)
    root = ET.Element("testsuites", name=suite, tests=str(len(rows)), failures=str(failures), errors=str(errors))
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(rows)), failures=str(failures),
                       errors=str(errors), skipped=str(skipped))
    for r in rows:
        tc = ET.SubElement(ts, "testcase", name=r.scenario.name, classname=f"refplan.budgets.{r.scenario.mode}")
        if r.skipped:
            ET.SubElement(tc, "skipped", message=r.error)
        elif r.failed:
            ET.SubElement(tc, "error", message=r.error, type=r.verdict).text = r.error
        elif not r.passed:
            msg = "; ".join(r.reasons)
            ET.SubElement(tc, "failure", message=msg, type=r.verdict).text = msg
        now = "-" if r.now_bytes is None else f"{r.now_bytes / GIB:.3f} GiB"
        base = "-" if r.baseline_bytes is None else f"{r.baseline_bytes / GIB:.3f} GiB"
        ET.SubElement(tc, "system-out").text = (f"{r.scenario.label}: now {now}, baseline {base}, budget "
                                                f"{r.budget_bytes / GIB:.3f} GiB ({r.scenario.budget_text})")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
