"""The planner under mixed precision, against real CPU bursts: the validate matrix's shapes run the way
TRL's Trainer runs them in 16 bits.

``refplan validate`` loads every case in fp32 (exact parity). Here each drawn case is run in one of the
three precision setups users have, as TRL 1.16 configures them:

- ``fp32+autocast``: weights loaded in fp32, the Trainer's ``bf16=True`` autocasts the forward (TRL's CLI
  default: ``ModelConfig.dtype`` float32 and ``bf16`` left out = True);
- ``bf16``: weights loaded in bf16 with ``bf16=True`` (autocast over bf16 weights: PEFT's fp32 adapters
  are cast per matmul);
- ``bf16-noautocast``: weights in bf16, ``bf16`` and ``fp16`` both False (``--autocast none``: PEFT upcasts
  each adapter input to fp32).

    python bench/validate_precision.py [--n 125] [--seed 0] [--families a,b] [--out reports/validate-precision]

Writes ``accuracy.csv`` and ``accuracy.md`` (by family, by precision, largest errors). Exit 0 when
median |error| <= 3 % and worst <= 8 %, else 1.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

MODES = {"fp32+autocast": ("fp32", "bf16"), "bf16": ("bf16", None), "bf16-noautocast": ("bf16", "none")}


def main(argv=None) -> int:
    from refplan import validate as v
    from refplan.harness.runner import RunOptions, run_matrix
    from refplan.harness.scenario import Scenario, bench_train_spec
    from refplan.harness.tiny import cache_dir

    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=125)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--families", default=None)
    p.add_argument("--out", default="reports/validate-precision")
    a = p.parse_args(argv)
    fams = tuple(a.families.split(",")) if a.families else tuple([*v.FAMILIES, *v.MORE_FAMILIES])
    out = Path(a.out)
    rng = random.Random(1000 + a.seed)
    cases = v.generate(a.n, a.seed, vocab=1024, families=fams)
    root = cache_dir() / "validate-models"
    by_key, scenarios = {}, []
    for i, c in enumerate(cases):
        mode = list(MODES)[i % len(MODES)] if i < len(MODES) * len(fams) else rng.choice(list(MODES))
        dtype, autocast = MODES[mode]
        d = v.build_model_dir(c, root)
        train = bench_train_spec(method=c.method, strategy=c.strategy, finetune=c.finetune, dtype=dtype,
                                 autocast=autocast, batch=c.batch, seq=c.seq, grad_ckpt=c.grad_ckpt,
                                 lora_r=c.lora_r, device="cpu", attn=v._attn_for(c))
        sc = Scenario(train, model=str(d), steps=2, seed=0)
        scenarios.append(sc)
        by_key[sc.key] = (c, d, sc, mode)
    rows = run_matrix(scenarios, RunOptions(out_dir=out / "runs", suite="validate-precision", timeout_s=300,
                                            resume=True, progress=False, report=False))
    results = []
    for row in rows:
        if row.get("key") not in by_key:
            continue
        c, d, sc, mode = by_key[row["key"]]
        est, phase, _ = v.estimate_for(d, sc)
        meas = int(row["peak_bytes"]) if str(row.get("peak_bytes", "")).strip() not in ("", "None") else None
        results.append({"key": row["key"], "case": c.name, "family": c.family, "precision": mode,
                        "method": c.method, "strategy": c.strategy, "finetune": c.finetune,
                        "grad_ckpt": c.grad_ckpt, "batch": c.batch, "seq": c.seq, "status": row.get("status"),
                        "measured_bytes": meas, "estimated_bytes": est,
                        "error_pct": None if not meas or row.get("status") != "ok" else 100.0 * (est - meas) / meas,
                        "est_peak_phase": phase, "error": row.get("error") or "",
                        "config": json.dumps(c.config, sort_keys=True)})
    summary = v.summarize(results)
    _write(results, summary, out, a)
    ok = summary["passes"]
    print(f"{summary['measured']} measured: median |error| {summary['median_abs_error_pct']:.3f} %, worst "
          f"{summary['worst_abs_error_pct']:.3f} % -> {'PASS' if ok else 'FAIL'}   ({out / 'accuracy.md'})")
    return 0 if ok else 1


def _write(results: list[dict], summary: dict, out: Path, a) -> None:
    from refplan import validate as v

    out.mkdir(parents=True, exist_ok=True)
    df = v._frame(results)
    df.to_csv(out / "accuracy.csv", index=False, lineterminator="\r\n")
    cmd = f"python bench/validate_precision.py --n {a.n} --seed {a.seed}" + \
        (f" --families {a.families}" if a.families else "") + f" --out {a.out}"
    lines = ["# Planner accuracy under mixed precision (formula engine vs real TRL bursts on CPU)", "",
             f"Regenerate: `{cmd}`. The validate matrix's shapes, each run in one of three precision setups "
             "(fp32 weights + bf16 autocast, TRL's CLI default; bf16 weights with bf16=True; bf16 weights with "
             "bf16/fp16 False = `--autocast none`); measured = peak live tensor bytes, loading excluded.", "",
             f"- scenarios: {summary['scenarios']} ({summary['measured']} measured, {summary['failed']} failed)",
             f"- **median |error|: {summary['median_abs_error_pct']:.3f} %**, "
             f"**worst |error|: {summary['worst_abs_error_pct']:.3f} %** (targets 3 % / 8 %)", ""]
    for field in ("precision", "family", "method", "finetune", "grad_ckpt"):
        lines += [f"## By {field}", "", *v._breakdown(df, field), ""]
    lines += ["## Largest errors", "", *v._largest_errors(df)]
    (out / "accuracy.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
