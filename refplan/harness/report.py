"""Render a bench directory: a Markdown summary, PNG charts (matplotlib Agg) and the console table.

Reads only what the runner wrote (``bench.csv``, ``losses/<key>.json``, ``env.json``), so a report
can be rebuilt at any time: ``python -m refplan.harness.report DIR``. Sizes are printed in MiB
(2**20 bytes).
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

MIB = 2**20
PHASES = (("loaded_bytes", "loaded (before step 1)"), ("peak_precompute_bytes", "precompute peak"),
          ("peak_train_bytes", "training peak"))


def _num(v) -> float | None:
    if v in (None, ""):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _mib(v) -> str:
    x = _num(v)
    return "" if x is None else f"{x / MIB:.1f}"


def _label(row: dict) -> str:
    ref = f" ref {row['ref_dtype']}" if row.get("ref_dtype") else ""
    return f"{row['strategy']}{ref} ({row['finetune']})"


def read_rows(out: Path) -> list[dict]:
    path = Path(out) / "bench.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _sidecar(out: Path, key: str) -> dict | None:
    try:
        with open(Path(out) / "losses" / f"{key}.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------------------------------

def markdown(rows: list[dict], env: dict | None) -> str:
    lines = ["# refplan bench", ""]
    if env:
        lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env.items()] + [""]
    ran = [r for r in rows if r.get("status") != "unsupported"]
    lines += [
        f"{len(ran)} scenarios run, {sum(r.get('status') == 'ok' for r in ran)} ok. Memory in MiB (2^20 bytes); "
        "on CPU it is the live tensor bytes of the tracker, on CUDA torch's max_memory_allocated. "
        "`peak` excludes loading. Columns are documented in `refplan/harness/rows.py`.",
        "",
        "| scenario | status | loaded | precompute | train peak | planner | err % | step s | tok/s | "
        "loss Δ vs separate | ref logp Δ | parity |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in ran:
        err = _num(r.get("est_error_pct"))
        step = _num(r.get("median_step_s"))
        tok = _num(r.get("tokens_per_s"))
        lines.append(
            f"| {r['method']} {_label(r)} | {r['status']} | {_mib(r.get('loaded_bytes'))} | "
            f"{_mib(r.get('peak_precompute_bytes'))} | {_mib(r.get('peak_train_bytes'))} | "
            f"{_mib(r.get('est_peak_bytes'))} | {'' if err is None else f'{err:+.1f}'} | "
            f"{'' if step is None else f'{step:.3f}'} | {'' if tok is None else f'{tok:.0f}'} | "
            f"{r.get('parity_max_abs_diff', '')} | {r.get('ref_logp_max_abs_diff', '')} | {r.get('parity_ok', '')} |")
    failed = [r for r in ran if r.get("status") != "ok"]
    if failed:
        lines += ["", "## Failed scenarios", ""] + [f"- `{r['key']}`: {r['status']} -- {r.get('error', '')}"
                                                     for r in failed]
    unsupported = [r for r in rows if r.get("status") == "unsupported"]
    if unsupported:
        lines += ["", "## What TRL cannot do", ""] + [f"- {r['method']} {r['strategy']} ({r.get('finetune', '')}): "
                                                      f"{r.get('error', '')}" for r in unsupported]
    lines += ["", "## Charts", "", "![peak memory](charts/memory.png)", "", "![throughput](charts/throughput.png)",
              "", "![loss parity](charts/losses.png)", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# charts
# --------------------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def chart_memory(rows: list[dict], path: Path) -> None:
    """Per method: loaded / precompute / training peak per strategy, with the planner's estimate."""
    plt = _plt()
    by_method = defaultdict(list)
    for r in rows:
        if r.get("status") == "ok":
            by_method[r["method"]].append(r)
    if not by_method:
        return
    n = len(by_method)
    fig, axes = plt.subplots(n, 1, figsize=(11, 2.8 * n), squeeze=False)
    for ax, (method, rs) in zip(axes[:, 0], by_method.items()):
        x = range(len(rs))
        width = 0.26
        for i, (col, name) in enumerate(PHASES):
            vals = [(_num(r.get(col)) or 0) / MIB for r in rs]
            ax.bar([xi + (i - 1) * width for xi in x], vals, width, label=name)
        est = [(_num(r.get("est_peak_bytes")) or float("nan")) / MIB for r in rs]
        ax.scatter([xi + width for xi in x], est, marker="_", s=300, color="k", zorder=3, label="planner estimate")
        ax.set_xticks(list(x))
        ax.set_xticklabels([_label(r) for r in rs], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("MiB")
        ax.set_title(method.upper(), fontsize=10, loc="left")
    axes[0, 0].legend(fontsize=8, ncol=4, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_throughput(rows: list[dict], path: Path) -> None:
    plt = _plt()
    rs = [r for r in rows if r.get("status") == "ok" and _num(r.get("tokens_per_s"))]
    if not rs:
        return
    fig, ax = plt.subplots(figsize=(11, max(3, 0.22 * len(rs) + 1)))
    labels = [f"{r['method']} {_label(r)}" for r in rs]
    ax.barh(range(len(rs)), [_num(r["tokens_per_s"]) for r in rs], color="tab:blue")
    ax.set_yticks(range(len(rs)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("policy tokens / s (median step after the first)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_losses(rows: list[dict], out: Path, path: Path) -> None:
    """Per method and fine-tune mode: each strategy's per-step loss (overlapping lines = parity)."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    groups = defaultdict(list)
    for r in rows:
        if r.get("status") == "ok":
            groups[(r["method"], r["finetune"])].append(r)
    if not groups:
        return
    n = len(groups)
    cols = 2
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(11, 2.6 * nrows), squeeze=False)
    styles = ["-", "--", ":", "-.", (0, (1, 1)), (0, (5, 1))]
    for ax, ((method, ft), rs) in zip(axes.flat, groups.items()):
        for i, r in enumerate(rs):
            side = _sidecar(out, r["key"])
            losses = (side or {}).get("losses") or []
            if losses:
                ax.plot(range(len(losses)), losses, linestyle=styles[i % len(styles)], marker="o", markersize=3,
                        label=_label(r).split(" (")[0])
        ax.set_title(f"{method.upper()} {ft}", fontsize=9, loc="left")
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(out: Path) -> Path:
    """Write summary.md and charts/*.png for a bench directory; return the Markdown path."""
    out = Path(out)
    rows = read_rows(out)
    env = None
    if (out / "env.json").exists():
        env = json.loads((out / "env.json").read_text())
    (out / "charts").mkdir(parents=True, exist_ok=True)
    chart_memory(rows, out / "charts" / "memory.png")
    chart_throughput(rows, out / "charts" / "throughput.png")
    chart_losses(rows, out, out / "charts" / "losses.png")
    md = out / "summary.md"
    md.write_text(markdown(rows, env))
    return md


# --------------------------------------------------------------------------------------------------
# console
# --------------------------------------------------------------------------------------------------

def print_summary(rows: list[dict], out: Path | None = None) -> None:
    """The rich table at the end of a run."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="refplan bench (MiB = 2^20 bytes)", title_justify="left")
    for col, just in (("scenario", "left"), ("status", "left"), ("loaded", "right"), ("precomp.", "right"),
                      ("train peak", "right"), ("planner", "right"), ("err %", "right"), ("step s", "right"),
                      ("tok/s", "right"), ("parity", "left")):
        t.add_column(col, justify=just, no_wrap=True)
    for r in rows:
        err, step, tok = _num(r.get("est_error_pct")), _num(r.get("median_step_s")), _num(r.get("tokens_per_s"))
        status = r.get("status", "")
        colour = {"ok": "green", "unsupported": "yellow"}.get(status, "red")
        parity = r.get("parity_ok") or ""
        if parity == "fail":
            parity = "[red]fail[/red]"
        t.add_row(f"{r.get('method', '')} {_label(r)}", f"[{colour}]{status}[/{colour}]",
                  _mib(r.get("loaded_bytes")), _mib(r.get("peak_precompute_bytes")), _mib(r.get("peak_train_bytes")),
                  _mib(r.get("est_peak_bytes")), "" if err is None else f"{err:+.1f}",
                  "" if step is None else f"{step:.3f}", "" if tok is None else f"{tok:.0f}", parity)
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(t)
    if out is not None:
        console.print(f"CSV: {Path(out) / 'bench.csv'}   summary: {Path(out) / 'summary.md'}")


if __name__ == "__main__":
    d = Path(sys.argv[1] if len(sys.argv) > 1 else "reports/bench-default")
    print(write_all(d))
    print_summary(read_rows(d), d)
