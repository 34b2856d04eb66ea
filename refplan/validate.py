"""Planner accuracy: a seeded random matrix of real CPU bursts, measured against the formula engine.

``refplan validate [--n 160] [--seed 0] [--out reports]`` draws scenarios from a seed -- random
architecture family and odd shapes, method, strategy, fine-tune mode, gradient checkpointing,
batch and prompt/completion lengths -- builds each model offline with random weights, runs each
scenario as a real TRL burst in its own process (``refplan.harness.runner``), and compares the
measured peak live tensor bytes (max over precompute and training, loading excluded) with
``refplan.planner.estimate(..., device="cpu")``. Nothing is tuned to the matrix: the shapes come
from the seed, and the planner has no fitted constants.

Outputs (in ``--out``): ``accuracy.csv`` (one row per scenario), ``accuracy.md`` (summary and
breakdowns by method, strategy, family, fine-tune mode, checkpointing and peak phase) and
``accuracy.png`` (predicted vs measured, log-log, with the +-3 % and +-8 % bands).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from refplan.methods import Finetune, Method, Strategy, applicable_strategies
from refplan.validate_shapes import FAMILIES, MORE_FAMILIES, odd_shape  # noqa: F401 (re-exported)

TARGET_MEDIAN_PCT = 3.0
TARGET_WORST_PCT = 8.0


@dataclass(frozen=True)
class Case:
    """One validation scenario: a family config + the burst settings."""

    name: str
    family: str
    config: dict
    method: str
    strategy: str
    finetune: str
    batch: int
    seq: int
    grad_ckpt: bool
    lora_r: int
    #: k-bit settings of a QLoRA policy or a quantized reference (TrainSpec fields; empty: none)
    quant: dict = field(default_factory=dict)

    @property
    def quant_label(self) -> str:
        """Short description of the k-bit settings, e.g. ``q4-nf4-dq-bf16+ref8bit`` ('' when none)."""
        q = self.quant
        parts = []
        if self.finetune == "qlora":
            bits = q.get("quant_bits", 4)
            parts.append(f"q{bits}" + (f"-{q.get('quant_type', 'nf4')}" + ("-dq" if q.get("double_quant") else "")
                                       + f"-{q.get('quant_compute_dtype') or 'fp32'}" if bits == 4 else "")
                         + ("-prep" if q.get("prepare_kbit") else ""))
        if q.get("ref_quant"):
            parts.append(f"ref{q['ref_quant']}")
        return "+".join(parts)

    @property
    def kbit_columns(self) -> dict:
        """The k-bit breakdown columns of a quantized report: what is k-bit (``kbit``), the 4-bit compute
        dtype and double quantization ("8-bit only" where nothing loads 4-bit)."""
        q = self.quant
        kinds = [f"qlora {q.get('quant_bits', 4)}-bit"] if self.finetune == "qlora" else []
        kinds += [f"{q['ref_quant'][0]}-bit reference"] if q.get("ref_quant") else []
        four = (self.finetune == "qlora" and q.get("quant_bits", 4) == 4) or q.get("ref_quant") == "4bit"
        return {"kbit": " + ".join(kinds), "compute": (q.get("quant_compute_dtype") or "fp32") if four else "8-bit only",
                "double_quant": str(bool(q.get("double_quant"))) if four else "8-bit only"}


def generate(n: int, seed: int, vocab: int, families: tuple[str, ...] | None = None) -> list[Case]:
    """``n`` cases from ``seed`` over ``families`` (default: :data:`FAMILIES`). Every family and method
    appears; the rest is random."""
    rng = random.Random(seed)
    fams = list(families or FAMILIES)
    unknown = [f for f in fams if f not in FAMILIES and f not in MORE_FAMILIES]
    if unknown:
        from refplan.errors import PlanError

        raise PlanError("--families", f"no validation shapes for {unknown[0]!r}; choose from "
                                      f"{', '.join([*FAMILIES, *MORE_FAMILIES])}")
    methods = list(Method)
    cases: list[Case] = []
    while len(cases) < n:
        i = len(cases)
        family = fams[i % len(fams)]
        method = methods[(i // len(fams)) % len(methods)]
        finetune = rng.choice([Finetune.FULL, Finetune.LORA])
        strategy = rng.choice(applicable_strategies(method, finetune))
        cfg = {"model_type": family, **odd_shape(rng, family, vocab)}
        batch = rng.randint(2 if method is Method.KTO else 1, 4)
        seq = rng.choice([16, 24, 32, 48, 64, 96, 128, 160])
        cases.append(Case(f"v{seed}-{i:03d}-{family}", family, cfg, method.value, strategy.value, finetune.value,
                          batch, seq, rng.random() < 0.3, rng.choice([4, 8, 16])))
    return cases


def _bnb_shape(rng: random.Random, family: str, vocab: int) -> dict:
    """A small config whose every quantized linear fits bitsandbytes' AVX512-BF16 CPU kernel: out_features
    in blocks of 32 and in_features in whole 64-weight absmax blocks (``_convert_weight_packed_for_cpu``
    asserts the first and reshapes by the second; an eval-mode 4-bit forward on such a CPU fails
    otherwise). Widths, depth, heads, GQA, ties and windows are still drawn."""
    heads = rng.choice([2, 4])
    head_dim = rng.choice([16, 32]) if heads == 4 else 32
    kv = rng.choice([d for d in (1, 2, 4) if heads % d == 0 and (d * head_dim) % 32 == 0])
    cfg = {
        "hidden_size": rng.choice([64, 128, 192]),
        "intermediate_size": rng.choice([128, 192, 256, 320]),
        "num_hidden_layers": rng.randint(1, 3),
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "vocab_size": vocab + rng.randint(0, 300),
        "max_position_embeddings": 1024,
    }
    if family == "qwen2":
        cfg["tie_word_embeddings"] = rng.random() < 0.7
    if family == "mistral":
        cfg["sliding_window"] = rng.choice([16, 32, 64, 4096])
    if family == "gemma2":
        cfg["query_pre_attn_scalar"] = head_dim
        cfg["tie_word_embeddings"] = rng.random() < 0.5
        cfg["sliding_window"] = rng.choice([16, 64, 4096])
    if family == "gpt_neox":
        for key in ("num_key_value_heads", "head_dim"):
            cfg.pop(key)
        cfg["hidden_size"] = heads * rng.choice([32, 48]) if heads == 4 else rng.choice([64, 128])
        cfg["rotary_pct"] = rng.choice([0.25, 0.5, 1.0])
        cfg["tie_word_embeddings"] = False
        cfg["use_parallel_residual"] = rng.random() < 0.7
    if family in ("qwen3", "olmo2"):
        cfg["attention_bias"] = rng.random() < 0.3
    return cfg


def generate_quantized(n: int, seed: int, vocab: int, families: tuple[str, ...] | None = None) -> list[Case]:
    """``n`` QLoRA and k-bit-reference cases from ``seed`` (``refplan validate --quantized``), drawn apart from
    :func:`generate` so that the standing matrix's draws do not change. Every family and method appears;
    methods with a reference alternate a QLoRA policy (every strategy TRL runs with it; 'separate' with a
    full, 8-bit or 4-bit reference) with a full or LoRA policy against an 8- or 4-bit reference; 4 or 8
    bits, nf4 or fp4, double quantization on or off, fp32 or bf16 compute, prepare_model_for_kbit_training
    or not, checkpointing on or off."""
    rng = random.Random(seed)
    fams = list(families or FAMILIES)
    methods = list(Method)
    cases: list[Case] = []
    while len(cases) < n:
        i = len(cases)
        family = fams[i % len(fams)]
        method = methods[(i // len(fams)) % len(methods)]
        qlora = not method.caps.needs_reference or rng.random() < 0.7
        quant: dict = {}
        if qlora:
            finetune = Finetune.QLORA
            strategy = rng.choice(applicable_strategies(method, finetune))
            quant["quant_bits"] = rng.choice([4, 4, 8])
            if strategy is Strategy.SEPARATE:
                quant["ref_quant"] = rng.choice(["none", "8bit", "4bit"])
            if rng.random() < 0.25:
                quant["prepare_kbit"] = True
        else:
            finetune = rng.choice([Finetune.FULL, Finetune.LORA])
            strategy = Strategy.SEPARATE
            quant["ref_quant"] = rng.choice(["8bit", "4bit"])
        if quant.get("ref_quant") == "none":
            del quant["ref_quant"]
        if quant.get("quant_bits") == 4 or quant.get("ref_quant") == "4bit":
            quant["double_quant"] = rng.random() < 0.5
            quant["quant_type"] = "fp4" if rng.random() < 0.2 else "nf4"
            if rng.random() < 0.5:
                quant["quant_compute_dtype"] = "bf16"
        cfg = {"model_type": family, **_bnb_shape(rng, family, vocab)}
        batch = rng.randint(2 if method is Method.KTO else 1, 4)
        seq = rng.choice([16, 24, 32, 48, 64, 96, 128])
        cases.append(Case(f"q{seed}-{i:03d}-{family}", family, cfg, method.value, strategy.value, finetune.value,
                          batch, seq, rng.random() < 0.35, rng.choice([4, 8, 16]),
                          {k: v for k, v in quant.items() if v not in (False, 4) or k == "quant_bits"}))
    return cases


def build_model_dir(case: Case, root: Path) -> Path:
    """Save the case's config with random weights and the offline tokenizer (TRL reloads its
    reference from ``config._name_or_path``, so models live on disk)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from refplan.harness.tiny import build_tokenizer

    out = root / case.name
    # case names repeat across --families selections with other shapes: reuse a saved model only
    # when it was built from this very config
    drawn = json.dumps(case.config, sort_keys=True)
    marker = out / "refplan-case.json"
    if (out / "tokenizer.json").exists() and marker.exists() and marker.read_text() == drawn:
        return out
    tok = build_tokenizer(1024)
    cfg = dict(case.config)
    model_type = cfg.pop("model_type")
    extra = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    for key in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        extra[key] = 0.0
    config = AutoConfig.for_model(model_type, **{**cfg, **extra})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    marker.write_text(drawn)
    return out


