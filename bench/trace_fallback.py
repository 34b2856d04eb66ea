"""The trace fallback against real CPU bursts, on model families that have no formula module.

For each family (a ``model_type`` transformers 5.24 builds offline, none in ``refplan.families``),
seeded odd shapes are drawn, each saved as a tiny random-weight model with the offline tokenizer; each
scenario runs as a real TRL burst in its own process (``refplan.harness.runner``, as ``refplan bench``
and ``refplan validate`` run them), and the estimate is what a user gets from ``refplan estimate
--model <that directory> --device cpu``: the model resolved from its saved ``config.json``
(a trace-only spec) and estimated by the trace engine (``refplan.query.estimate_one``), at the traced
depths and extrapolated where the model is deeper than them. Error = (estimate - measured) / measured,
measured = peak live tensor bytes over precompute and training (loading excluded).

    python bench/trace_fallback.py [--per-family 5] [--seed 0] [--families gptj,codegen,...]
                                   [--out reports/validate-trace-fallback]

Writes ``accuracy.csv`` and ``accuracy.md`` in ``--out`` (the burst rows in ``--out/runs``, resumed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from refplan.methods import Finetune, Method, applicable_strategies  # noqa: E402
from refplan.validate import Case, build_model_dir  # noqa: E402


def _gptj(rng, heads, head_dim, layers):
    return {"n_embd": heads * head_dim, "n_head": heads, "n_layer": layers, "rotary_dim": rng.choice([4, 8, head_dim]),
            "n_inner": rng.choice([None, 3 * heads * head_dim]), "n_positions": 512,
            "tie_word_embeddings": False}


def _codegen(rng, heads, head_dim, layers):
    # CodeGen splits its fused qkv_proj into mp_num = 4 blocks: heads a multiple of 4
    heads = 4 * max(1, heads // 4)
    return {"n_embd": heads * head_dim, "n_head": heads, "n_layer": layers, "rotary_dim": rng.choice([4, 8]),
            "n_inner": rng.choice([None, 2 * heads * head_dim]), "n_positions": 512, "n_ctx": 512,
            "tie_word_embeddings": False}


def _persimmon(rng, heads, head_dim, layers):
    width = rng.choice([2, 3, 4]) * heads * head_dim
    factor = rng.choice([0.25, 0.5, 1.0])
    if int(head_dim * factor) % 2:
        factor = 0.5  # an odd rotary width does not run in transformers (rotate_half splits it in two)
    return {"hidden_size": heads * head_dim, "num_attention_heads": heads, "num_hidden_layers": layers,
            "intermediate_size": width, "partial_rotary_factor": factor, "qk_layernorm": rng.random() < 0.7,
            "max_position_embeddings": 512}


def _biogpt(rng, heads, head_dim, layers):
    return {"hidden_size": heads * head_dim, "num_attention_heads": heads, "num_hidden_layers": layers,
            "intermediate_size": rng.choice([2, 3, 4]) * heads * head_dim, "max_position_embeddings": 512,
            "scale_embedding": rng.random() < 0.5, "layerdrop": 0.0}


def _olmo(rng, heads, head_dim, layers):
    kv = rng.choice([h for h in (1, 2, heads) if heads % h == 0])
    return {"hidden_size": heads * head_dim, "num_attention_heads": heads, "num_key_value_heads": kv,
            "num_hidden_layers": layers, "intermediate_size": rng.choice([40, 96, 136]),
            "clip_qkv": rng.choice([None, 8.0]), "tie_word_embeddings": rng.random() < 0.5}


def _helium(rng, heads, head_dim, layers):
    kv = rng.choice([h for h in (1, 2, heads) if heads % h == 0])
    rng.choice([48, 64, 80])  # (drawn, unused: HeliumAttention's o_proj runs only when hidden = heads x head_dim)
    return {"hidden_size": heads * head_dim, "num_attention_heads": heads, "num_key_value_heads": kv,
            "head_dim": head_dim, "num_hidden_layers": layers, "intermediate_size": rng.choice([40, 96, 136]),
            "tie_word_embeddings": rng.random() < 0.5}


def _glm(rng, heads, head_dim, layers):
    kv = rng.choice([h for h in (1, 2, heads) if heads % h == 0])
    return {"hidden_size": rng.choice([48, 64, 80]), "num_attention_heads": heads, "num_key_value_heads": kv,
            "head_dim": head_dim, "num_hidden_layers": layers, "intermediate_size": rng.choice([40, 96, 136]),
            "partial_rotary_factor": rng.choice([0.5, 1.0]), "tie_word_embeddings": rng.random() < 0.5}


def _gpt_neo(rng, heads, head_dim, layers):
    # local / global attention alternating (GPT-Neo's own layout): a period-2 layer pattern; eager only
    layers += layers % 2
    return {"hidden_size": heads * head_dim, "num_heads": heads, "num_layers": layers,
            "attention_types": [[["global", "local"], layers // 2]], "window_size": rng.choice([8, 32, 256]),
            "intermediate_size": rng.choice([None, 2 * heads * head_dim]), "max_position_embeddings": 512}


def _olmoe(rng, heads, head_dim, layers):
    return {"hidden_size": heads * head_dim, "num_attention_heads": heads, "num_key_value_heads": heads,
            "num_hidden_layers": layers, "intermediate_size": rng.choice([24, 40]),
            "num_experts": rng.choice([4, 6]), "num_experts_per_tok": 2, "tie_word_embeddings": False}


#: family -> (shape draw, what it exercises)
SHAPES = {
    "gptj": (_gptj, "parallel block on one LayerNorm, partial interleaved rotary, separate q/k/v, LM head bias"),
    "codegen": (_codegen, "GPT-J's layout with a fused qkv_proj split in four blocks"),
    "persimmon": (_persimmon, "fused query_key_value, q/k LayerNorms, partial rotary, squared-ReLU MLP"),
    "biogpt": (_biogpt, "learned positions, scaled embeddings, LayerNorm, GELU MLP with biases"),
    "olmo": (_olmo, "non-parametric LayerNorm, optional qkv clipping, GQA"),
    "helium": (_helium, "GQA, RMSNorm, explicit head_dim"),
    "glm": (_glm, "fused gate_up MLP, partial rotary, GQA with q/k/v biases"),
    "gpt_neo": (_gpt_neo, "alternating global / local attention (period 2), eager attention only"),
    "olmoe": (_olmoe, "routed experts (top-2), q/k RMSNorm"),
}


def draw(per_family: int, seed: int, families: list[str]) -> list[Case]:
    """``per_family`` scenarios a family; every method appears across a family's draws."""
    rng = random.Random(seed)
    cases = []
    methods = list(Method)
    for family in families:
        shape = SHAPES[family][0]
        for j in range(per_family):
            method = methods[(j + len(cases)) % len(methods)]
            finetune = rng.choice([Finetune.FULL, Finetune.LORA])
            strategy = rng.choice(applicable_strategies(method, finetune))
            heads = rng.choice([2, 4, 6, 8])
            head_dim = rng.choice([8, 12, 16])
            layers = rng.choice([3, 4, 5, 6, 7])
            cfg = {"model_type": family, "vocab_size": 1024, **shape(rng, heads, head_dim, layers)}
            cfg = {k: v for k, v in cfg.items() if v is not None}
            batch = rng.randint(2 if method is Method.KTO else 1, 3)
            seq = rng.choice([16, 24, 32, 48, 64, 96])
            cases.append(Case(f"tf{seed}-{family}-{j}", family, cfg, method.value, strategy.value, finetune.value,
                              batch, seq, rng.random() < 0.3, rng.choice([4, 8, 16])))
    return cases


