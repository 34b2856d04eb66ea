"""k-bit inventory: what bitsandbytes' linears store and allocate, measured, against refplan/quant.py.

Two parts, both under refplan's live-bytes tracker (which runs bitsandbytes' custom ops with the tracker
still active, so the temporaries inside their kernels count):

- ``layers``: one ``Linear4bit`` (nf4/fp4, double quantization on/off, fp32/bf16 compute) or
  ``Linear8bitLt`` at a time: its storage; the training forward's and backward's extra bytes; a forward
  without grad in train mode (an unwrapped QLoRA reference) and in eval mode (a k-bit reference: on an
  AVX512-BF16 CPU its first call repacks the weight, later calls run the bf16 kernel) -- each with the
  aten/bitsandbytes op that held the peak.
- ``optimizers``: bitsandbytes' 8-bit and paged 32-bit AdamW on CPU (bitsandbytes 0.50 has CPU kernels for
  both; paged memory falls back to plain memory there): state and step temporaries of one tensor.
- ``models``: a small Llama-shaped model loaded k-bit with ``BitsAndBytesConfig``, wrapped with LoRA the
  way TRL's DPOTrainer leaves it (adapters cast to bf16 on a k-bit base): the bytes its backbone forward
  saves for backward against ``refplan.activations``, and its weights against ``refplan.terms``.

    python bench/quant_inventory.py [--part layers|models|all] [--tokens 256]

Prints one row per case: measured, planner, difference. Exact terms read 0; rows marked "(bound)" are
where the planner's moment is an upper bound (see ``refplan.quant.backward_transient_bytes``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _quiet():
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")


class _PeakOp:
    """A LiveBytes that remembers which op (with the bitsandbytes op around it) made the peak."""

    def __new__(cls):
        from refplan.harness.tracker import LiveBytes

        class Tracker(LiveBytes):
            def __init__(self):
                super().__init__()
                self.op = ""
                self._stack: list[str] = []

            def add_storage(self, storage):
                before = self.peak
                super().add_storage(storage)
                if self.peak > before:
                    self.op = " > ".join(self._stack[-2:])

            def reset_peak(self):
                super().reset_peak()
                self.op = ""

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                self._stack.append(f"{func.namespace}.{func.overloadpacket.__name__}")
                try:
                    return super().__torch_dispatch__(func, types, args, kwargs)
                finally:
                    self._stack.pop()

        return Tracker()


def _layer(kind: str, out_f: int, in_f: int, double_quant: bool, compute, quant_type: str = "nf4"):
    import bitsandbytes as bnb
    import torch

    if kind == "8bit":
        return bnb.nn.Linear8bitLt(in_f, out_f, bias=False, has_fp16_weights=False, threshold=6.0).to("cpu")
    layer = bnb.nn.Linear4bit(in_f, out_f, bias=False, compute_dtype=compute, compress_statistics=double_quant,
                              quant_type=quant_type)
    layer.weight.data = torch.randn(out_f, in_f) * 0.02
    return layer.to("cpu")


def layers(tokens: int, out_f: int, in_f: int) -> int:
    import torch

    from refplan import quant
    from refplan.harness.tracker import module_state_bytes
    from refplan.model import Linear, Role
    from refplan.settings import Device, Dtype, Quant

    dt = {Dtype.FP32: torch.float32, Dtype.BF16: torch.bfloat16}
    lin = Linear("proj", Role.MLP_UP, in_f, out_f)
    n = in_f * out_f
    _layer("4bit", 64, 64, True, torch.float32)  # bitsandbytes' cached dynamic map: once per process
    bad = 0
    print(f"one linear [{out_f} x {in_f}], {tokens} tokens, fp32 input (bitsandbytes CPU backend)")
    print(f"{'layer':28s} {'what':26s} {'measured':>10s} {'planner':>10s} {'diff':>8s}  peak op")
    cases = [("4bit", qt, dq, c) for qt in ("nf4", "fp4") for dq in (False, True) for c in (Dtype.FP32, Dtype.BF16)]
    cases.append(("8bit", "", False, Dtype.FP32))

    def row(name, what, measured, planned, op="", bound=False):
        """A row differs when the planner misses a byte -- or, for an exact term, adds one."""
        nonlocal bad
        bad += measured > planned or (measured != planned and not bound)
        print(f"{name:28s} {what:26s} {measured:10d} {planned:10d} {measured - planned:8d}  {op}")

    for kind, qt, dq, c in cases:
        q = Quant.NF4 if kind == "4bit" else Quant.INT8
        name = f"{kind} {qt} dq={int(dq)} compute={c.value}" if kind == "4bit" else "8bit (LLM.int8, t=6.0)"
        # storage + training forward/backward
        t = _PeakOp()
        with t:
            layer = _layer(kind, out_f, in_f, dq, dt[c], qt or "nf4")
            store = quant.linear4bit_bytes(n, dq) if kind == "4bit" else quant.linear8bit_bytes(lin)
            row(name, "storage", module_state_bytes(layer), store)
            layer.train()
            x = torch.randn(tokens, in_f, requires_grad=True)
            y = layer(x)
            g = torch.ones_like(y)
            t.reset_peak()
            base = t.live
            y.backward(g)
            # beyond the incoming gradient (already live); the planner's layer moment puts the k-bit dequant
            # on top of the outgoing gradient too, and with a 16-bit compute dtype the incoming gradient's
            # cast to it (Linear4bit.forward's casts are ordinary autograd ops): a bound there
            measured = t.peak - base
            cast_in = tokens * out_f * 2 if kind == "4bit" and c is not Dtype.FP32 else 0
            row(name, "backward peak" + (" (bound)" if cast_in else ""), measured,
                cast_in + tokens * in_f * 4 + quant.backward_transient_bytes(lin, q, Dtype.FP32, c),
                t.op, bound=bool(cast_in))
            del y, g
            # no grad, train mode (the reference forward of an unwrapped QLoRA policy)
            with torch.no_grad():
                t.reset_peak()
                base = t.live
                y = layer(x)
                measured = t.peak - base - tokens * out_f * 4
            del y
            row(name, "no-grad forward, train", measured,
                quant.no_grad_forward_transient_bytes(lin, tokens, q, dq, Dtype.FP32, c, Device.CPU, False, False),
                t.op)
            # eval mode without grad (a k-bit reference): first call repacks a 4-bit weight on AVX512-BF16
            layer.eval()
            xe = x.detach()
            with torch.no_grad():
                t.reset_peak()
                base = t.live
                y = layer(xe)
                first = t.peak - base
                first_op = t.op
                del y
                t.reset_peak()
                base = t.live
                y = layer(xe)
                measured = t.peak - base - tokens * out_f * 4
                del y
            packed = kind == "4bit" and getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
            if kind == "4bit" and packed:
                # the repack's 7n, unless the first bf16 matmul after it (new storage, its casts, the output) is more
                after = (quant.linear4bit_cpu_packed_bytes(n, dq) - quant.linear4bit_bytes(n, dq) + tokens * out_f * 4
                         + quant.no_grad_forward_transient_bytes(lin, tokens, q, dq, Dtype.FP32, c, Device.CPU, True,
                                                                 True))
                row(name, "eval: first call (repack)", first, max(quant.cpu_repack_transient_bytes(n), after),
                    first_op)
            if kind == "4bit":
                row(name, "eval: storage after", module_state_bytes(layer),
                    quant.linear4bit_cpu_packed_bytes(n, dq) if packed else quant.linear4bit_bytes(n, dq))
            row(name, "eval: no-grad forward", measured,
                quant.no_grad_forward_transient_bytes(lin, tokens, q, dq, Dtype.FP32, c, Device.CPU, True, packed),
                t.op)
    return bad


def models(tokens: int) -> int:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig

    from refplan import activations as act
    from refplan import terms
    from refplan.families import spec_from_config
    from refplan.harness.tracker import LiveBytes, module_state_bytes, register_loaded_models
    from refplan.methods import Finetune, Method, Strategy
    from refplan.spec import TrainSpec

    cfg = dict(hidden_size=128, intermediate_size=320, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=32, vocab_size=512, max_position_embeddings=512)
    bad = 0
    rows, seq = 2, tokens // 2
    print(f"\nLlama-shaped {cfg['num_hidden_layers']} layers, h {cfg['hidden_size']}, i "
          f"{cfg['intermediate_size']}: LoRA r8 all-linear, adapters bf16 (DPOTrainer on a k-bit base), "
          f"{rows} x {seq} tokens")
    print(f"{'model':30s} {'what':22s} {'measured':>10s} {'planner':>10s} {'diff':>6s}")
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(LlamaConfig(**cfg), dtype=torch.float32).save_pretrained(d)
        spec = spec_from_config({"model_type": "llama", **cfg}, "inventory", "bench")
        for bits, dq, compute in ((4, False, "fp32"), (4, True, "bf16"), (8, False, "fp32")):
            train = TrainSpec(Method.DPO, Strategy.UNWRAP, finetune=Finetune.QLORA, dtype="fp32", device="cpu",
                              batch=1, seq=seq, lora_r=8, padded=False, quant_bits=bits, double_quant=dq,
                              quant_compute_dtype=None if compute == "fp32" else compute)
            qc = (BitsAndBytesConfig(load_in_8bit=True) if bits == 8 else
                  BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=dq,
                                     bnb_4bit_compute_dtype=getattr(torch, {"fp32": "float32",
                                                                            "bf16": "bfloat16"}[compute])))
            name = f"{bits}-bit dq={int(dq)} compute={compute}"
            t = LiveBytes()
            with t, register_loaded_models(t):
                model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, quantization_config=qc)
                model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.0))
                for p in model.parameters():
                    if p.requires_grad:  # dpo_trainer.py ~726
                        p.data = p.data.to(torch.bfloat16)
                model.train()
                base_model = model.get_base_model()
                # the weights (parameters and k-bit state; not RoPE's inv_freq buffers, which no term counts)
                lora = terms.lora_weight_bytes(spec, train)
                buffers = sum(b.untyped_storage().nbytes() for b in model.buffers())
                measured_w = module_state_bytes(model) - lora - buffers
                ids = torch.randint(0, cfg["vocab_size"], (rows, seq))
                before = t.live
                out = base_model.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
                measured = t.live - before
                del out
            planned = (act.decoder_saved_bytes(spec, train, rows) + act.embedding_saved_bytes(spec, train, rows)
                       + act.final_norm_saved_bytes(spec, train, rows) + act.backbone_output_bytes(spec, train, rows)
                       + act.rope_table_bytes(spec, train, rows) + act.mask_bytes(spec, train, rows))
            for what, m, p in (("weights", measured_w, terms.policy_weight_bytes(spec, train)),
                               ("saved by the forward", measured, planned)):
                bad += m != p
                print(f"{name:30s} {what:22s} {m:10d} {p:10d} {m - p:6d}")
    return bad


def optimizers() -> int:
    """bitsandbytes' AdamW8bit and PagedAdamW32bit on CPU: the state and the step temporaries of one tensor
    (the second step on: the states exist), against ``terms.bnb8_state_bytes`` / 8 bytes per element
    and ``terms.bnb_cpu_step_bytes``."""
    import bitsandbytes as bnb
    import torch

    from refplan import terms
    from refplan.harness.tracker import LiveBytes

    bad = 0
    print("\nbitsandbytes optimizers on CPU, one parameter tensor")
    print(f"{'optimizer':14s} {'param':16s} {'what':10s} {'measured':>10s} {'planner':>10s} {'diff':>6s}")
    for optim, cls in (("adamw-8bit", bnb.optim.AdamW8bit), ("paged-adamw", bnb.optim.PagedAdamW32bit)):
        for dt, dname in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            for rows in (8, 256):  # 2048 elements (under min_8bit_size) and 65536
                t = LiveBytes()
                with t:
                    p = torch.nn.Parameter(torch.randn(rows, 256, dtype=dt))
                    opt = cls([p], lr=1e-3)
                    for step in range(3):
                        p.grad = torch.randn_like(p)
                        t.reset_peak()
                        base = t.live
                        opt.step()
                        transient = t.peak - t.live
                        if step == 0:
                            state = t.live - base
                        p.grad = None
                n = rows * 256
                planned_state = terms.bnb8_state_bytes(n) if optim == "adamw-8bit" else 8 * n
                planned_step = terms.bnb_cpu_step_bytes(n, optim == "adamw-8bit", dname == "fp32")
                for what, m, pl in (("state", state, planned_state), ("step", transient, planned_step)):
                    bad += m != pl
                    print(f"{optim:14s} {dname + ' x ' + str(n):16s} {what:10s} {m:10d} {pl:10d} {m - pl:6d}")
    return bad


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", default="all", choices=("layers", "models", "optimizers", "all"))
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--out-features", type=int, default=1024)
    p.add_argument("--in-features", type=int, default=384)
    a = p.parse_args(argv)
    _quiet()
    bad = 0
    if a.part in ("layers", "all"):
        bad += layers(a.tokens, a.out_features, a.in_features)
    if a.part in ("models", "all"):
        bad += models(a.tokens)
    if a.part in ("optimizers", "all"):
        bad += optimizers()
    print(f"\n{bad} row(s) differ")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
