"""PEFT knobs the formula engine has no term for, against real CPU bursts: the trace engine plans them.

``refplan estimate`` sends a row to the trace engine (``refplan.query.needs_trace``) when it asks for

- ``--dora`` (PEFT ``use_dora=True``: the weight norm recomputed every forward, a magnitude vector per
  adapted linear),
- ``--modules-to-save`` (PEFT trains full copies of the named modules, e.g. the embeddings and the LM head),
- a LoRA adapter on the LM head (``--lora-targets ...,lm_head``; ORPO / SimPO -- TRL's DPO and KTO refuse it),
- a LoRA adapter on the token embeddings (``--lora-targets ...,embed_tokens``; PEFT's ``lora.Embedding``).

This script runs real TRL bursts with each knob on tiny random-weight models -- a Llama (a formula
family) and a GPT-J (no formula family) -- and compares the measured peak live tensor bytes with
``refplan.query.estimate_one`` for the same TrainSpec, and prints what the knob adds over the same
scenario with plain LoRA (its own burst).

    python bench/peft_knobs.py [--out reports/validate-peft-knobs]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from refplan.validate import Case, build_model_dir  # noqa: E402

MODELS = {
    "llama": {"model_type": "llama", "hidden_size": 96, "num_hidden_layers": 5, "num_attention_heads": 6,
              "num_key_value_heads": 2, "intermediate_size": 160, "vocab_size": 1024, "tie_word_embeddings": False},
    "gptj": {"model_type": "gptj", "n_embd": 64, "n_layer": 4, "n_head": 4, "rotary_dim": 8, "vocab_size": 1024,
             "n_positions": 512, "tie_word_embeddings": False},
}
#: each model's token embedding module (what modules_to_save names)
EMBEDDING = {"llama": "embed_tokens", "gptj": "wte"}
#: (method, strategy, batch, seq, grad_ckpt)
SETUPS = (("dpo", "unwrap", 2, 64, False), ("dpo", "ref-adapter", 1, 96, True), ("ipo", "precompute", 2, 48, False),
          ("kto", "unwrap", 2, 64, False), ("orpo", "none", 2, 64, False), ("simpo", "none", 1, 96, True))


def knobs(model: str, method: str) -> dict[str, dict]:
    """knob name -> TrainSpec fields, for the setups where TRL runs it."""
    out = {"dora": {"dora": True}, "modules_to_save": {"modules_to_save": (EMBEDDING[model], "lm_head")},
           "embedding_lora": {"lora_targets": ("q_proj", "v_proj", EMBEDDING[model])}}
    if method in ("orpo", "simpo"):
        out["lm_head_lora"] = {"lora_targets": ("q_proj", "v_proj", "lm_head")}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="reports/validate-peft-knobs")
    args = p.parse_args(argv)
    from refplan.harness.runner import RunOptions, run_matrix
    from refplan.harness.scenario import Scenario, bench_train_spec
    from refplan.harness.tiny import cache_dir
    from refplan.query import estimate_one
    from refplan.resolve import resolve_model

    out = Path(args.out)
    root = cache_dir() / "dora-models"
    items, cases = [], []
    for name, cfg in MODELS.items():
        d = build_model_dir(Case(f"dora-{name}", name, cfg, "dpo", "unwrap", "lora", 1, 16, False, 8), root)
        for method, strategy, batch, seq, ckpt in SETUPS:
            base = bench_train_spec(method=method, strategy=strategy, finetune="lora", batch=batch, seq=seq,
                                    grad_ckpt=ckpt, lora_r=8)
            plain = Scenario(base, model=str(d), steps=2, seed=0)
            items.append(plain)
            for knob, fields in knobs(name, method).items():
                sc = Scenario(replace(base, **fields), model=str(d), steps=2, seed=0)
                items.append(sc)
                cases.append((name, knob, d, sc, plain))
    rows = run_matrix(items, RunOptions(out_dir=out / "runs", suite="peft-knobs", timeout_s=300, resume=True,
                                        progress=False, report=False))
    by_key = {r["key"]: r for r in rows}
    results = []
    for name, knob, d, sc, plain in cases:
        row, lora = by_key.get(sc.key, {}), by_key.get(plain.key, {})
        meas = int(row["peak_bytes"]) if row.get("status") == "ok" else None
        lora_meas = int(lora["peak_bytes"]) if lora.get("status") == "ok" else None
        est = estimate_one(resolve_model(str(d)), sc.train).peak_bytes
        rec = {"model": name, "knob": knob, "method": sc.train.method.value, "strategy": sc.train.strategy.value,
               "batch": sc.train.batch, "seq": sc.train.seq, "grad_ckpt": sc.train.grad_ckpt,
               "status": row.get("status"), "measured_bytes": meas, "estimated_bytes": est,
               "error_pct": None if not meas else 100.0 * (est - meas) / meas, "lora_measured_bytes": lora_meas,
               "knob_adds_pct": None if not (meas and lora_meas) else 100.0 * (meas - lora_meas) / lora_meas}
        results.append(rec)
        print(json.dumps(rec), flush=True)
    _write(results, out, argv if argv is not None else sys.argv[1:])
    errs = [abs(r["error_pct"]) for r in results if r["error_pct"] is not None]
    return 0 if errs and len(errs) == len(results) and max(errs) <= 8 else 1


def _write(results: list[dict], out: Path, argv: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cols = list(results[0])
    lines = [",".join(cols)] + [",".join("" if r[c] is None else str(r[c]) for c in cols) for r in results]
    (out / "accuracy.csv").write_text("\r\n".join(lines) + "\r\n")
    md = ["# PEFT knobs the formula has no term for: the trace engine against real CPU bursts", "",
          f"Regenerate: `python bench/peft_knobs.py {' '.join(argv)}`. Real TRL 1.16 bursts on tiny random-weight "
          "models, each in its own process, with PEFT `use_dora=True`, `modules_to_save=[<embeddings>, lm_head]`, "
          "a LoRA adapter on `lm_head` (ORPO / SimPO only: TRL's DPO and KTO refuse it) or on the token embeddings; "
          "estimate = `refplan estimate --device cpu` with `--dora`, `--modules-to-save` or `--lora-targets "
          "...,lm_head` / `...,embed_tokens`, which the "
          "trace engine plans. `knob adds` = the knob's burst over the same scenario's plain-LoRA burst (all-linear "
          "targets; `embedding_lora` and `lm_head_lora` adapt q_proj, v_proj and that module only, so theirs can "
          "read below it).", ""]
    for knob in dict.fromkeys(r["knob"] for r in results):
        errs = [abs(r["error_pct"]) for r in results if r["knob"] == knob and r["error_pct"] is not None]
        n = sum(r["knob"] == knob for r in results)
        md.append(f"- `{knob}`: {n} bursts ({len(errs)} measured), median |error| {statistics.median(errs):.3f} %, "
                  f"worst {max(errs):.3f} %" if errs else f"- `{knob}`: nothing measured")
    md += ["", "| model | knob | method | strategy | batch | seq | ckpt | measured B | estimated B | err % | knob adds % |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        md.append(f"| {r['model']} | {r['knob']} | {r['method']} | {r['strategy']} | {r['batch']} | {r['seq']} | "
                  f"{r['grad_ckpt']} | {r['measured_bytes']} | {r['estimated_bytes']} | "
                  + (f"{r['error_pct']:+.3f}" if r['error_pct'] is not None else "-") + " | "
                  + (f"{r['knob_adds_pct']:+.1f}" if r['knob_adds_pct'] is not None else "-") + " |")
    (out / "accuracy.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