def _attn_for(case: Case) -> str:
    """``eager`` where the family supports nothing else in transformers 5.x (Gemma 2's soft-capped
    scores, BLOOM), else ``sdpa``."""
    from refplan.activations import attention_impl
    from refplan.families import spec_from_config
    from refplan.spec import TrainSpec

    spec = spec_from_config(dict(case.config), case.name, "validate")
    probe = TrainSpec(Method.ORPO, Strategy.NONE, device="cpu", padded=False)
    return "eager" if attention_impl(spec, probe) == "eager" else "sdpa"


def estimate_for(case_dir: Path, sc) -> tuple[int, str, dict]:
    """The formula engine for the burst's TrainSpec (a CPU burst on exact-length synthetic data: no padding)."""
    from refplan.planner import estimate
    from refplan.resolve import resolve_model

    est = estimate(resolve_model(str(case_dir)), sc.train)
    return est.peak_bytes, est.peak_phase.name, dict(est.components)


def run(n: int = 160, seed: int = 0, out: Path = Path("reports"), timeout_s: float = 300.0,
        resume: bool = True, progress: bool = True, families: tuple[str, ...] | None = None,
        quantized: bool = False) -> dict:
    """Build, run and compare the matrix (``quantized``: the QLoRA / k-bit-reference one,
    :func:`generate_quantized`); write the reports; return the summary."""
    from refplan.harness.runner import RunOptions, run_matrix
    from refplan.harness.scenario import Scenario, bench_train_spec
    from refplan.harness.tiny import cache_dir

    out = Path(out)
    root = cache_dir() / "validate-models"
    cases = (generate_quantized if quantized else generate)(n, seed, vocab=1024, families=families)
    scenarios = []
    by_key = {}
    for c in cases:
        d = build_model_dir(c, root)
        train = bench_train_spec(
            method=c.method, strategy=c.strategy, finetune=c.finetune, dtype="fp32", batch=c.batch, seq=c.seq,
            grad_ckpt=c.grad_ckpt, lora_r=c.lora_r, device="cpu", attn=_attn_for(c), **c.quant)
        sc = Scenario(train, model=str(d), steps=2, seed=0)
        scenarios.append(sc)
        by_key[sc.key] = (c, d, sc)
    work = out / "validate-runs"
    rows = run_matrix(scenarios, RunOptions(out_dir=work, suite="validate", timeout_s=timeout_s, resume=resume,
                                            progress=progress, report=False))
    results = []
    for row in rows:
        key = row.get("key")
        if key not in by_key:
            continue
        c, d, sc = by_key[key]
        est, phase, comps = estimate_for(d, sc)
        meas = int(row["peak_bytes"]) if str(row.get("peak_bytes", "")).strip() not in ("", "None") else None
        err = None if not meas else 100.0 * (est - meas) / meas
        results.append({
            "key": key, "case": c.name, "family": c.family, "method": c.method, "strategy": c.strategy,
            "finetune": c.finetune, "grad_ckpt": c.grad_ckpt, "batch": c.batch, "seq": c.seq,
            "lora_r": c.lora_r, **({"quant": c.quant_label, **c.kbit_columns} if quantized else {}),
            "layers": c.config.get("num_hidden_layers", c.config.get("n_layer")),
            "hidden": c.config.get("hidden_size", c.config.get("n_embd")), "status": row.get("status"),
            "measured_bytes": meas, "estimated_bytes": est, "error_pct": err, "est_peak_phase": phase,
            "measured_precompute_bytes": row.get("peak_precompute_bytes") or "",
            "measured_train_bytes": row.get("peak_train_bytes") or "",
            "components": json.dumps(comps, sort_keys=True), "config": json.dumps(c.config, sort_keys=True),
        })
    summary = summarize(results)
    write_reports(results, summary, out, seed, n, families, quantized)
    return summary


