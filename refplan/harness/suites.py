"""Bench suites: TOML files shipped in ``refplan/suites/``, expanded into scenarios.

A suite has ``[defaults]`` (scenario fields), ``[[matrix]]`` blocks (methods x fine-tune modes x
strategies, optionally ``ref_dtypes`` and ``ref_quants`` -- 'separate' again with a reference in that dtype
or loaded k-bit -- and ``set``, fields of that block's scenarios) and ``[[unsupported]]`` cells TRL cannot run,
listed on purpose so the report says why they are missing. Imports no torch.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from refplan.errors import PlanError
from refplan.harness.scenario import Scenario
from refplan.methods import Finetune, Method, Strategy, applicable_strategies, check_combination


@dataclass(frozen=True)
class Unsupported:
    """A matrix cell TRL cannot run: it becomes a row with status ``unsupported`` and the reason."""

    scenario: dict
    reason: str

    @property
    def key(self) -> str:
        s = self.scenario
        return f"{s['method']}-{s['strategy']}-{s.get('finetune', 'full')}-unsupported"


def shipped_suites() -> dict:
    """The suites installed with refplan (``refplan/suites/<name>.toml``), by name."""
    folder = resources.files("refplan") / "suites"
    return {f.name.removesuffix(".toml"): f for f in folder.iterdir() if f.name.endswith(".toml")}


def load_suite(name_or_path: str) -> dict:
    """A suite by name (one of :func:`shipped_suites`) or a TOML file's path."""
    shipped = shipped_suites()
    path = Path(name_or_path)
    if not path.suffix and name_or_path in shipped:
        source, name = shipped[name_or_path], name_or_path
    elif path.is_file():
        source, name = path, path.stem
    else:
        raise PlanError("--suite", f"no suite {name_or_path!r} (known: {', '.join(sorted(shipped))})")
    try:
        suite = tomllib.loads(source.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise PlanError("--suite", f"{source}: {e}") from None
    suite.setdefault("name", name)
    return suite


def expand(suite: dict, overrides: dict | None = None) -> list[Scenario | Unsupported]:
    """Every scenario of a suite, baselines ('separate' at the policy dtype) first within each group.

    ``overrides`` (from CLI flags) replace suite defaults. A suite cell TRL cannot run becomes an
    :class:`Unsupported` row; the ``[[unsupported]]`` table lists such cells on purpose, so the
    report says why they are missing.
    """
    defaults = {**suite.get("defaults", {}), **(overrides or {})}
    out: list[Scenario | Unsupported] = []
    seen = set()
    for block in suite.get("matrix", []):
        methods = [Method(m) for m in block.get("methods", [m.value for m in Method])]
        finetunes = [Finetune(f) for f in block.get("finetune", ["full"])]
        for m in methods:
            for ft in finetunes:
                strategies = block.get("strategies", "applicable")
                names = ([s.value for s in applicable_strategies(m, ft)] if strategies == "applicable"
                         else strategies)
                cells = [(Strategy(s), {}) for s in names]
                if Strategy.SEPARATE.value in names:
                    cells += [(Strategy.SEPARATE, {"ref_dtype": d}) for d in block.get("ref_dtypes", [])]
                    cells += [(Strategy.SEPARATE, {"ref_quant": q}) for q in block.get("ref_quants", [])]
                for (strat, reference), shard in ((c, sh) for c in cells for sh in _shardings(block)):
                    params = {**defaults, **block.get("set", {}), "method": m, "strategy": strat,
                              "finetune": ft, "ref_dtype": None, **reference, **shard}
                    item = make_item(params)
                    if item.key not in seen:
                        seen.add(item.key)
                        out.append(item)
    for cell in suite.get("unsupported", []):
        item = make_item({**defaults, **cell})
        if item.key not in seen:
            seen.add(item.key)
            out.append(item)
    return order_baselines_first(out)


def _shardings(block: dict) -> list[dict]:
    """A block's ``shardings = ["zero2", "zero3", "fsdp"]`` axis (each sharded over ``gpus``), or the
    defaults' single setting."""
    names = block.get("shardings")
    return [{"sharding": n} for n in names] if names else [{}]


def make_item(params: dict) -> Scenario | Unsupported:
    """A scenario, or the :class:`Unsupported` row that says why TRL cannot run it."""
    try:
        return Scenario.from_dict(params)
    except PlanError as e:
        plain = {k: (v.value if hasattr(v, "value") else v) for k, v in params.items()}
        return Unsupported(plain, f"{e.where}: {e.message}")


def order_baselines_first(items: list) -> list:
    """Every parity baseline runs before the scenarios compared with it, and they right after it: a row's
    speed relative to ``separate`` is a ratio of two timings, and on a shared machine whose speed drifts
    over minutes the two are best taken close together. Otherwise the order is kept (rows whose baseline
    is not in ``items`` come last)."""
    baselines = [it for it in items if isinstance(it, Scenario) and it.baseline is None]
    followers: dict[str, list] = {b.key: [] for b in baselines}
    rest = []
    for it in items:
        if isinstance(it, Scenario) and it.baseline is None:
            continue
        base = it.baseline.key if isinstance(it, Scenario) and it.baseline is not None else None
        (followers[base] if base in followers else rest).append(it)
    return [x for b in baselines for x in (b, *followers[b.key])] + rest


def scenarios_from_flags(methods, strategies, finetunes, defaults: dict, explicit=()) -> list[Scenario]:
    """The matrix named by --method/--strategy/--finetune.

    Combinations TRL cannot run are left out; but when a value the user named explicitly (``explicit``
    holds "method", "strategy", "finetune") has no runnable combination at all, that is an error
    naming the flag (exit 2), e.g. ``--strategy unwrap --finetune full``.
    """
    out, refusals = [], []
    for m in methods:
        for ft in finetunes:
            for s in (strategies or applicable_strategies(m, ft)):
                try:
                    check_combination(m, s, ft)
                except PlanError as e:
                    refusals.append(((m, s, ft), e))
                    continue
                out.append(Scenario.from_dict({**defaults, "method": m, "strategy": s, "finetune": ft}))
    for axis, values, index in (("method", methods, 0), ("strategy", strategies, 1), ("finetune", finetunes, 2)):
        if axis not in explicit or not values:
            continue
        for v in values:
            if not any((sc.train.method, sc.train.strategy, sc.train.finetune)[index] is v for sc in out):
                raise next(e for combo, e in refusals if combo[index] is v)
    if not out and refusals:
        raise refusals[0][1]
    return order_baselines_first(out)
