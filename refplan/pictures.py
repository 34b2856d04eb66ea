"""Pictures of where the memory goes, and one self-contained HTML page to attach to a GPU request.

- :func:`estimate_plot`: a stacked bar per method x strategy of the components at its peak phase,
  with the GPU's capacity as a line;
- :func:`timeline_plot`: memory over the moments of one step (precompute, forward, reference
  forward, backward layer by layer, optimizer step) for the rows compared;
- :func:`fit_plot`: peak against batch (or length) per strategy, with the capacity and the fit points;
- :func:`estimate_page` / :func:`fit_page`: the table, the pictures (PNG inlined as data: URIs), the
  settings and their origins, in one HTML file that needs no network and runs no script.

matplotlib is imported here only, so the plain-table path never pays for it.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import replace
from pathlib import Path

from refplan.errors import PlanError
from refplan.units import GIB

#: one colour per component, stable across pictures
_COLOURS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974",
            "#64B5CD", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path | None) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    data = buf.getvalue()
    if path is not None:
        try:
            Path(path).write_bytes(data)
        except OSError as err:
            raise PlanError(str(path), f"cannot write the picture: {err.strerror or err}") from None
    return data


def estimate_plot(model, rows, gpu, path=None) -> bytes:
    """Stacked bars: each row's components at its peak phase (GiB), the GPU's capacity as a line."""
    from refplan.render import component_names

    plt = _plt()
    comps = component_names(rows)
    labels = [f"{r.method} {r.strategy}" for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.8))
    left = [0.0] * len(rows)
    for i, c in enumerate(comps):
        vals = [r.components.get(c, 0) / GIB for r in rows]
        ax.barh(labels, vals, left=left, color=_COLOURS[i % len(_COLOURS)], label=c, height=0.7)
        left = [a + b for a, b in zip(left, vals)]
    if gpu is not None:
        ax.axvline(gpu.memory_bytes / GIB, color="black", linestyle="--", linewidth=1.2)
        ax.text(gpu.memory_bytes / GIB, -0.9, f" {gpu.name}", fontsize=8, va="top")
    ax.invert_yaxis()
    ax.set_xlabel("GiB per device at the peak phase")
    ax.set_title(f"{model.model_id}: where the memory goes", fontsize=10)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    return _save(fig, path)


def timeline_plot(model, trains, gpu, path=None) -> bytes:
    """Memory over one step for each TrainSpec in ``trains`` (one line each)."""
    from refplan.planner import timeline

    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.2))
    longest = []
    for i, train in enumerate(trains):
        points = timeline(model, train)
        ys = [p[2] / GIB for p in points]
        ax.plot(range(len(ys)), ys, marker=".", markersize=3, linewidth=1.4, color=_COLOURS[i % len(_COLOURS)],
                label=f"{train.method.value} {train.strategy.value}")
        if len(points) > len(longest):
            longest = points
    ticks = [(i, p[0]) for i, p in enumerate(longest) if i == 0 or longest[i - 1][0] != p[0]]
    ax.set_xticks([t[0] for t in ticks], [t[1] for t in ticks], rotation=35, ha="right", fontsize=8)
    if gpu is not None:
        ax.axhline(gpu.memory_bytes / GIB, color="black", linestyle="--", linewidth=1.2, label=gpu.name)
    ax.set_ylabel("GiB per device")
    ax.set_title(f"{model.model_id}: memory over one step (backward layer by layer, from the top)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _sweep(row, vary: str) -> list[int]:
    edge = row.max_batch if vary == "batch" else row.max_seq
    start = row.train.batch if vary == "batch" else row.train.seq
    top = max(2 * max(edge, 1), start + 1, 4) if vary == "batch" else max(int(edge * 1.6), start * 2, 256)
    n = 24
    pts = sorted({max(1, round(top * k / n)) for k in range(1, n + 1)} | {max(edge, 1)})
    if vary == "batch" and row.train.method.caps.kl_forward:
        pts = [p for p in pts if p >= 2]
    return pts


def fit_plot(model, answer, gpu, vary: str, path=None) -> bytes:
    """Peak against batch (``vary="batch"``) or length (``"seq"``) per row, with the capacity line and
    each row's fit point (the largest that fits) marked."""
    from refplan.planner import estimate

    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.6))
    for i, row in enumerate(answer.rows):
        xs = _sweep(row, vary)
        ys = [estimate(model, replace(row.train, **{vary: x})).peak_bytes / GIB for x in xs]
        colour = _COLOURS[i % len(_COLOURS)]
        ax.plot(xs, ys, color=colour, linewidth=1.3, label=f"{row.train.method.value} {row.train.strategy.value}")
        edge = row.max_batch if vary == "batch" else row.max_seq
        if edge:
            peak = estimate(model, replace(row.train, **{vary: edge})).peak_bytes / GIB
            ax.plot([edge], [peak], marker="o", color=colour, markersize=6)
            ax.annotate(str(edge), (edge, peak), textcoords="offset points", xytext=(3, -10), fontsize=7)
    ax.axhline(answer.capacity_bytes / GIB, color="black", linestyle="--", linewidth=1.2, label=gpu.name)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("per-device batch" if vary == "batch" else "padded tokens per sequence")
    ax.set_ylabel("peak GiB per device")
    ax.set_title(f"{model.model_id} on {gpu.name}: the largest {vary} that fits (dots)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


# -- HTML ------------------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1150px;
color:#222;padding:0 1em}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}table{border-collapse:collapse;
font-size:.85em;margin:.5em 0}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}tr.mark td{background:#fff6d5;font-weight:600}.no{color:#b00020}.yes{color:#1b7f3b}
img{max-width:100%;border:1px solid #ddd;margin:.4em 0}.muted{color:#666;font-size:.85em}ul{font-size:.9em}"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(headers: list[str], rows: list[list], marks: list[bool], left: int = 2) -> str:
    out = ["<table><tr>" + "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>'
                                     for i, h in enumerate(headers)) + "</tr>"]
    for cells, mark in zip(rows, marks):
        tds = "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(cells))
        out.append(f'<tr class="{"mark" if mark else ""}">{tds}</tr>')
    return "\n".join(out) + "</table>"


def _settings_html(inputs) -> str:
    rows = []
    for key in sorted(inputs.settings):
        value = inputs.settings[key]
        value = ",".join(value) if isinstance(value, (tuple, list)) else getattr(value, "value", value)
        src = inputs.provenance.get(key)
        rows.append([html.escape(key), html.escape(str(value)), html.escape(src.origin.value if src else ""),
                     html.escape(src.detail if src else "")])
    body = _table(["setting", "value", "origin", "where"], rows, [False] * len(rows), left=4)
    cfg = inputs.config
    head = ""
    if cfg is not None:
        head = (f"<p>Config <code>{html.escape(cfg.path)}</code> ({cfg.framework}): "
                f"{html.escape(', '.join(m.value for m in cfg.methods))}"
                + (f", reference strategy <b>{cfg.strategy.value}</b>" if cfg.strategy else "")
                + ". Its row is highlighted.</p>")
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in inputs.warnings)
    return head + body + (f"<h2>Warnings</h2><ul>{warn}</ul>" if warn else "")