#: the result fields the reports read (the columns of an empty table)
REPORT_FIELDS = ["key", "case", "family", "method", "strategy", "finetune", "grad_ckpt", "batch", "seq", "status",
                 "measured_bytes", "estimated_bytes", "error_pct", "est_peak_phase"]


def _frame(results: list[dict]):
    """The results as a pandas table: values as given (ints stay ints, None stays None), except
    ``error_pct``: floats, NaN where nothing was measured."""
    import pandas as pd

    df = pd.DataFrame(results, columns=list(results[0]) if results else REPORT_FIELDS, dtype=object)
    return df.assign(error_pct=pd.to_numeric(df["error_pct"]))


def summarize(results: list[dict]) -> dict:
    df = _frame(results)
    ok = df[df["error_pct"].notna() & (df["status"] == "ok")]
    errs = ok["error_pct"].abs()
    median = float(errs.median()) if len(errs) else None
    worst = float(errs.max()) if len(errs) else None
    return {
        "scenarios": len(df),
        "measured": len(ok),
        "failed": len(df) - len(ok),
        "median_abs_error_pct": median,
        "worst_abs_error_pct": worst,
        "within_3pct": int((errs <= 3).sum()),
        "within_8pct": int((errs <= 8).sum()),
        "families": sorted(set(ok["family"])),
        "passes": bool(len(errs)) and median <= TARGET_MEDIAN_PCT and worst <= TARGET_WORST_PCT,
    }


