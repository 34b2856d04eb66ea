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
    "optimizer transient", "autocast weight copies", "batch", "gathered params", "gathered reference",
    "unsharded originals", "cublas workspace",
    "cuda context", "allocator slack",
)


#: short table headers (JSON and CSV keep the full names)
SHORT = {
    "policy weights": "policy", "lora weights": "lora", "reference weights": "ref", "master weights": "master",
    "optimizer state": "optim", "gradients": "grads", "activations": "acts", "activation grads": "act grads",
    "logprob path": "logprob", "reference forward": "ref fwd", "optimizer transient": "opt tmp",
    "autocast weight copies": "autocast", "batch": "batch", "gathered params": "gathered",
    "gathered reference": "ref gathered", "unsharded originals": "originals",
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
        "trace_only": model.trace_only,
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


#: settings echoed in the JSON document, in the order the flags are listed
SETTING_KEYS = ("finetune", "lora_r", "lora_targets", "dtype", "autocast", "ref_dtype", "ref_quant", "batch", "seq",
                "precompute_batch", "grad_ckpt", "optim", "attn", "gpus", "zero", "fsdp", "offload", "quant_bits",
                "quant_type", "double_quant", "quant_compute_dtype", "prepare_kbit")
#: settings shown above the table when a config file was read
SHOWN = ("finetune", "dtype", "autocast", "batch", "seq", "grad_ckpt", "lora_r", "lora_targets", "optim", "attn",
         "gpus", "sharding", "offload", "strategy")


def settings_record(inputs, engine: str, gpu) -> dict:
    """The resolved settings as CLI spellings (``zero`` / ``fsdp`` from the sharding)."""
    s = dict(inputs.settings)
    sharding = str(s.get("sharding", "none"))
    s["zero"] = int(sharding[4:]) if sharding.startswith("zero") else 0
    s["fsdp"] = sharding == "fsdp"
    targets = s.get("lora_targets")
    if isinstance(targets, (tuple, list)):
        s["lora_targets"] = ",".join(targets)
    rec = {"engine": engine}
    rec.update({k: getattr(s.get(k), "value", s.get(k)) for k in SETTING_KEYS})
    rec["gpu"] = gpu.name if gpu is not None else None
    rec["device"] = getattr(s.get("device"), "value", s.get("device"))
    return rec


def _config_lines(inputs) -> tuple[str, ...]:
    from rich.markup import escape

    cfg = inputs.config
    if cfg is None:
        return ()
    methods = ", ".join(m.value for m in cfg.methods)
    strategy = f", reference strategy {cfg.strategy.value}" if cfg.strategy is not None else ""
    lines = [f"config: {escape(cfg.path)} ({cfg.framework}) -- {methods}{strategy}; its row is marked ●"]
    prov = dict(inputs.provenance)
    if cfg.strategy is not None and "strategy" in cfg.provenance:
        prov["strategy"] = cfg.provenance["strategy"]
    vals = {**inputs.settings, "strategy": cfg.strategy.value if cfg.strategy else None}
    for k in SHOWN:
        if k in vals and k in prov:
            v = vals[k]
            v = ",".join(v) if isinstance(v, (tuple, list)) else getattr(v, "value", v)
            lines.append(f"  {k.replace('_', '-')} = {escape(str(v))}  [dim]({escape(str(prov[k]))})[/]")
    return tuple(lines)


def seq_lines(inputs) -> tuple[str, ...]:
    """The line that says how --dataset derived seq (refplan.seqlen)."""
    from rich.markup import escape

    return (escape(inputs.seq_note),) if getattr(inputs, "seq_note", None) else ()


def estimate_output(inputs, rows: list[Estimate], engine: str = "formula", gpu=None, skipped_kto: bool = False,
                    notes: tuple[str, ...] = ()) -> Output:
    """The estimate table, JSON document and CSV rows, from the same :class:`Estimate` records
    (``notes``: how the rows were computed, e.g. the trace fallback's line)."""
    model = inputs.model
    best = cheapest_per_method(rows)
    comps = component_names(rows)
    configured = [inputs.configured(r.method, r.strategy) for r in rows]
    records = []
    for i, r in enumerate(rows):
        rec = row_record(r, i in best)
        if inputs.config is not None:
            rec["configured"] = configured[i]
        records.append(rec)
    doc = {"model": model_record(model), "settings": settings_record(inputs, engine, gpu),
           "provenance": inputs.provenance_record(), "rows": records}
    if inputs.config is not None:
        cfg = inputs.config
        doc["config"] = {"path": cfg.path, "framework": cfg.framework, "methods": [m.value for m in cfg.methods],
                         "strategy": cfg.strategy.value if cfg.strategy else None,
                         "strategy_source": cfg.provenance["strategy"].record() if "strategy" in cfg.provenance
                         else None}
    if inputs.warnings:
        doc["warnings"] = list(inputs.warnings)
    if notes:
        doc["notes"] = list(notes)
    csv_columns = (["model", "method", "strategy", "finetune", "peak_bytes", "peak_phase", "fits", "gpu"]
                   + [f"{c.replace(' ', '_')}_bytes" for c in comps])
    csv_rows = [dict(zip(csv_columns, [model.model_id, r.method, r.strategy, r.finetune, r.peak_bytes,
                                       r.peak_phase.name, "" if r.fits is None else r.fits, r.gpu or ""]
                         + [r.components.get(c, 0) for c in comps])) for r in rows]
    gpu_name = rows[0].gpu if rows else None
    title = (f"{model.model_id} ({model.family}, {model.params / 1e9:.2f}B params) — peak memory per device, GiB"
             + (f" — on {gpu_name} ({rows[0].gpu_bytes / GIB:.1f} GiB)" if gpu_name else ""))
    columns = [Column("method"), Column("strategy"), Column("peak GiB", "right", "bold"), Column("peak phase")]
    columns += [Column(SHORT.get(c, c), "right") for c in comps]
    if gpu_name:
        columns.append(Column("fits", "center", no_wrap=False))
    cells = []
    for i, r in enumerate(rows):
        cs = r.components
        mark = (" ★" if i in best else "") + (" ●" if configured[i] else "")
        row = [r.method, r.strategy + mark, f"{r.peak_bytes / GIB:.2f}", r.peak_phase.name]
        row += [f"{cs[c] / GIB:.2f}" if c in cs else "·" for c in comps]
        if gpu_name:
            head = r.headroom_bytes / GIB
            row.append(f"[green]yes[/] ({head:+.1f})" if r.fits else f"[red]no[/] ({head:+.1f})")
        cells.append(tuple(row))
    from rich.markup import escape

    lines = [f"[yellow]note:[/] {escape(n)}" for n in notes]
    if skipped_kto:
        lines.append("[yellow]note:[/] kto is not shown: TRL needs a per-device batch of at least 2 for KTO "
                     "(add --batch 2)")
    lines.append("★ cheapest strategy per method. Components (GiB) are the breakdown at each row's peak phase: "
                 + ", ".join(f"{SHORT.get(c, c)} = {c}" for c in comps if SHORT.get(c, c) != c)
                 + ". GiB = 2^30 bytes.")
    return Output(document=doc, title=title, columns=tuple(columns), cells=tuple(cells), notes=tuple(lines),
                  header_lines=_config_lines(inputs) + seq_lines(inputs), csv_columns=tuple(csv_columns), csv_rows=tuple(csv_rows),
                  width=max(120, 62 + 10 * len(comps)))
