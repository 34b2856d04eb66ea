"""GPU catalog: data with provenance (refplan/data/gpus.json), looked up by name or alias."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from refplan.errors import PlanError
from refplan.units import MIB

_DATA = Path(__file__).with_name("data") / "gpus.json"


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int
    source: str
    aliases: tuple[str, ...] = ()


@lru_cache(maxsize=1)
def catalog() -> tuple[GPU, ...]:
    raw = json.loads(_DATA.read_text())
    return tuple(GPU(g["name"], g["memory_mib"] * MIB, g["source"], tuple(g.get("aliases", ()))) for g in raw["gpus"])


def _norm(s: str) -> str:
    return s.lower().replace("_", "-").replace(" ", "-").replace("nvidia-", "")


def get_gpu(name: str) -> GPU:
    """Look up a GPU by name or alias (case-insensitive); PlanError naming --gpu otherwise."""
    key = _norm(name)
    for g in catalog():
        if key == _norm(g.name) or key in {_norm(a) for a in g.aliases}:
            return g
    names = [g.name for g in catalog()]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.3)
    hint = f"; closest: {', '.join(close)}" if close else f"; known: {', '.join(names)}"
    raise PlanError("--gpu", f"unknown GPU {name!r}{hint}")


def capacity_from_args(name: str | None, memory: str | None) -> GPU:
    """The GPU a planning command fits into: a catalog name (``--gpu``) or a size (``--gpu-memory``,
    e.g. ``80GiB``) for a device the catalog lacks; exactly one of them."""
    from refplan.check.sizes import parse_size

    if name and memory:
        raise PlanError("--gpu/--gpu-memory", "give one: a catalog GPU name or the memory of your device")
    if memory:
        size = parse_size(memory, "--gpu-memory")
        if size <= 0:
            raise PlanError("--gpu-memory", f"must be positive (got {memory!r})")
        return GPU(f"{memory.replace(' ', '')} GPU", size, "--gpu-memory")
    if not name:
        raise PlanError("--gpu", "fit needs a GPU: --gpu NAME (e.g. A100-40GB) or --gpu-memory 80GiB")
    return get_gpu(name)
