"""The trace engine checked two ways, and the formula engine checked against it at real shapes.

1. Extrapolation == full trace: mid-size catalog models traced at full depth and extrapolated from
   two shallow traces (``refplan.trace.trace_estimate``), per phase. The "naive" column
   extrapolates the phase peaks instead of each segment's, to show why the engine does not.
2. Formula vs trace: ``refplan.planner.estimate`` (device cpu) against the extrapolated trace for
   8B, 70B, MoE and sliding-window models, methods x strategies x dtypes x shapes; error is
   (formula - trace) / trace. Rows are written to ``reports/trace_check.csv``.

    python bench/trace_check.py [--skip-proof] [--skip-check] [--models a,b] [--csv PATH]

Runs on CPU in a few minutes: fake tensors hold no memory, so a 70B step costs what a 1B one does.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from refplan.methods import Finetune, Method, Strategy  # noqa: E402
from refplan.spec import TrainSpec  # noqa: E402
from refplan.units import GIB  # noqa: E402

PHASES = ("precompute", "policy forward", "reference forward", "backward", "optimizer step")
TOLERANCE_PCT = 3.0


def spec(method, strategy, finetune="full", dtype="bf16", batch=1, seq=1024, grad_ckpt=False, autocast=None,
         padded=False) -> TrainSpec:
    return TrainSpec(Method(method), Strategy(strategy), Finetune(finetune), dtype=dtype, autocast=autocast,
                     batch=batch, seq=seq, grad_ckpt=grad_ckpt, padded=padded, device="cpu", lora_r=16)


#: (model, TrainSpec) pairs traced at full depth and extrapolated
PROOF = [
    ("HuggingFaceTB/SmolLM2-135M", spec("dpo", "separate", seq=512)),
    ("Qwen/Qwen2.5-0.5B", spec("orpo", "none", dtype="fp32", seq=256)),
    ("Qwen/Qwen2.5-0.5B", spec("dpo", "precompute", seq=512, grad_ckpt=True, padded=True)),
    ("meta-llama/Llama-3.2-1B", spec("dpo", "separate", batch=2, seq=512)),
    ("meta-llama/Llama-3.2-1B", spec("dpo", "unwrap", "lora", dtype="fp32", autocast="bf16", seq=512)),
    # period 6 (five sliding layers, one full), 34 layers: traced at 10 and 16; past the 1024 window
    ("google/gemma-3-4b-pt", spec("orpo", "none", seq=1536, padded=True)),
    ("HuggingFaceTB/SmolLM2-135M", spec("kto", "unwrap", "lora", batch=2, seq=512, grad_ckpt=True)),
    # first_k_dense_replace = 1: one dense layer, then MoE
    ("deepseek-ai/DeepSeek-V2-Lite", spec("kto", "separate", batch=2, seq=256)),
    # the backward peak moves from the head to the embedding between 4 and 5 layers: the naive
    # extrapolation of phase peaks misses it, the per-segment one does not
    ("meta-llama/Llama-3.1-8B", spec("dpo", "separate", seq=512)),
]

CHECK_MODELS = ["meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-70B", "Qwen/Qwen3-30B-A3B", "Qwen/Qwen2.5-7B",
                "mistralai/Mistral-7B-v0.1", "google/gemma-2-9b"]

#: the formula-vs-trace matrix, the same for every model
CHECK = [
    spec("dpo", "separate", seq=1024),
    spec("dpo", "separate", batch=2, seq=2048, grad_ckpt=True),
    spec("dpo", "separate", batch=2, seq=1024, padded=True),
    spec("dpo", "separate", dtype="fp32", seq=512),
    spec("dpo", "separate", dtype="fp32", autocast="bf16", seq=1024),
    spec("dpo", "precompute", batch=2, seq=512),
    spec("dpo", "unwrap", "lora", seq=2048),
    spec("dpo", "unwrap", "lora", batch=2, seq=1024, grad_ckpt=True),
    spec("dpo", "unwrap", "lora", dtype="fp32", seq=1024, grad_ckpt=True),
    spec("kto", "precompute", dtype="fp32", batch=2, seq=512, grad_ckpt=True),
    spec("kto", "unwrap", "lora", batch=2, seq=2048, grad_ckpt=True),
    spec("orpo", "none", seq=1024),
    spec("orpo", "none", "lora", batch=2, seq=512, grad_ckpt=True),
    spec("orpo", "none", dtype="fp32", seq=2048, grad_ckpt=True),
]


def label(train: TrainSpec) -> str:
    prec = train.dtype + (f"+ac-{train.autocast}" if train.autocast else "")
    return (f"{train.method.value}/{train.strategy.value}/{train.finetune.value} {prec} b{train.batch} "
            f"s{train.seq}{' gc' if train.grad_ckpt else ''}{' pad' if train.padded else ''}")


def phase_bytes(est) -> dict[str, int]:
    return {p.name: p.total_bytes for p in est.phases}


# --------------------------------------------------------------------------------------------------
# 1. extrapolation == full trace
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProofRow:
    model: str
    train: TrainSpec
    layers: int
    depths: tuple[int, int]
    full: dict  # phase -> bytes, full-depth trace
    extrapolated: dict  # phase -> bytes, per-segment extrapolation
    naive: dict  # phase -> bytes, phase peaks extrapolated
    full_s: float
    extrapolated_s: float


def proof_rows(cases=PROOF) -> list[ProofRow]:
    from refplan import trace as T
    from refplan.resolve import resolve_model

    rows = []
    for name, train in cases:
        model = resolve_model(name, offline=True)
        n1, n2, period = T.extrapolation_depths(model)
        t0 = time.perf_counter()
        t1, t2 = T.trace(model, train, n1), T.trace(model, train, n2)
        peaks, static = T.extrapolate(t1, t2, model.num_layers, period)
        ext_s = time.perf_counter() - t0
        naive = {}
        for ph in PHASES:
            a, b = t1.phase_peak(ph), t2.phase_peak(ph)
            if a is not None and b is not None:
                naive[ph] = a + (b - a) * (model.num_layers - n1) // period
        t0 = time.perf_counter()
        full = T.trace(model, train, model.num_layers)
        full_s = time.perf_counter() - t0
        rows.append(ProofRow(name, train, model.num_layers, (n1, n2),
                             {ph: full.phase_peak(ph) for ph in PHASES if full.phase_peak(ph) is not None},
                             peaks, naive, full_s, ext_s))
    return rows


def render_proof(rows: list[ProofRow]) -> str:
    out = ["Extrapolation vs full trace (bytes; diff = extrapolated - full; naive = phase peaks extrapolated)"]
    for r in rows:
        out.append(f"{r.model} [{r.layers} layers, traced {r.depths[0]}+{r.depths[1]}] {label(r.train)}  "
                   f"full {r.full_s:.1f}s, extrapolated {r.extrapolated_s:.1f}s")
        for ph, full in r.full.items():
            ext, naive = r.extrapolated.get(ph), r.naive.get(ph)
            out.append(f"    {ph:18s} full {full:>16,d}  extrapolated {ext:>16,d}  diff {ext - full:>+8,d}  "
                       f"naive diff {naive - full:>+16,d}")
    worst = max((abs(r.extrapolated[ph] - r.full[ph]) for r in rows for ph in r.full), default=0)
    out.append(f"largest |extrapolated - full|: {worst:,d} bytes")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# 2. formula vs trace
# --------------------------------------------------------------------------------------------------

CSV_COLUMNS = (["model", "method", "strategy", "finetune", "dtype", "autocast", "batch", "seq", "grad_ckpt",
                "padded", "trace_peak_bytes", "formula_peak_bytes", "err_pct", "trace_peak_phase",
                "formula_peak_phase", "trace_s"]
               + [f"{src}_{ph.replace(' ', '_')}_bytes" for ph in PHASES for src in ("trace", "formula")])


def check_rows(models=CHECK_MODELS, cases=CHECK) -> list[dict]:
    from refplan import trace as T
    from refplan.planner import estimate
    from refplan.resolve import resolve_model

    rows = []
    for name in models:
        model = resolve_model(name, offline=True)
        for train in cases:
            t0 = time.perf_counter()
            tr = T.trace_estimate(model, train)
            secs = time.perf_counter() - t0
            fo = estimate(model, train)
            row = {"model": name, "method": train.method.value, "strategy": train.strategy.value,
                   "finetune": train.finetune.value, "dtype": train.dtype, "autocast": train.autocast or "",
                   "batch": train.batch, "seq": train.seq, "grad_ckpt": train.grad_ckpt, "padded": train.padded,
                   "trace_peak_bytes": tr.peak_bytes, "formula_peak_bytes": fo.peak_bytes,
                   "err_pct": round((fo.peak_bytes - tr.peak_bytes) / tr.peak_bytes * 100, 3),
                   "trace_peak_phase": tr.peak_phase.name, "formula_peak_phase": fo.peak_phase.name,
                   "trace_s": round(secs, 2)}
            tp, fp = phase_bytes(tr), phase_bytes(fo)
            for ph in PHASES:
                key = ph.replace(" ", "_")
                row[f"trace_{key}_bytes"] = tp.get(ph, "")
                row[f"formula_{key}_bytes"] = fp.get(ph, "")
            row["_train"] = train
            rows.append(row)
            print(f"  {name} {label(train)}: {row['err_pct']:+.2f}% ({secs:.1f}s)", file=sys.stderr, flush=True)
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def render_check(rows: list[dict]) -> str:
    out = [f"Formula vs trace (GiB, device cpu; err = (formula - trace) / trace; '!' beyond {TOLERANCE_PCT:g} %)",
           f"{'model':28s} {'setup':48s} {'trace':>9s} {'formula':>9s} {'err %':>8s}  peak phase (trace/formula)"]
    for r in rows:
        flag = " !" if abs(r["err_pct"]) > TOLERANCE_PCT else ""
        out.append(f"{r['model']:28s} {label(r['_train']):48s} {r['trace_peak_bytes'] / GIB:9.2f} "
                   f"{r['formula_peak_bytes'] / GIB:9.2f} {r['err_pct']:+8.2f}  "
                   f"{r['trace_peak_phase']}/{r['formula_peak_phase']}{flag}")
        if flag:
            for ph in PHASES:
                key = ph.replace(" ", "_")
                t, f = r[f"trace_{key}_bytes"], r[f"formula_{key}_bytes"]
                if t != "" or f != "":
                    tg = f"{t / GIB:9.2f}" if t != "" else f"{'-':>9s}"
                    fg = f"{f / GIB:9.2f}" if f != "" else f"{'-':>9s}"
                    out.append(f"{'':28s}   {ph:45s} {tg} {fg}")
    bad = sum(abs(r["err_pct"]) > TOLERANCE_PCT for r in rows)
    out.append(f"{len(rows)} rows, {bad} beyond {TOLERANCE_PCT:g} %")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-proof", action="store_true", help="skip the extrapolation-vs-full-trace part")
    p.add_argument("--skip-check", action="store_true", help="skip the formula-vs-trace part")
    p.add_argument("--models", help="comma list of models for the formula check (default: the 6 large ones)")
    p.add_argument("--csv", default=str(ROOT / "reports" / "trace_check.csv"), help="where to write the check rows")
    a = p.parse_args()

    t0 = time.perf_counter()
    if not a.skip_proof:
        print(render_proof(proof_rows()), flush=True)
        print(flush=True)
    if not a.skip_check:
        models = [m.strip() for m in a.models.split(",")] if a.models else CHECK_MODELS
        rows = check_rows(models)
        write_csv(rows, Path(a.csv))
        print(render_check(rows))
        print(f"wrote {a.csv}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
