"""One output sink for every command: table (rich), JSON or CSV, from the same typed records.

rich is imported only when a table is rendered, so ``--format json`` stays at standard-library
import cost.
"""

from __future__ import annotations

import csv
import io
import json
import sys

from refplan.model import ModelSpec
from refplan.result import Estimate
from refplan.units import GIB

#: component columns in display order (any others follow alphabetically)
COMPONENT_ORDER = (
    "policy weights", "lora weights", "reference weights", "master weights", "optimizer state",
    "gradients", "activations", "activation grads", "logprob path", "reference forward",
    "optimizer transient", "autocast weight copies", "batch", "gathered params", "cublas workspace",
    "cuda context", "allocator slack",
)


#: short table headers (JSON and CSV keep the full names)
SHORT = {
    "policy weights": "policy", "lora weights": "lora", "reference weights": "ref", "master weights": "master",
    "optimizer state": "optim", "gradients": "grads", "activations": "acts", "activation grads": "act grads",
    "logprob path": "logprob", "reference forward": "ref fwd", "optimizer transient": "opt tmp",
    "autocast weight copies": "autocast", "batch": "batch", "gathered params": "gathered",
    "cublas workspace": "cublas", "cuda context": "ctx", "allocator slack": "slack",
}


def component_names(rows: list[Estimate]) -> list[str]:
    seen = {k for r in rows for k in r.components}
    ordered = [c for c in COMPONENT_ORDER if c in seen]
    return ordered + sorted(seen - set(ordered))


def cheapest_per_method(rows: list[Estimate]) -> set[int]:
    """Indices of the lowest-peak row of each method (ties: first)."""
    best: dict[str, int] = {}
    for i, r in enumerate(rows):
        if r.method not in best or r.peak_bytes < rows[best[r.method]].peak_bytes:
            best[r.method] = i
    return set(best.values())


def model_record(model: ModelSpec) -> dict:
    return {
        "id": model.model_id,
        "family": model.family,
        "params": model.params,
        "layers": model.num_layers,
        "hidden_size": model.hidden_size,
        "vocab_size": model.vocab_size,
        "source": model.source,
        "generic_fallback": model.generic_fallback,
    }


def row_record(r: Estimate, cheapest: bool = False) -> dict:
    return {
        "method": r.method,
        "strategy": r.strategy,
        "finetune": r.finetune,
        "peak_bytes": r.peak_bytes,
        "peak_gib": round(r.peak_bytes / GIB, 3),
        "peak_phase": r.peak_phase.name,
        "components": dict(r.components),
        "phases": {p.name: p.total_bytes for p in r.phases},
        "fits": r.fits,
        "gpu": r.gpu,
        "headroom_bytes": r.headroom_bytes,
        "cheapest_for_method": cheapest,
    }


def render_estimates(model: ModelSpec, rows: list[Estimate], fmt: str, settings: dict, out=None,
                     skipped_kto: bool = False) -> None:
    out = out or sys.stdout
    best = cheapest_per_method(rows)
    if fmt == "json":
        doc = {"model": model_record(model), "settings": settings,
               "rows": [row_record(r, i in best) for i, r in enumerate(rows)]}
        json.dump(doc, out, indent=2)
        out.write("\n")
        return
    comps = component_names(rows)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["model", "method", "strategy", "finetune", "peak_bytes", "peak_phase", "fits", "gpu"]
                   + [f"{c.replace(' ', '_')}_bytes" for c in comps])
        for r in rows:
            cs = r.components
            w.writerow([model.model_id, r.method, r.strategy, r.finetune, r.peak_bytes, r.peak_phase.name,
                        "" if r.fits is None else r.fits, r.gpu or ""] + [cs.get(c, 0) for c in comps])
        out.write(buf.getvalue())
        return
    from rich.console import Console
    from rich.table import Table

    gpu = rows[0].gpu if rows else None
    title = (f"{model.model_id} ({model.family}, {model.params / 1e9:.2f}B params) — peak memory per device, GiB"
             + (f" — on {gpu} ({rows[0].gpu_bytes / GIB:.1f} GiB)" if gpu else ""))
    t = Table(title=title, title_justify="left", show_lines=False)
    t.add_column("method", no_wrap=True)
    t.add_column("strategy", no_wrap=True)
    t.add_column("peak GiB", justify="right", style="bold", no_wrap=True)
    t.add_column("peak phase", no_wrap=True)
    for c in comps:
        t.add_column(SHORT.get(c, c), justify="right", no_wrap=True)
    if gpu:
        t.add_column("fits", justify="center")
    for i, r in enumerate(rows):
        cs = r.components
        mark = " ★" if i in best else ""
        cells = [r.method, r.strategy + mark, f"{r.peak_bytes / GIB:.2f}", r.peak_phase.name]
        cells += [f"{cs[c] / GIB:.2f}" if c in cs else "·" for c in comps]
        if gpu:
            head = r.headroom_bytes / GIB
            cells.append(f"[green]yes[/] ({head:+.1f})" if r.fits else f"[red]no[/] ({head:+.1f})")
        t.add_row(*cells)
    con = Console(file=out, width=max(120, 62 + 10 * len(comps)))
    con.print(t)
    if model.generic_fallback:
        con.print(f"[yellow]note:[/] unknown family {model.family!r}: parameters counted as a generic "
                  "llama-style decoder")
    if skipped_kto:
        con.print("[yellow]note:[/] kto is not shown: TRL needs a per-device batch of at least 2 for KTO "
                  "(add --batch 2)")
    con.print("★ cheapest strategy per method. Components (GiB) are the breakdown at each row's peak phase: "
              + ", ".join(f"{SHORT.get(c, c)} = {c}" for c in comps if SHORT.get(c, c) != c) + ". GiB = 2^30 bytes.")