def _page(title: str, sections: list[tuple[str, str]]) -> str:
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" if h else content for h, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n"
            '<p class="muted">Made by refplan. GiB = 2^30 bytes. Peak per device; each row is the maximum over the '
            "phases of one training step.</p></body></html>\n")


def _write(path, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as err:
        raise PlanError(str(path), f"cannot write the page: {err.strerror or err}") from None


def estimate_page(inputs, rows, gpu, path) -> None:
    from refplan.query import needs_trace
    from refplan.render import cheapest_per_method
    from refplan.spec import TrainSpec

    best = cheapest_per_method(rows)
    marks = [inputs.configured(r.method, r.strategy) for r in rows]
    cells = [[r.method, r.strategy + (" ★" if i in best else ""), f"{r.peak_bytes / GIB:.2f}", r.peak_phase.name]
             + ([f'<span class="{"yes" if r.fits else "no"}">{"yes" if r.fits else "no"}</span>'] if gpu else [])
             for i, r in enumerate(rows)]
    table = _table(["method", "strategy", "peak GiB", "peak phase"] + (["fits"] if gpu else []), cells, marks)
    trains = [TrainSpec.parse(method=r.method, strategy=r.strategy, **_row_settings(inputs, r.strategy))
              for r in rows]
    sections = [("", f'<p>{html.escape(inputs.model.model_id)} ({inputs.model.family}, '
                     f'{inputs.model.params / 1e9:.2f}B parameters){" on " + html.escape(gpu.name) if gpu else ""}.</p>'),
                ("Peak memory per method × strategy", table),
                ("Where the memory goes", _img(estimate_plot(inputs.model, rows, gpu), "stacked components")),
                *([] if any(needs_trace(inputs.model, t) for t in trains) else  # the formula engine's
                  [("Memory over one step", _img(timeline_plot(inputs.model, trains, gpu), "timeline"))]),
                ("Settings and where they came from", _settings_html(inputs))]
    _write(path, _page(f"refplan estimate: {inputs.model.model_id}", sections))


def _row_settings(inputs, strategy: str) -> dict:
    s = dict(inputs.settings)
    if strategy not in ("separate", "precompute"):
        s["ref_quant"] = "none"
    return s


def fit_page(inputs, answer, gpu, vary: str, path) -> None:
    marks = [inputs.configured(r.train.method.value, r.train.strategy.value) for r in answer.rows]
    cells = []
    for r in answer.rows:
        gpus = "fits" if r.fits else (f"{r.min_gpus} × {r.sharding}" if r.min_gpus else "none reaches it")
        cells.append([r.train.method.value, r.train.strategy.value, f"{r.peak_bytes / GIB:.2f}",
                      f'<span class="{"yes" if r.fits else "no"}">{"yes" if r.fits else "no"}</span>',
                      str(r.max_batch), "" if r.grad_accum is None else str(r.grad_accum), str(r.max_seq),
                      html.escape(gpus)])
    table = _table(["method", "strategy", "peak GiB", "fits", "max batch", "accum", "max seq", "GPUs × sharding"],
                   cells, marks)
    recs = "".join(f"<li><b>{html.escape(m)}</b>: {html.escape(t)}</li>" for m, t in answer.recommendations.items())
    sections = [("", f"<p>{html.escape(inputs.model.model_id)} on {html.escape(gpu.name)} "
                     f"({gpu.memory_bytes / GIB:.1f} GiB).</p>"),
                ("What fits", table), ("Recommendation", f"<ul>{recs}</ul>"),
                (f"Peak against {vary}", _img(fit_plot(inputs.model, answer, gpu, vary), "fit plot")),
                ("Settings and where they came from", _settings_html(inputs))]
    _write(path, _page(f"refplan fit: {inputs.model.model_id} on {gpu.name}", sections))