def _breakdown(df, field: str) -> list[str]:
    """Markdown lines: |error| median and worst, signed mean, per value of ``field`` (measured rows)."""
    from refplan.harness.report import markdown_table

    measured = df[df["error_pct"].notna()]
    stats = (measured.assign(abs_err=measured["error_pct"].abs())
             .groupby(measured[field].astype(str))  # sorted as text, e.g. False before True
             .agg(n=("error_pct", "size"), median=("abs_err", "median"), worst=("abs_err", "max"),
                  mean=("error_pct", "mean"))
             .reset_index())
    table = stats.assign(median=stats["median"].map("{:.3f}".format), worst=stats["worst"].map("{:.3f}".format),
                         mean=stats["mean"].map("{:+.3f}".format))
    table.columns = [field, "n", "median abs err %", "worst abs err %", "mean signed err %"]
    return markdown_table(table).splitlines()


def _largest_errors(df, n: int = 10) -> list[str]:
    from refplan.harness.report import markdown_table

    measured = df[df["error_pct"].notna()]
    worst = measured.loc[measured["error_pct"].abs().sort_values(ascending=False, kind="stable").index[:n]]
    table = (worst[["case", "method", "strategy", "finetune", "grad_ckpt", "batch", "seq", "measured_bytes",
                    "estimated_bytes"]]
             .rename(columns={"grad_ckpt": "ckpt", "measured_bytes": "measured B", "estimated_bytes": "estimated B"})
             .assign(**{"err %": worst["error_pct"].map("{:+.3f}".format)}))
    return markdown_table(table).splitlines()


