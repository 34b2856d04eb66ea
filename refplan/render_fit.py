"""What ``refplan fit`` shows: one :class:`~refplan.output.Output` from the typed fit rows (table,
JSON with ``rows[].max_batch / max_seq / min_gpus / sharding / recommendation``, CSV)."""

from __future__ import annotations

from refplan.fit import FitAnswer, FitRow
from refplan.output import Column, Output
from refplan.render import _config_lines, model_record, seq_lines, settings_record
from refplan.units import GIB


def _row_record(r: FitRow, recommendation: str, configured: bool | None) -> dict:
    t = r.train
    rec = {
        "method": t.method.value, "strategy": t.strategy.value, "finetune": t.finetune.value,
        "batch": t.batch, "seq": t.seq, "peak_bytes": r.peak_bytes, "peak_gib": round(r.peak_bytes / GIB, 3),
        "fits": r.fits, "max_batch": r.max_batch, "grad_accum": r.grad_accum, "max_seq": r.max_seq,
        "max_seq_capped": r.seq_capped, "min_gpus": r.min_gpus, "sharding": r.sharding,
        "per_rank_bytes": r.per_rank_bytes, "recommendation": recommendation,
    }
    if configured is not None:
        rec["configured"] = configured
    return rec


def _gpus_cell(r: FitRow) -> str:
    if r.fits:
        return f"{r.train.gpus} (fits)" if r.train.gpus > 1 else "1 (fits)"
    if not r.min_gpus:
        return "[red]none reaches it[/]"
    return f"{r.min_gpus} × {r.sharding} ({r.per_rank_bytes / GIB:.1f})"


def fit_output(inputs, answer: FitAnswer, gpu, skipped_kto: bool, vary: str) -> Output:
    rows = list(answer.rows)
    cfg = inputs.config
    configured = [inputs.configured(r.train.method.value, r.train.strategy.value) if cfg else None for r in rows]
    records = [_row_record(r, answer.recommendations.get(r.train.method.value, ""), c)
               for r, c in zip(rows, configured)]
    doc = {"model": model_record(inputs.model), "gpu": {"name": gpu.name, "memory_bytes": gpu.memory_bytes},
           "settings": settings_record(inputs, "formula", gpu), "provenance": inputs.provenance_record(),
           "rows": records, "recommendations": answer.recommendations}
    if inputs.warnings:
        doc["warnings"] = list(inputs.warnings)
    first = rows[0].train if rows else None
    title = (f"{inputs.model.model_id} on {gpu.name} ({gpu.memory_bytes / GIB:.1f} GiB) — what fits"
             + (f" (batch {first.batch} × {first.seq} tokens asked)" if first else ""))
    columns = (Column("method"), Column("strategy"), Column("peak GiB", "right", "bold"), Column("fits", "center"),
               Column("max batch", "right"), Column("accum", "right"), Column("max seq", "right"),
               Column("GPUs × sharding (per-rank GiB)", no_wrap=False))
    cells = []
    for r, c in zip(rows, configured):
        t = r.train
        cells.append((t.method.value, t.strategy.value + (" ●" if c else ""), f"{r.peak_bytes / GIB:.2f}",
                      "[green]yes[/]" if r.fits else "[red]no[/]", str(r.max_batch),
                      "·" if r.grad_accum is None else str(r.grad_accum),
                      f"{r.max_seq}" + (" (cap)" if r.seq_capped else ""), _gpus_cell(r)))
    notes = [f"[bold]{m}[/]: {text}" for m, text in answer.recommendations.items()]
    if any(r.seq_capped for r in rows):
        notes.append("[yellow]note:[/] (cap): the longest length stops at the model's max_position_embeddings")
    if skipped_kto:
        notes.append("[yellow]note:[/] kto is not shown: TRL needs a per-device batch of at least 2 (add --batch 2)")
    notes.append("max batch at the asked length, max seq at the asked batch: the estimate fits there and not one step "
                 "beyond. GPUs: when it does not fit on one, the fewest GPUs and sharding (per rank). GiB = 2^30 bytes.")
    columns_csv = tuple(records[0]) if records else ()
    return Output(document=doc, title=title, columns=columns, cells=tuple(cells), notes=tuple(notes),
                  header_lines=_config_lines(inputs) + seq_lines(inputs), csv_columns=columns_csv, csv_rows=tuple(records), width=150)
