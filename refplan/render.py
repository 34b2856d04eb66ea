"""What ``refplan estimate`` shows: its :class:`~refplan.output.Output` built from typed
:class:`~refplan.result.Estimate` records (rendered by the one output sink, :mod:`refplan.output`)."""

from __future__ import annotations

from refplan.model import ModelSpec
from refplan.output import Column, Output
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


def estimate_output(model: ModelSpec, rows: list[Estimate], settings: dict, skipped_kto: bool = False) -> Output:
    """The estimate table, JSON document and CSV rows, from the same :class:`Estimate` records."""
    best = cheapest_per_method(rows)
    comps = component_names(rows)
    doc = {"model": model_record(model), "settings": settings,
           "rows": [row_record(r, i in best) for i, r in enumerate(rows)]}
    csv_columns = (["model", "method", "strategy", "finetune", "peak_bytes", "peak_phase", "fits", "gpu"]
                   + [f"{c.replace(' ', '_')}_bytes" for c in comps])
    csv_rows = [dict(zip(csv_columns, [model.model_id, r.method, r.strategy, r.finetune, r.peak_bytes,
                                       r.peak_phase.name, "" if r.fits is None else r.fits, r.gpu or ""]
                         + [r.components.get(c, 0) for c in comps])) for r in rows]
    gpu = rows[0].gpu if rows else None
    title = (f"{model.model_id} ({model.family}, {model.params / 1e9:.2f}B params) — peak memory per device, GiB"
             + (f" — on {gpu} ({rows[0].gpu_bytes / GIB:.1f} GiB)" if gpu else ""))
    columns = [Column("method"), Column("strategy"), Column("peak GiB", "right", "bold"), Column("peak phase")]
    columns += [Column(SHORT.get(c, c), "right") for c in comps]
    if gpu:
        columns.append(Column("fits", "center", no_wrap=False))
    cells = []
    for i, r in enumerate(rows):
        cs = r.components
        row = [r.method, r.strategy + (" ★" if i in best else ""), f"{r.peak_bytes / GIB:.2f}", r.peak_phase.name]
        row += [f"{cs[c] / GIB:.2f}" if c in cs else "·" for c in comps]
        if gpu:
            head = r.headroom_bytes / GIB
            row.append(f"[green]yes[/] ({head:+.1f})" if r.fits else f"[red]no[/] ({head:+.1f})")
        cells.append(tuple(row))
    notes = []
    if model.generic_fallback:
        notes.append(f"[yellow]note:[/] unknown family {model.family!r}: parameters counted as a generic "
                     "llama-style decoder")
    if skipped_kto:
        notes.append("[yellow]note:[/] kto is not shown: TRL needs a per-device batch of at least 2 for KTO "
                     "(add --batch 2)")
    notes.append("★ cheapest strategy per method. Components (GiB) are the breakdown at each row's peak phase: "
                 + ", ".join(f"{SHORT.get(c, c)} = {c}" for c in comps if SHORT.get(c, c) != c)
                 + ". GiB = 2^30 bytes.")
    return Output(document=doc, title=title, columns=tuple(columns), cells=tuple(cells), notes=tuple(notes),
                  csv_columns=tuple(csv_columns), csv_rows=tuple(csv_rows), width=max(120, 62 + 10 * len(comps)))
