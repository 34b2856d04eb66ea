"""Render a bench directory: a Markdown summary, PNG charts (matplotlib Agg) and the console table.

Reads only what the runner wrote (``bench.csv``, ``losses/<key>.json``, ``env.json``), so a report
can be rebuilt at any time: ``python -m refplan.harness.report DIR``. The CSV is read with pandas,
every cell as the text the runner wrote (numbers are parsed where they are computed with), so the
loss and log-prob differences are shown exactly as recorded. Sizes are printed in MiB (2**20 bytes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from refplan.output import Column, Output, emit

from refplan.harness.rows import COLUMNS, SPREAD_LIMIT_PCT
from refplan.harness.speed import PAIRED_SPREAD_LIMIT_PCT
from refplan.units import MIB

PHASES = (("loaded_bytes", "loaded (before step 1)"), ("peak_precompute_bytes", "precompute peak"),
          ("peak_train_bytes", "training peak"))


def read_bench(out: Path) -> pd.DataFrame:
    """``bench.csv`` of a bench directory, every cell as text ('' when empty); no file, no rows."""
    path = Path(out) / "bench.csv"
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=COLUMNS, dtype=str)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def rows_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as the runner returns them (values, or the CSV's text for resumed rows); '' when missing."""
    return pd.DataFrame([{k: "" if r.get(k) is None else r[k] for k in COLUMNS} for r in rows], columns=COLUMNS,
                        dtype=object)


def markdown_table(df: pd.DataFrame, right: tuple[str, ...] = ()) -> str:
    """A GitHub Markdown table of ``df`` (cells as ``str``), ``right`` columns right-aligned.

    ``DataFrame.to_markdown`` needs ``tabulate``, which refplan does not depend on. An empty header
    cell is written as one space (``| | |``).
    """
    header = "|" + "|".join(f" {c} " if str(c) else " " for c in df.columns) + "|"
    rule = "|" + "|".join("---:" if c in right else "---" for c in df.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])


# --------------------------------------------------------------------------------------------------
# columns as displayed
# --------------------------------------------------------------------------------------------------

def _column(df: pd.DataFrame, col: str) -> pd.Series:
    """A text column, empty strings where the CSV (or an older one without it) has nothing."""
    return df[col].fillna("").astype(str) if col in df else pd.Series("", index=df.index)


def _numbers(df: pd.DataFrame, col: str) -> pd.Series:
    """A column as floats, NaN where empty or not a number."""
    return pd.to_numeric(df[col], errors="coerce")


def _formatted(values: pd.Series, spec: str) -> pd.Series:
    return values.map(lambda x: "" if pd.isna(x) else format(x, spec))


def _labels(df: pd.DataFrame) -> pd.Series:
    """``strategy[ ref <dtype or k-bit>] (finetune[ <bits>])``, e.g. ``separate ref bf16 (lora)``,
    ``separate ref 4bit (qlora 8-bit)``. The k-bit settings are read from the key (``-ref4bit-``,
    ``-q8-``: :attr:`Scenario.key`), so CSVs written before they existed read the same."""
    ref = df["ref_dtype"].map(lambda d: f" ref {d}" if d else "")
    ref = ref + df["key"].str.extract(r"-ref(\d+bit)-", expand=False).map(lambda q: f" ref {q}" if isinstance(q, str)
                                                                          else "")
    bits = df["key"].str.extract(r"-q(\d)-", expand=False).map(lambda b: f" {b}-bit" if isinstance(b, str) else "")
    return df["strategy"] + ref + " (" + df["finetune"] + bits + ")"


