"""``refplan validate --sharded``: the planner's per-rank estimate against real multi-process bursts.

Each case is one TRL burst launched as N ranks through ``accelerate launch`` with a DeepSpeed ZeRO-2 /
ZeRO-3 or FSDP2 config (:mod:`refplan.harness.launch`, gloo on CPU), proven sharded before it counts
(:mod:`refplan.harness.proof`); every rank is one row, compared with the planner's per-rank estimate for
the same TrainSpec. Shapes are drawn so that the weights outweigh a short batch's activations (what
sharding splits must dominate a rank's peak for the comparison to test it): a hidden size of 256-512,
an MLP 2.5-3.5 times as wide, 2-4 layers, a 1k vocabulary, 16-32 tokens.

Seeded and drawn apart from the standing and quantized matrices, so neither changes. Every sharding and
every method of the issue's matrix (DPO, KTO, ORPO) appears; strategies are those a sharded burst runs
(separate, precompute, unwrap with LoRA, none); about one case in six runs on three ranks.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from refplan.methods import Finetune, Method, Strategy, applicable_strategies
from refplan.validate import TARGET_MEDIAN_PCT, TARGET_WORST_PCT, Case, build_model_dir

#: families drawn (decoders accelerate's FSDP auto-wrap finds the layer class of via _no_split_modules)
SHARDED_FAMILIES = ("llama", "qwen2", "mistral")
SHARDINGS = ("zero2", "zero3", "fsdp")
METHODS = (Method.DPO, Method.KTO, Method.ORPO)
#: strategies a sharded burst launches (refplan.harness.scenario._check_benchable)
BENCH_STRATEGIES = (Strategy.SEPARATE, Strategy.PRECOMPUTE, Strategy.UNWRAP, Strategy.NONE)


def _wide_shape(rng: random.Random, family: str, vocab: int) -> dict:
    heads = rng.choice([4, 8])
    head_dim = rng.choice([32, 64])
    hidden = heads * head_dim
    cfg = {"hidden_size": hidden, "num_attention_heads": heads,
           "num_key_value_heads": rng.choice([d for d in (1, 2, 4, 8) if heads % d == 0]),
           "intermediate_size": 32 * round(hidden * rng.choice([2.5, 3.0, 3.5]) / 32),
           "num_hidden_layers": rng.randint(2, 4), "vocab_size": vocab + rng.randint(0, 64),
           "max_position_embeddings": 512, "tie_word_embeddings": rng.random() < 0.3}
    if family == "mistral":
        cfg["sliding_window"] = 4096
    return cfg


def generate_sharded(n: int, seed: int, vocab: int = 1024) -> list[tuple[Case, dict]]:
    """``n`` cases from ``seed``, each with its sharding (``{"sharding", "gpus"}``)."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        i = len(cases)
        sharding = SHARDINGS[i % len(SHARDINGS)]
        method = METHODS[(i // len(SHARDINGS)) % len(METHODS)]
        family = SHARDED_FAMILIES[(i // (len(SHARDINGS) * len(METHODS))) % len(SHARDED_FAMILIES)]
        finetune = rng.choice([Finetune.FULL, Finetune.LORA])
        strategy = rng.choice([s for s in applicable_strategies(method, finetune) if s in BENCH_STRATEGIES])
        cfg = {"model_type": family, **_wide_shape(rng, family, vocab)}
        batch = 2 if method is Method.KTO else rng.randint(1, 2)
        gpus = 3 if rng.random() < 1 / 6 else 2
        case = Case(f"s{seed}-{i:03d}-{family}", family, cfg, method.value, strategy.value, finetune.value,
                    batch, rng.choice([16, 24, 32]), False, rng.choice([4, 8]))
        cases.append((case, {"sharding": sharding, "gpus": gpus}))
    return cases


def run(n: int = 24, seed: int = 0, out: Path = Path("reports/validate-sharded"), timeout_s: float = 600.0,
        resume: bool = True, progress: bool = True) -> dict:
    """Build, launch and compare the matrix; write accuracy.md / .csv under ``out``; return the summary."""
    from refplan.harness.rows import rank_key
    from refplan.harness.runner import RunOptions, run_matrix
    from refplan.harness.scenario import Scenario, bench_train_spec
    from refplan.harness.tiny import cache_dir
    from refplan.planner import estimate
    from refplan.resolve import resolve_model

    # CPU ranks only: DeepSpeed, imported here through transformers, would otherwise announce on stdout that
    # it found no accelerator
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    out = Path(out)
    root = cache_dir() / "validate-models"
    scenarios, by_key = [], {}
    for case, shard in generate_sharded(n, seed):
        d = build_model_dir(case, root)
        train = bench_train_spec(method=case.method, strategy=case.strategy, finetune=case.finetune, dtype="fp32",
                                 batch=case.batch, seq=case.seq, grad_ckpt=False, lora_r=case.lora_r, device="cpu",
                                 attn="sdpa", **shard)
        sc = Scenario(train, model=str(d), steps=2, seed=0)
        scenarios.append(sc)
        for r in range(train.gpus):
            by_key[rank_key(sc.key, r)] = (case, shard, d, sc)
    rows = run_matrix(scenarios, RunOptions(out_dir=out / "validate-runs", suite="validate-sharded",
                                            timeout_s=timeout_s, resume=resume, progress=progress, report=False))
    results = []
    for row in rows:
        if row.get("key") not in by_key:
            continue
        case, shard, d, sc = by_key[row["key"]]
        est = estimate(resolve_model(str(d)), sc.train)
        meas = int(row["peak_bytes"]) if str(row.get("peak_bytes", "")).strip() not in ("", "None") else None
        results.append({
            "key": row["key"], "case": case.name, "family": case.family, "sharding": shard["sharding"],
            "gpus": shard["gpus"], "rank": row.get("rank"), "method": case.method, "strategy": case.strategy,
            "finetune": case.finetune, "batch": case.batch, "seq": case.seq, "status": row.get("status"),
            "measured_bytes": meas, "estimated_bytes": est.peak_bytes,
            "error_pct": None if not meas or row.get("status") != "ok" else 100.0 * (est.peak_bytes - meas) / meas,
            "est_peak_phase": est.peak_phase.name, "error": row.get("error") or "",
            "config": json.dumps(case.config, sort_keys=True),
        })
    summary = _summary(results)
    _write(results, summary, out, n, seed)
    return summary


def _summary(results: list[dict]) -> dict:
    import statistics

    errs = [abs(r["error_pct"]) for r in results if r["error_pct"] is not None]
    by = {}
    for s in SHARDINGS:
        e = [abs(r["error_pct"]) for r in results if r["error_pct"] is not None and r["sharding"] == s]
        by[s] = (len(e), statistics.median(e) if e else None, max(e) if e else None)
    median, worst = (statistics.median(errs), max(errs)) if errs else (None, None)
    return {"rank_rows": len(results), "measured": len(errs), "median_abs_error_pct": median,
            "worst_abs_error_pct": worst, "by_sharding": by,
            "passes": bool(errs) and median <= TARGET_MEDIAN_PCT and worst <= TARGET_WORST_PCT}


def _write(results: list[dict], summary: dict, out: Path, n: int, seed: int) -> None:
    import pandas as pd

    from refplan.harness.report import markdown_table

    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(results)
    df.to_csv(out / "accuracy.csv", index=False, lineterminator="\r\n")
    med, worst = summary["median_abs_error_pct"], summary["worst_abs_error_pct"]
    lines = ["# Planner accuracy per rank: sharded bursts (ZeRO-2, ZeRO-3, FSDP2) on CPU", "",
             f"Regenerate: `refplan validate --sharded --n {n} --seed {seed} --out {out}` (each case launched "
             "as its ranks through `accelerate launch`, gloo, proven sharded; one row per rank; measured = the "
             "rank's peak live tensor bytes over precompute and training; estimate = `refplan estimate "
             "--device cpu --gpus N --zero 2|3 | --fsdp` for the same settings).", "",
             f"- rank rows: {summary['rank_rows']} ({summary['measured']} measured)",
             f"- **median |error|: {med:.2f} %**, **worst {worst:.2f} %** (targets {TARGET_MEDIAN_PCT} % / "
             f"{TARGET_WORST_PCT} %): {'PASS' if summary['passes'] else 'FAIL'}" if med is not None else "- no result",
             ""]
    if len(df):
        ok = df[df["error_pct"].notna()].assign(abs_err=lambda d: d["error_pct"].abs())
        for field in ("sharding", "method", "strategy", "finetune", "gpus"):
            if ok.empty:
                break
            g = ok.groupby(ok[field].astype(str)).agg(n=("abs_err", "size"), median=("abs_err", "median"),
                                                       worst=("abs_err", "max")).reset_index()
            g = g.assign(median=g["median"].map("{:.2f}".format), worst=g["worst"].map("{:.2f}".format))
            g.columns = [field, "rank rows", "median |err| %", "worst |err| %"]
            lines += [f"## By {field}", "", markdown_table(g), ""]
        cols = ["case", "sharding", "gpus", "rank", "method", "strategy", "finetune", "status", "measured_bytes",
                "estimated_bytes", "error_pct"]
        table = df[cols].assign(error_pct=df["error_pct"].map(lambda e: "" if pd.isna(e) else f"{e:+.2f}"))
        lines += ["## Every rank", "", markdown_table(table), ""]
    (out / "accuracy.md").write_text("\n".join(lines) + "\n")


def sections_for_main_report(reports: Path) -> list[str]:
    """The sharded matrix (``reports/validate-sharded``) and the trace fallback's bursts
    (``reports/validate-trace-fallback``), summarized in the standing report when their results are there."""
    import pandas as pd

    lines = []
    csv_path = reports / "validate-sharded" / "accuracy.csv"
    if csv_path.exists():
        results = pd.read_csv(csv_path).to_dict("records")
        for r in results:
            r["error_pct"] = None if pd.isna(r.get("error_pct")) else float(r["error_pct"])
        s = _summary(results)
        lines += ["", "## Sharded: ZeRO-2, ZeRO-3, FSDP2 per rank", "",
                  f"`refplan validate --sharded` (validate-sharded/accuracy.md, every rank there): {s['measured']} "
                  f"of {s['rank_rows']} rank rows measured; median |error| {s['median_abs_error_pct']:.2f} %, worst "
                  f"{s['worst_abs_error_pct']:.2f} % -> {'PASS' if s['passes'] else 'FAIL'}.", "",
                  "| sharding | rank rows | median abs err % | worst abs err % |", "|---|---|---|---|"]
        lines += [f"| {k} | {n} | {m:.2f} | {w:.2f} |" for k, (n, m, w) in s["by_sharding"].items() if n]
    fallback = reports / "validate-trace-fallback" / "accuracy-section.md"
    if fallback.exists():
        lines += ["", fallback.read_text().strip()]
    return lines
