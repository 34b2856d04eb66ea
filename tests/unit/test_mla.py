"""refplan.mla: DeepSeek-V2's own terms, hand-derived on the tiny q-lora config (h 72, 6 heads, q/k head dim
10, v head dim 5, 3 routed experts, top-2; measured tensor by tensor with bench/layer_inventory.py)."""

from __future__ import annotations

from test_families import TINY

from refplan import activations as act
from refplan import backward
from refplan.act_dtypes import FP32
from refplan.families import spec_from_config
from refplan.methods import Finetune, Method, Strategy
from refplan.mla import (
    mla_attention_saved,
    routed_grads_bytes,
    router_input_bytes,
    router_weight_cast_bytes,
)
from refplan.model import Input
from refplan.spec import TrainSpec

DS = spec_from_config(TINY["deepseek_v2-q-lora"], "deepseek_v2-q-lora", "test")


def _train(ft: str = "full", device: str = "cpu", **precision) -> TrainSpec:
    return TrainSpec(Method.ORPO, Strategy.NONE, finetune=Finetune(ft), batch=1, seq=24, device=device,
                     lora_r=8, padded=False, **precision)


def test_cpu_math_kernel_keeps_fp32_in_every_mode():
    # scaled q and k (60 each), the v copy (30) and the softmax (6 heads x 24) in fp32, + o_proj's input
    for precision in ({"dtype": "fp32"}, {"dtype": "bf16"}, {"dtype": "bf16", "autocast": "none"},
                      {"dtype": "fp32", "autocast": "bf16"}):
        train = _train(**precision)
        m = act.act_mode(train)
        assert mla_attention_saved(DS, train, m, "sdpa", 30 * m.a, False) == (2 * 60 + 30 + 6 * 24) * FP32 + 30 * m.a
    cuda = _train(device="cuda", dtype="bf16")  # CUDA: the flash form, in the compute dtype
    assert mla_attention_saved(DS, cuda, act.act_mode(cuda), "sdpa", 60, False) == (2 * 60 + 6 * 11 + 30) * 2 + 4 * 6 + 60


def test_fp32_router_input_weight_and_routed_grads():
    none, bf16, f32ac = (_train(dtype="bf16", autocast="none"), _train(dtype="bf16"),
                         _train(dtype="fp32", autocast="bf16"))
    moe_layer = DS.layers[1]
    assert router_input_bytes(DS, Input.ROUTER_IN, act.act_mode(none)) == FP32  # .type(float32), kept
    assert router_input_bytes(DS, Input.ROUTER_IN, act.act_mode(bf16)) == 2  # autocast casts it back
    assert router_input_bytes(DS, Input.MLP_IN, act.act_mode(none)) == 2
    assert router_weight_cast_bytes(DS, moe_layer, bf16, act.act_mode(bf16)) == 3 * 72 * 2  # [E, h] bf16
    assert router_weight_cast_bytes(DS, moe_layer, none, act.act_mode(none)) == 0
    assert router_weight_cast_bytes(DS, DS.layers[0], bf16, act.act_mode(bf16)) == 0  # dense layer
    # fp32 routing weights: three fp32 [k x tokens, h] gradients + the cast back to bf16
    assert routed_grads_bytes(DS, moe_layer, act.act_mode(none)) == 3 * 2 * 72 * 4 + 2 * 72 * 2
    assert backward.moe_backward_grad_bytes_per_token(DS, moe_layer, none) == 3 * 2 * 72 * 4 + 2 * 72 * 2
    assert routed_grads_bytes(DS, moe_layer, act.act_mode(f32ac)) == 0  # fp32 experts: the generic term