def summary_lines(summary: dict) -> list[str]:
    """The report's headline bullets from :func:`summarize`: counts, families, median and worst |error|
    against the targets, the within-3/8 % counts and the verdict."""
    med, worst = summary["median_abs_error_pct"], summary["worst_abs_error_pct"]
    return [
        f"- scenarios: {summary['scenarios']} ({summary['measured']} measured, {summary['failed']} failed)",
        f"- families: {', '.join(summary['families'])}",
        f"- **median |error|: {med:.3f} %** (target {TARGET_MEDIAN_PCT} %)" if med is not None else "- no result",
        f"- **worst |error|: {worst:.3f} %** (target {TARGET_WORST_PCT} %)" if worst is not None else "",
        f"- within 3 %: {summary['within_3pct']}, within 8 %: {summary['within_8pct']}",
        f"- verdict: {'PASS' if summary['passes'] else 'FAIL'}",
    ]


def write_reports(results: list[dict], summary: dict, out: Path, seed: int, n: int,
                  families: tuple[str, ...] | None = None, quantized: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    df = _frame(results)
    df[list(results[0]) if results else ["key"]].to_csv(out / "accuracy.csv", index=False, lineterminator="\r\n")
    _scatter(df, out / "accuracy.png")
    title = ("Planner accuracy on CPU, quantized: QLoRA and k-bit references (formula engine vs real TRL bursts)"
             if quantized else "Planner accuracy on CPU (formula engine vs real TRL bursts)")
    lines = [
        f"# {title}",
        "",
        f"Regenerate: `refplan validate --n {n} --seed {seed}" + (" --quantized" if quantized else "")
        + (f" --families {','.join(families)}" if families else "") + f" --out {out}` "
        "(random shapes and settings drawn from the seed; every scenario a real TRL 1.16 burst in its own "
        "process; measured = peak live tensor bytes over precompute and training, loading excluded; "
        "estimate = `refplan estimate --device cpu` for the same settings).",
        "",
        *summary_lines(summary),
        "",
        "![predicted vs measured](accuracy.png)",
        "",
    ]
    if quantized:
        lines += QUANTIZED_NOTES
    for name in ("method", "strategy", "family", "finetune", *(("kbit", "compute", "double_quant") if quantized else ()),
                 "grad_ckpt", "est_peak_phase"):
        lines += [f"## By {name}", ""] + _breakdown(df, name) + [""]
    lines += ["## Largest errors", ""] + _largest_errors(df)
    failed = df[df["error_pct"].isna()]
    if len(failed):
        lines += ["", "## Not measured", ""] + [f"- {r.case} ({r.method}/{r.strategy}): {r.status}"
                                                 for r in failed.itertuples()]
    if not quantized:
        from refplan.validate_sections import family_sections, precision_section
        from refplan.validate_sharded import sections_for_main_report

        lines += (family_sections(out) + precision_section(out) + _quantized_section(out / "validate-quantized")
                  + sections_for_main_report(out))
    trace = out / "trace_check.md"
    if trace.exists():
        lines += ["", "## Real shapes: formula vs trace engine", "",
                  "`python bench/trace_check.py > reports/trace_check.md` (the trace engine runs one real "
                  "training step on fake CPU tensors; extrapolated per layer segment):", "", trace.read_text()]
    gpu = out / "gpu" / "compare.md"
    if gpu.exists():
        lines += ["", "## CUDA (NVIDIA H200): planner vs the GPU bench", "",
                  "`python bench/gpu/compare.py reports/bench-gpu/bench.csv --optim adamw-torch` (that CSV was "
                  "recorded while the bench's adamw meant transformers' adamw_torch). The CUDA-only terms come "
                  "from `bench/gpu/calibrate.py` (reports/gpu/cuda_terms.csv); `bench/gpu/diagnose.py` lists "
                  "what is live at a GPU peak (reports/gpu/diagnose.json).", "", gpu.read_text()]
    (out / "accuracy.md").write_text("\n".join(lines) + "\n")


def _quantized_section(qdir: Path) -> list[str]:
    """The QLoRA / k-bit-reference matrix's results (``refplan validate --quantized --out DIR``), summarized in
    the main report when its CSV is there."""
    import pandas as pd

    csv_path = qdir / "accuracy.csv"
    if not csv_path.exists():
        return []
    df = _frame(pd.read_csv(csv_path, dtype=object).to_dict("records"))
    s = summarize(df.to_dict("records"))
    verdict = (f"`refplan validate --quantized` ({qdir.name}/accuracy.md, every breakdown there): "
               f"{s['measured']} of {s['scenarios']} bursts measured; median |error| "
               f"{s['median_abs_error_pct']:.3f} %, worst {s['worst_abs_error_pct']:.3f} % -> "
               f"{'PASS' if s['passes'] else 'FAIL'}.")
    lines = ["", "## Quantized: QLoRA and k-bit references", "", verdict, ""]
    for name in ("method", "strategy", "kbit", "compute", "grad_ckpt"):
        lines += _breakdown(df, name) + [""]
    return lines


#: what a quantized report's reader needs to know about its bursts
QUANTIZED_NOTES = [
    ("Each scenario loads its policy (QLoRA) or its separate reference k-bit with transformers' "
     "`BitsAndBytesConfig`, as TRL's `get_quantization_config` builds it, and runs bitsandbytes 0.50's CPU "
     "backend on an AVX512-BF16 CPU. In accuracy.csv, `quant` reads "
     "`q<bits>-<type>[-dq]-<compute dtype>[-prep]` for the policy (`-dq`: double quantization; `-prep`: "
     "`prepare_model_for_kbit_training`) and `ref<bits>` for a k-bit reference; `compute` is the 4-bit "
     "compute dtype. Shapes are drawn so that every quantized linear fits bitsandbytes' CPU kernel "
     "(out_features % 32, in_features % 64); the mechanisms are in `refplan/quant.py`, single layers in "
     "`bench/quant_inventory.py`."),
    "",
]


def _scatter(df, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = df[df["measured_bytes"].astype(bool) & df["estimated_bytes"].astype(bool)]
    fig, ax = plt.subplots(figsize=(6.5, 6))
    if len(pts):
        both = pts[["measured_bytes", "estimated_bytes"]].astype(float)
        lo = both.min(axis=None) / 1.3
        hi = both.max(axis=None) * 1.3
        xs = [lo, hi]
        ax.fill_between(xs, [x * 0.92 for x in xs], [x * 1.08 for x in xs], color="tab:orange", alpha=0.15,
                        label="±8 %")
        ax.fill_between(xs, [x * 0.97 for x in xs], [x * 1.03 for x in xs], color="tab:green", alpha=0.25,
                        label="±3 %")
        ax.plot(xs, xs, color="black", lw=0.8)
        for method, sel in pts.groupby("method"):
            ax.scatter(sel["measured_bytes"], sel["estimated_bytes"], s=12, label=method)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured peak live tensor bytes (CPU)")
    ax.set_ylabel("refplan estimate (bytes)")
    ax.set_title("Planner vs measured, seeded random matrix")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