def run(per_family: int, seed: int, families: list[str], out: Path, timeout_s: float) -> list[dict]:
    from refplan.activations import attention_impl
    from refplan.harness.runner import RunOptions, run_matrix
    from refplan.harness.scenario import Scenario, bench_train_spec
    from refplan.harness.tiny import cache_dir
    from refplan.query import estimate_one
    from refplan.resolve import resolve_model

    root = cache_dir() / "trace-fallback-models"
    by_key, scenarios = {}, []
    for c in draw(per_family, seed, families):
        d = build_model_dir(c, root)
        spec = resolve_model(str(d))
        assert spec.trace_only, c.family
        train = bench_train_spec(method=c.method, strategy=c.strategy, finetune=c.finetune, dtype="fp32",
                                 batch=c.batch, seq=c.seq, grad_ckpt=c.grad_ckpt, lora_r=c.lora_r, device="cpu")
        attn = attention_impl(spec, train)  # eager where the class has no SDPA
        train = replace(train, attn=type(train.attn)(attn))
        sc = Scenario(train, model=str(d), steps=2, seed=0)
        scenarios.append(sc)
        by_key[sc.key] = (c, d, sc)
    rows = run_matrix(scenarios, RunOptions(out_dir=out / "runs", suite="trace-fallback", timeout_s=timeout_s,
                                            resume=True, progress=False, report=False))
    results = []
    for row in rows:
        if row.get("key") not in by_key:
            continue
        c, d, sc = by_key[row["key"]]
        spec = resolve_model(str(d))  # what `refplan estimate --model DIR` reads
        meas = int(row["peak_bytes"]) if str(row.get("peak_bytes", "")).strip() not in ("", "None") else None
        if row.get("status") != "ok":
            print(f"{c.name}: the burst failed ({row.get('status')}): {str(row.get('error'))[-200:]}", flush=True)
            continue
        t0 = time.perf_counter()
        est = estimate_one(spec, sc.train)
        seconds = time.perf_counter() - t0
        err = None if not meas else 100.0 * (est.peak_bytes - meas) / meas
        results.append({
            "key": row["key"], "case": c.name, "family": c.family, "method": c.method, "strategy": c.strategy,
            "finetune": c.finetune, "grad_ckpt": c.grad_ckpt, "batch": c.batch, "seq": c.seq, "lora_r": c.lora_r,
            "layers": spec.num_layers, "traced_at": _traced_at(spec), "attn": sc.train.attn.value, "status": row.get("status"),
            "measured_bytes": meas, "estimated_bytes": est.peak_bytes, "error_pct": err,
            "est_peak_phase": est.peak_phase.name, "trace_s": round(seconds, 1),
            "config": json.dumps(c.config, sort_keys=True),
        })
        print(f"{c.name:24s} {c.method:5s} {c.strategy:11s} {c.finetune:4s} ckpt={c.grad_ckpt!s:5s} "
              f"measured={meas} estimated={est.peak_bytes} err={err if err is None else round(err, 3)} "
              f"({seconds:.1f} s)", flush=True)
    return results


