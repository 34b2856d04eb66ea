"""Activation inventory: the planner's saved-activation bytes vs what autograd really keeps.

For each family (tiny odd-shaped configs from tests/unit/test_families.py), fine-tune mode and
precision mode, build the model with random weights, run one backbone forward under refplan's
live-bytes tracker and compare the bytes still live after it (activations saved for backward + the
output) with ``refplan.activations``. Prints one row per case and the relative error.

Each mode reproduces what TRL's Trainer does with its precision settings (the Trainer's ``bf16=True``
is accelerate's ``torch.autocast(device_type, dtype=torch.bfloat16)`` around the model's forward,
accelerate/utils/modeling.py ``get_mixed_precision_context_manager``):

- ``fp32``: fp32 weights, ``bf16=False`` (no autocast)
- ``bf16``: bf16 weights, ``bf16=True`` (TRL's default: bf16 autocast over bf16 weights)
- ``fp32-autocast``: fp32 weights, ``bf16=True`` (TRL's CLI default: the model loads in fp32)
- ``bf16-noautocast``: bf16 weights, ``bf16=False`` (no autocast; TrainSpec ``autocast="none"``)

MoE expert widths are rounded up to a multiple of 8 elements (16 bytes in bf16), as the real bursts'
shapes are (refplan/validate_shapes.py draws ``moe_intermediate_size`` from 16, 24, 40, 64): the CPU
and CUDA ``grouped_mm`` kernels transformers runs the experts with refuse row strides that are not a
multiple of 16 bytes ("strides should be multiple of 16 bytes"). Rows so changed are marked ``*``.

    python bench/layer_inventory.py [--families llama,qwen2] [--modes fp32,bf16,fp32-autocast]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

#: mode -> (weights' dtype, autocast dtype or None, TrainSpec precision fields)
MODES = {
    "fp32": ("fp32", None, dict(dtype="fp32")),
    "bf16": ("bf16", "bf16", dict(dtype="bf16")),
    "fp32-autocast": ("fp32", "bf16", dict(dtype="fp32", autocast="bf16")),
    "bf16-noautocast": ("bf16", None, dict(dtype="bf16", autocast="none")),
}

#: the config key holding the routed experts' width, per MoE model type
_EXPERT_WIDTH = {"mixtral": "intermediate_size", "qwen2_moe": "moe_intermediate_size",
                 "qwen3_moe": "moe_intermediate_size", "deepseek_v2": "moe_intermediate_size"}


def aligned(config: dict) -> tuple[dict, bool]:
    """The config with its routed experts' width rounded up to a multiple of 8 (see the module doc);
    True when it changed."""
    key = _EXPERT_WIDTH.get(config["model_type"])
    if key is None or key not in config or config[key] % 8 == 0:
        return config, False
    return {**config, key: -(-config[key] // 8) * 8}, True


def _model(config: dict, finetune: str, weights: str, impl: str, r: int):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    if cfg["model_type"] == "gemma3":
        cfg = dict(cfg["text_config"])
    mt = cfg.pop("model_type")
    torch.manual_seed(0)
    tdtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[weights]
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(mt, **cfg), attn_implementation=impl,
                                             dtype=tdtype)
    model.train()
    for mod in model.modules():  # TRL disables dropout (disable_dropout_in_model)
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    if finetune != "lora":
        return model, model.base_model
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=r, target_modules="all-linear", lora_dropout=0.0))
    return model, model.get_base_model().base_model


def estimate(spec, train, rows: int) -> int:
    from refplan import activations as act
    from refplan import forward_tensors as fwd

    return (act.decoder_saved_bytes(spec, train, rows) + fwd.embedding_saved_bytes(spec, train, rows)
            + fwd.final_norm_saved_bytes(spec, train, rows) + fwd.backbone_output_bytes(spec, train, rows)
            + fwd.rope_table_bytes(spec, train, rows) + fwd.mask_bytes(spec, train, rows)
            + fwd.outer_linears_saved_bytes(spec, train, rows))


def measure(config: dict, finetune: str, mode: str, rows: int, seq: int, r: int = 8) -> tuple[int, int]:
    import torch
    from transformers.utils import logging

    from refplan import activations as act
    from refplan.families import spec_from_config
    from refplan.harness.tracker import LiveBytes
    from refplan.methods import Finetune, Method, Strategy
    from refplan.spec import TrainSpec

    logging.set_verbosity_error()
    weights, autocast, precision = MODES[mode]
    spec = spec_from_config(config, config["model_type"], "inventory")
    train = TrainSpec(Method.ORPO, Strategy.NONE, finetune=Finetune(finetune), batch=rows // 2 or 1, seq=seq,
                      device="cpu", lora_r=r, padded=False, **precision)
    impl = "eager" if act.attention_impl(spec, train) == "eager" else "sdpa"
    model, backbone = _model(config, finetune, weights, impl, r)
    amp = (torch.autocast("cpu", dtype=torch.bfloat16) if autocast == "bf16" else contextlib.nullcontext())
    t = LiveBytes()
    t.register_module(model)
    with t:
        # the ids are made inside the count and dropped after: they stay counted only when the
        # forward keeps them (a trainable embedding saves its indices for backward)
        before = t.live
        ids = torch.randint(0, spec.vocab_size, (rows, seq))
        mask = torch.ones_like(ids)
        with amp:
            out = backbone(input_ids=ids, attention_mask=mask, use_cache=False)
        del ids, mask
        measured = t.live - before
    del out
    return measured, estimate(spec, train, rows)


def main(argv=None) -> int:
    import test_families as tf

    p = argparse.ArgumentParser()
    p.add_argument("--families", default=",".join(tf.TINY))
    p.add_argument("--finetunes", default="full,lora")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--seq", type=int, default=24)
    a = p.parse_args(argv)
    modes = a.modes.split(",")
    worst = {m: 0.0 for m in modes}
    print(f"{'config':29s} {'ft':5s} {'mode':13s} {'measured':>10s} {'planner':>10s} {'err%':>7s}")
    for name in a.families.split(","):
        config, changed = aligned(tf.TINY[name])
        label = name + ("*" if changed else "")
        for ft in a.finetunes.split(","):
            for mode in modes:
                try:
                    m, e = measure(config, ft, mode, a.rows, a.seq)
                except Exception as exc:  # one family failing never hides the others
                    print(f"{label:29s} {ft:5s} {mode:13s} error: {type(exc).__name__}: {exc}"[:160])
                    worst[mode] = float("inf")
                    continue
                err = 100.0 * (e - m) / m
                worst[mode] = max(worst[mode], abs(err))
                print(f"{label:29s} {ft:5s} {mode:13s} {m:10d} {e:10d} {err:7.2f}")
    for mode, w in worst.items():
        print(f"worst |error| {mode}: {w:.2f} %")
    print("* expert width rounded up to a multiple of 8 (grouped_mm's 16-byte strides)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