def scenario_table(df: pd.DataFrame) -> pd.DataFrame:
    """One display row per scenario: what the summary and the console table show, formatted."""
    return pd.DataFrame({
        "scenario": df["method"] + " " + _labels(df),
        "status": df["status"],
        "loaded": _formatted(_numbers(df, "loaded_bytes") / MIB, ".1f"),
        "precompute": _formatted(_numbers(df, "peak_precompute_bytes") / MIB, ".1f"),
        "train peak": _formatted(_numbers(df, "peak_train_bytes") / MIB, ".1f"),
        "planner": _formatted(_numbers(df, "est_peak_bytes") / MIB, ".1f"),
        "err %": _formatted(_numbers(df, "est_error_pct"), "+.1f"),
        "step s": _formatted(_numbers(df, "median_step_s"), ".3f"),
        "spread %": _formatted(_numbers(df, "step_spread_pct"), ".0f"),
        "× separate": pd.Series([r + (" (noisy)" if f == "noisy" else "") for r, f in zip(
            _formatted(_numbers(df, "speed_vs_separate"), ".2f"), _column(df, "speed_flag"))], index=df.index,
            dtype=object),
        "tok/s": _formatted(_numbers(df, "tokens_per_s"), ".0f"),
        "loss Δ vs separate": df["parity_max_abs_diff"],
        "ref logp Δ": df["ref_logp_max_abs_diff"],
        "parity": df["parity_ok"],
    })


# --------------------------------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------------------------------

def markdown(df: pd.DataFrame, env: dict | None) -> str:
    lines = ["# refplan bench", ""]
    if env:
        lines += [markdown_table(pd.DataFrame(list(env.items()), columns=["", ""], dtype=object)), ""]
    ran = df[df["status"] != "unsupported"]
    lines += [
        f"{len(ran)} scenarios run, {int((ran['status'] == 'ok').sum())} ok. Memory in MiB (2^20 bytes); "
        "on CPU it is the live tensor bytes of the tracker, on CUDA torch's max_memory_allocated. "
        "`peak` excludes loading. Speed: the median of the steps after the first (process CPU time on CPU, "
        "synchronised wall time on CUDA); `spread %` = 100 (max - min) / median of those steps. On CPU each "
        "`separate` row and the rows compared with it are timed in one process, their steps taken in turns "
        "(`timing` = interleaved); `× separate` = the median over those rounds of separate's step over this "
        "row's step of the same round (> 1: faster), `(noisy)` when the middle half of those ratios spreads "
        f"over {PAIRED_SPREAD_LIMIT_PCT:.0f} % (rows timed by their own burst: either spread over "
        f"{SPREAD_LIMIT_PCT:.0f} %). Columns are documented in `refplan/harness/rows.py`.",
        "",
        markdown_table(scenario_table(ran), right=("loaded", "precompute", "train peak", "planner", "err %", "step s",
                                                   "spread %", "× separate", "tok/s", "loss Δ vs separate", "ref logp Δ")),
    ]
    failed = ran[ran["status"] != "ok"]
    if len(failed):
        lines += ["", "## Failed scenarios", ""]
        lines += [f"- `{r.key}`: {r.status} -- {r.error}" for r in failed.itertuples()]
    unsupported = df[df["status"] == "unsupported"]
    if len(unsupported):
        lines += ["", "## What TRL cannot do", ""]
        lines += [f"- {r.method} {r.strategy} ({r.finetune}): {r.error}" for r in unsupported.itertuples()]
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


