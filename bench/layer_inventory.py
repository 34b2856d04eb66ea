"""Activation inventory: the planner's saved-activation bytes vs what autograd really keeps.

For each family (tiny odd-shaped configs from tests/unit/test_families.py), fine-tune mode and dtype,
build the model with random weights, run one backbone forward under refplan's live-bytes tracker
and compare the bytes still live after it (activations saved for backward + the output) with
``refplan.activations``. Prints one row per case and the relative error.

    python bench/layer_inventory.py [--families llama,qwen2] [--dtypes fp32,bf16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))


def measure(config: dict, finetune: str, dtype: str, rows: int, seq: int, r: int = 8) -> tuple[int, int]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging

    from refplan import activations as act
    from refplan import forward_tensors as fwd
    from refplan.families import spec_from_config
    from refplan.harness.tracker import LiveBytes
    from refplan.methods import Finetune, Method, Strategy
    from refplan.spec import TrainSpec

    logging.set_verbosity_error()
    cfg = dict(config)
    if cfg["model_type"] == "gemma3":
        cfg = dict(cfg["text_config"])
    mt = cfg.pop("model_type")
    tdtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    torch.manual_seed(0)
    hf_cfg = AutoConfig.for_model(mt, **cfg)
    spec = spec_from_config(config, mt, "inventory")
    probe = TrainSpec(Method.ORPO, Strategy.NONE, dtype=dtype, device="cpu", padded=False)
    impl = "eager" if act.attention_impl(spec, probe) == "eager" else "sdpa"
    model = AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=impl, dtype=tdtype)
    model.train()
    for mod in model.modules():  # TRL disables dropout (disable_dropout_in_model)
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    if finetune == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=r, target_modules="all-linear", lora_dropout=0.0))
        backbone = model.get_base_model().base_model
    else:
        backbone = model.base_model
    ids = torch.randint(0, spec.vocab_size, (rows, seq))
    mask = torch.ones_like(ids)
    t = LiveBytes()
    t.register_module(model)
    with t:
        before = t.live
        out = backbone(input_ids=ids, attention_mask=mask, use_cache=False)
        measured = t.live - before
    del out
    train = TrainSpec(Method.ORPO, Strategy.NONE, finetune=Finetune(finetune), dtype=dtype, batch=rows // 2 or 1,
                      seq=seq, device="cpu", lora_r=r, padded=False)
    est = (act.decoder_saved_bytes(spec, train, rows) + fwd.embedding_saved_bytes(spec, train, rows)
           + fwd.final_norm_saved_bytes(spec, train, rows) + fwd.backbone_output_bytes(spec, train, rows)
           + fwd.rope_table_bytes(spec, train, rows) + fwd.mask_bytes(spec, train, rows)
           + fwd.outer_linears_saved_bytes(spec, train, rows))
    return measured, est


def main(argv=None) -> int:
    import test_families as tf

    p = argparse.ArgumentParser()
    p.add_argument("--families", default=",".join(tf.TINY))
    p.add_argument("--finetunes", default="full,lora")
    p.add_argument("--dtypes", default="fp32")
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--seq", type=int, default=24)
    a = p.parse_args(argv)
    worst = 0.0
    print(f"{'config':28s} {'ft':5s} {'dtype':5s} {'measured':>10s} {'planner':>10s} {'err%':>7s}")
    for name in a.families.split(","):
        for ft in a.finetunes.split(","):
            for dt in a.dtypes.split(","):
                try:
                    m, e = measure(tf.TINY[name], ft, dt, a.rows, a.seq)
                except Exception as exc:  # one family failing never hides the others
                    print(f"{name:28s} {ft:5s} {dt:5s} error: {type(exc).__name__}: {exc}"[:160])
                    continue
                err = 100.0 * (e - m) / m
                worst = max(worst, abs(err))
                print(f"{name:28s} {ft:5s} {dt:5s} {m:10d} {e:10d} {err:7.2f}")
    print(f"worst |error| {worst:.2f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
