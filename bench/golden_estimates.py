"""Golden estimates: the formula engine's answer on a fixed, broad grid, byte for byte.

Refactors that must not change behaviour are checked against ``tests/data/golden_estimates.json``:
every catalog model under a grid of settings (dtypes, autocast, fine-tune modes, sharding, optimizers,
quantized references, devices, checkpointing, padding), the ``refplan validate --n 160 --seed 0``
scenarios, and the ``bench/trace_check.py`` formula rows. Each entry keeps the peak and a digest of
every phase's components, so a moved byte anywhere shows.

    python bench/golden_estimates.py            # compare with the committed file (exit 1 on a difference)
    python bench/golden_estimates.py --write    # rewrite it (only with a change that is meant to move numbers)
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refplan.errors import PlanError  # noqa: E402

GOLDEN = ROOT / "tests" / "data" / "golden_estimates.json"

#: settings grid for every catalog model (each tuple is one TrainSpec base; method x strategy expands)
GRID = [
    dict(),
    dict(dtype="fp32", autocast="bf16", grad_ckpt=True, batch=2, seq=2048),
    dict(finetune="lora", lora_r=16, batch=2, seq=1024, grad_ckpt=True),
    dict(finetune="lora", lora_r=64, lora_targets="q_proj,v_proj", dtype="fp32", autocast="bf16"),
    dict(finetune="qlora", lora_r=8, seq=4096, grad_ckpt=True, optim="paged-adamw"),
    dict(ref_quant="4bit", batch=4, seq=512),
    dict(ref_quant="8bit", ref_dtype="fp16", dtype="fp16"),
    dict(zero=3, gpus=8, batch=2, seq=2048, grad_ckpt=True),
    dict(zero=2, gpus=4, optim="adamw-torch"),
    dict(fsdp=True, gpus=4, finetune="lora", optim="adafactor"),
    dict(zero=1, gpus=2, optim="adamw-8bit", precompute_batch=8),
    dict(device="cpu", padded=False, dtype="fp32", batch=2, seq=256, optim="sgd", attn="eager"),
    dict(device="cpu", finetune="lora", dtype="fp32", batch=3, seq=384, optim="adamw-torch"),
    # k-bit on CPU (bitsandbytes' CPU backend) and the 4-bit settings other than the defaults
    dict(device="cpu", padded=False, dtype="fp32", finetune="qlora", batch=2, seq=256, quant_compute_dtype="bf16"),
    dict(device="cpu", padded=False, dtype="fp32", finetune="qlora", quant_bits=8, grad_ckpt=True, ref_quant="4bit"),
    dict(finetune="qlora", double_quant=True, quant_type="fp4", prepare_kbit=True, ref_quant="8bit"),
]


def digest(est) -> str:
    doc = [(p.name, sorted(p.components)) for p in est.phases]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:16]


def make_spec(method: str, strategy: str, **kw):
    """A TrainSpec from CLI-style string settings (the one place to adapt when the spec's API moves)."""
    from refplan.settings import train_spec_from_strings

    return train_spec_from_strings(method=method, strategy=strategy, **kw)


def _record(out: dict, key: str, model, train) -> None:
    from refplan.planner import estimate

    try:
        est = estimate(model, train)
    except PlanError as err:  # refused input is part of the behaviour too
        out[key] = ["refused", err.where]
        return
    out[key] = [est.peak_bytes, est.peak_phase.name, digest(est)]


def catalog_grid(out: dict) -> None:
    from refplan.methods import Finetune, Method, applicable_strategies
    from refplan.resolve import catalog_entries, resolve_model

    for entry in catalog_entries():
        model = resolve_model(entry["model_id"], offline=True)
        for gi, settings in enumerate(GRID):
            ft = Finetune(settings.get("finetune", "full"))
            for m in Method:
                for s in applicable_strategies(m, ft):
                    kw = dict(settings)
                    if m is Method.KTO and kw.get("batch", 1) < 2:
                        kw["batch"] = 2
                    if s.value not in ("separate", "precompute"):
                        kw.pop("ref_quant", None)
                        kw.pop("ref_dtype", None)
                    try:
                        train = make_spec(m.value, s.value, **kw)
                    except PlanError:
                        continue
                    _record(out, f"cat|{entry['model_id']}|g{gi}|{m.value}|{s.value}", model, train)


def validate_cases(out: dict) -> None:
    from refplan.families import spec_from_config
    from refplan.validate import generate

    for c in generate(160, 0, vocab=1024):
        model = spec_from_config(dict(c.config), c.name, "golden")
        train = make_spec(c.method, c.strategy, finetune=c.finetune, dtype="fp32", lora_r=c.lora_r,
                          batch=c.batch, seq=c.seq, precompute_batch=c.batch, grad_ckpt=c.grad_ckpt,
                          attn="eager" if c.family == "gemma2" else "sdpa", device="cpu", padded=False)
        _record(out, f"val|{c.name}", model, train)


def trace_check_rows(out: dict) -> None:
    from refplan.resolve import resolve_model

    models = ["meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-70B", "Qwen/Qwen3-30B-A3B", "Qwen/Qwen2.5-7B",
              "mistralai/Mistral-7B-v0.1", "google/gemma-2-9b"]
    cases = [
        ("dpo", "separate", {}), ("dpo", "separate", dict(batch=2, seq=2048, grad_ckpt=True)),
        ("dpo", "separate", dict(batch=2, padded=True)), ("dpo", "separate", dict(dtype="fp32", seq=512)),
        ("dpo", "separate", dict(dtype="fp32", autocast="bf16")), ("dpo", "precompute", dict(batch=2, seq=512)),
        ("dpo", "unwrap", dict(finetune="lora", seq=2048)),
        ("dpo", "unwrap", dict(finetune="lora", batch=2, grad_ckpt=True)),
        ("dpo", "unwrap", dict(finetune="lora", dtype="fp32", grad_ckpt=True)),
        ("kto", "precompute", dict(dtype="fp32", batch=2, seq=512, grad_ckpt=True)),
        ("kto", "unwrap", dict(finetune="lora", batch=2, seq=2048, grad_ckpt=True)),
        ("orpo", "none", {}), ("orpo", "none", dict(finetune="lora", batch=2, seq=512, grad_ckpt=True)),
        ("orpo", "none", dict(dtype="fp32", seq=2048, grad_ckpt=True)),
    ]
    for name in models:
        model = resolve_model(name, offline=True)
        for i, (m, s, kw) in enumerate(cases):
            base = dict(dtype="bf16", batch=1, seq=1024, device="cpu", lora_r=16, padded=False)
            base.update(kw)
            _record(out, f"trace|{name}|{i}", model, make_spec(m, s, **base))


def compute() -> dict:
    out: dict = {}
    catalog_grid(out)
    validate_cases(out)
    trace_check_rows(out)
    return out


def compare(now: dict, golden: dict) -> list[str]:
    diffs = []
    for key in sorted(set(now) | set(golden)):
        if now.get(key) != golden.get(key):
            diffs.append(f"{key}: golden {golden.get(key)} now {now.get(key)}")
    return diffs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="rewrite the golden file")
    a = p.parse_args()
    now = compute()
    if a.write:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(now, sort_keys=True, separators=(",", ":")).replace("],", "],\n") + "\n")
        print(f"wrote {len(now)} estimates to {GOLDEN}")
        return 0
    diffs = compare(now, json.loads(GOLDEN.read_text()))
    print(f"{len(now)} estimates, {len(diffs)} differ from {GOLDEN.name}")
    for d in diffs[:40]:
        print("  " + d)
    return 1 if diffs else 0


if __name__ == "__main__":
    raise SystemExit(main())