def _sidecar(out: Path, key: str) -> dict | None:
    try:
        with open(Path(out) / "losses" / f"{key}.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def chart_memory(df: pd.DataFrame, path: Path) -> None:
    """Per method: loaded / precompute / training peak per strategy, with the planner's estimate."""
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return
    plt = _plt()
    by_method = ok.groupby("method", sort=False)  # methods in the order the matrix ran them
    fig, axes = plt.subplots(by_method.ngroups, 1, figsize=(11, 2.8 * by_method.ngroups), squeeze=False)
    for ax, (method, rs) in zip(axes[:, 0], by_method):
        x = range(len(rs))
        width = 0.26
        for i, (col, name) in enumerate(PHASES):
            ax.bar([xi + (i - 1) * width for xi in x], _numbers(rs, col).fillna(0) / MIB, width, label=name)
        ax.scatter([xi + width for xi in x], _numbers(rs, "est_peak_bytes") / MIB, marker="_", s=300, color="k",
                   zorder=3, label="planner estimate")
        ax.set_xticks(list(x))
        ax.set_xticklabels(_labels(rs), rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("MiB")
        ax.set_title(method.upper(), fontsize=10, loc="left")
    axes[0, 0].legend(fontsize=8, ncol=4, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_throughput(df: pd.DataFrame, path: Path) -> None:
    tokens = _numbers(df, "tokens_per_s")
    rs = df[(df["status"] == "ok") & tokens.notna() & (tokens != 0)]
    if rs.empty:
        return
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, max(3, 0.22 * len(rs) + 1)))
    ax.barh(range(len(rs)), tokens[rs.index], color="tab:blue")
    ax.set_yticks(range(len(rs)))
    ax.set_yticklabels(rs["method"] + " " + _labels(rs), fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("policy tokens / s (median step after the first)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_losses(df: pd.DataFrame, out: Path, path: Path) -> None:
    """Per method and fine-tune mode: each strategy's per-step loss (overlapping lines = parity)."""
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    groups = ok.groupby(["method", "finetune"], sort=False)
    cols = 2
    nrows = (groups.ngroups + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(11, 2.6 * nrows), squeeze=False)
    styles = ["-", "--", ":", "-.", (0, (1, 1)), (0, (5, 1))]
    for ax, ((method, ft), rs) in zip(axes.flat, groups):
        for i, (key, label) in enumerate(zip(rs["key"], _labels(rs))):
            losses = (_sidecar(out, key) or {}).get("losses") or []
            if losses:
                ax.plot(range(len(losses)), losses, linestyle=styles[i % len(styles)], marker="o", markersize=3,
                        label=label.split(" (")[0])
        ax.set_title(f"{method.upper()} {ft}", fontsize=9, loc="left")
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[groups.ngroups:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(out: Path) -> Path:
    """Write summary.md and charts/*.png for a bench directory; return the Markdown path."""
    out = Path(out)
    df = read_bench(out)
    env = None
    if (out / "env.json").exists():
        env = json.loads((out / "env.json").read_text())
    (out / "charts").mkdir(parents=True, exist_ok=True)
    chart_memory(df, out / "charts" / "memory.png")
    chart_throughput(df, out / "charts" / "throughput.png")
    chart_losses(df, out, out / "charts" / "losses.png")
    md = out / "summary.md"
    md.write_text(markdown(df, env))
    return md


# --------------------------------------------------------------------------------------------------
# console
# --------------------------------------------------------------------------------------------------

def bench_output(df: pd.DataFrame, rows: list[dict], out: Path | None = None) -> Output:
    """The end-of-run summary for the one output sink: the console table, a JSON document of the
    rows, and the CSV rows as the bench wrote them (``df`` as :func:`read_bench` or :func:`rows_frame`
    give it; ``rows`` the records behind it)."""
    shown = {"scenario": "scenario", "status": "status", "loaded": "loaded", "precompute": "precomp.",
             "train peak": "train peak", "planner": "planner", "err %": "err %", "step s": "step s",
             "tok/s": "tok/s", "parity": "parity"}
    columns = tuple(Column(name, "left" if name in ("scenario", "status", "parity") else "right")
                    for name in shown.values())
    cells = []
    for row in scenario_table(df)[list(shown)].itertuples(index=False):
        c = list(row)
        colour = {"ok": "green", "unsupported": "yellow"}.get(c[1], "red")
        c[1] = f"[{colour}]{c[1]}[/{colour}]"
        c[-1] = "[red]fail[/red]" if c[-1] == "fail" else c[-1]
        cells.append(tuple(c))
    notes = (f"CSV: {Path(out) / 'bench.csv'}   summary: {Path(out) / 'summary.md'}",) if out is not None else ()
    columns_csv = tuple(dict.fromkeys(k for r in rows for k in r))
    return Output(document={"out": str(out) if out is not None else None, "rows": rows},
                  title="refplan bench (MiB = 2^20 bytes)", columns=columns, cells=tuple(cells), notes=notes,
                  csv_columns=columns_csv, csv_rows=tuple(rows), width=None if sys.stdout.isatty() else 160)


def print_summary(df: pd.DataFrame, out: Path | None = None, rows: list[dict] | None = None,
                  fmt: str = "table") -> None:
    """Render the end-of-run summary through the output sink."""
    emit(bench_output(df, rows if rows is not None else df.to_dict("records"), out), fmt)


if __name__ == "__main__":
    d = Path(sys.argv[1] if len(sys.argv) > 1 else "reports/bench-default")
    print(write_all(d))
    print_summary(read_bench(d), d)