def _traced_at(spec) -> str:
    """The depths the trace engine ran: ``"n1,n2"`` when it extrapolated, ``"full"`` when it traced them all."""
    from refplan.trace import extrapolation_depths

    n1, n2, _ = extrapolation_depths(spec)
    return f"{n1},{n2}" if spec.num_layers > n2 else "full"


def write(results: list[dict], out: Path, argv: list[str], families: list[str]) -> dict:
    from refplan.validate import _breakdown, _frame, _largest_errors, summarize, summary_lines

    out.mkdir(parents=True, exist_ok=True)
    df = _frame(results)
    df.to_csv(out / "accuracy.csv", index=False, lineterminator="\r\n")
    s = summarize(results)
    lines = [
        "# The trace fallback on families without a formula module (trace engine vs real TRL bursts, CPU)",
        "",
        f"Regenerate: `python bench/trace_fallback.py {' '.join(argv)}`. Every scenario a real TRL 1.16 burst "
        "in its own process on a tiny random-weight model saved from the drawn config; estimate = `refplan "
        "estimate --model <its directory> --device cpu`, which resolves the saved config.json to a trace-only "
        "spec and runs the trace engine (traced at two depths and extrapolated where the model is deeper); "
        "measured = peak live tensor bytes over precompute and training, loading excluded. No formula term is "
        "involved.",
        "",
        *summary_lines(s),
        f"- extrapolated in depth (deeper than the two traced depths): {int((df['traced_at'] != 'full').sum())} of "
        f"{len(df)}; the rest traced at full depth",
        f"- trace time per row (the fallback's cost): median {df['trace_s'].median():.1f} s, "
        f"max {df['trace_s'].max():.1f} s",
        "",
        "## Families and what each exercises",
        "",
    ] + [f"- `{f}`: {SHAPES[f][1]}" for f in families] + [""]
    for field in ("family", "method", "strategy", "finetune", "grad_ckpt", "traced_at", "est_peak_phase"):
        lines += [f"## By {field}", ""] + _breakdown(df, field) + [""]
    lines += ["## Largest errors", ""] + _largest_errors(df)
    failed = df[df["error_pct"].isna()]
    if len(failed):
        lines += ["", "## Not measured", ""] + [f"- {r.case} ({r.method}/{r.strategy}): {r.status}"
                                                 for r in failed.itertuples()]
    (out / "accuracy.md").write_text("\n".join(lines) + "\n")
    return s


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-family", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--families", default=",".join(SHAPES))
    p.add_argument("--out", default="reports/validate-trace-fallback")
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in SHAPES]
    if unknown:
        p.error(f"no shapes for {unknown[0]!r}; choose from {', '.join(SHAPES)}")
    from refplan.families import SUPPORTED_FAMILIES

    assert not set(families) & set(SUPPORTED_FAMILIES), "a family with a formula module"
    out = Path(args.out)
    results = run(args.per_family, args.seed, families, out, args.timeout)
    s = write(results, out, argv, families)
    print(json.dumps({k: v for k, v in s.items() if k != "families"}))
    return 0 if s["passes"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
