"""Planner units: hand-derived terms, refused combinations, typed settings, the reference plan.

No torch here: the planner is pure arithmetic.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from refplan import activations as act
from refplan import backward, logprob
from refplan import terms
from refplan.errors import PlanError
from refplan.methods import Finetune, Method, Strategy, applicable_strategies, check_combination
from refplan.planner import estimate
from refplan.spec import TrainSpec

from conftest import spec



# ---------------------------------------------------------------- tier 1: hand-derived terms

def test_weight_bytes_hand_derived(tiny):
    # embed 1024*256 + lm_head 256*1024 + final norm 256
    # per layer: q 256*256, k 256*128, v 256*128, o 256*256, gate/up 256*688 x2, down 688*256, 2 norms 256
    per_layer = 256 * 256 * 2 + 256 * 128 * 2 + 3 * 256 * 688 + 2 * 256
    params = 2 * 1024 * 256 + 256 + 4 * per_layer
    assert tiny.params == params
    assert terms.weight_bytes(tiny, "fp32") == 4 * params
    assert terms.weight_bytes(tiny, "bf16") == 2 * params


def test_nf4_bytes_hand_derived(llama8b):
    # Llama-3.1-8B: per layer q 4096x4096, k/v 4096x1024, o 4096x4096, gate/up 4096x14336, down 14336x4096;
    # every one a multiple of 64 weights, so per linear: n/2 packed + n/64 absmax + 64 B code, and with
    # nested quantization n/64 uint8 + ceil(n/64/256) fp32 + 1024 B code + 4 B offset instead of n/64 fp32
    sizes = [4096 * 4096, 4096 * 1024, 4096 * 1024, 4096 * 4096] + [4096 * 14336] * 3
    q = 32 * sum(sizes)
    rest = llama8b.params - q
    plain = rest * 2 + 32 * sum(n // 2 + 4 * (n // 64) + 64 for n in sizes)
    nested = rest * 2 + 32 * sum(n // 2 + n // 64 + 4 * -(-(n // 64) // 256) + 64 + 1024 + 4 for n in sizes)
    assert terms.weight_bytes(llama8b, "bf16", "4bit") == plain
    assert terms.weight_bytes(llama8b, "bf16", "4bit", double_quant=True) == nested
    # QLoRA's 0.5 + 1/64 + 4/(64*256) bytes per weight, plus 1092 B of per-linear constants
    assert abs((nested - rest * 2) / q - (0.5 + 1 / 64 + 4 / (64 * 256))) < 1e-4


def test_lora_params_hand_derived(tiny):
    # r*(in+out) for q, k, v, o, gate, up, down in each of 4 layers
    r = 8
    per_layer = r * ((256 + 256) + (256 + 128) * 2 + (256 + 256) + (256 + 688) * 3)
    assert terms.lora_params(tiny, r) == 4 * per_layer
    assert terms.lora_params(tiny, r, "q_proj,v_proj") == 4 * r * ((256 + 256) + (256 + 128))


def test_adamw_state_is_two_moments_plus_steps(tiny):
    t = spec()
    n_tensors = 1 + 4 * (7 + 2) + 1 + 1  # embed, 4 x (7 linears + 2 norms), final norm, lm_head
    assert terms.optimizer_state_bytes(tiny, t) == 2 * 4 * tiny.params + 4 * n_tensors
    assert terms.optimizer_state_bytes(tiny, spec(optim="sgd")) == 0
    assert terms.optimizer_state_bytes(tiny, spec(optim="adamw-8bit")) < terms.optimizer_state_bytes(tiny, t) / 3


def test_gradients_match_trainable_dtype(tiny):
    assert terms.gradient_bytes(tiny, spec()) == 4 * tiny.params
    lora = spec(finetune=Finetune.LORA, strategy=Strategy.UNWRAP, lora_r=8, dtype="bf16")
    assert terms.gradient_bytes(tiny, lora) == 4 * terms.lora_params(tiny, 8)  # fp32 adapters


def test_layer_activations_hand_derived(tiny):
    # fp32 llama layer, per token: 6h + 2q + 2kv + heads (lse) + 2 (rsqrt) + 4i elements, 4 bytes each;
    # measured by saved_tensors_hooks on transformers 5.24 (4938 elements for h=256,i=688,q=256,kv=64)
    h, q, kv, i, heads = 256, 256, 128, 688, 4
    per_token = (6 * h + 2 * q + 2 * kv + heads + 2 + 4 * i) * 4
    assert act.layer_saved_bytes_per_token(tiny, tiny.layers[0], spec()) == per_token


def test_fused_head_backward_transient_hand_derived(tiny):
    t = spec()
    n = 4 * 127  # 2 pairs concatenated, seq-1 positions
    tile = n * 1024
    expected = n * 256 * 4 + n * 32768 * 4 + 1024 * 256 * 4 + 7 * tile * 4 + tile
    assert logprob.fused_head_backward_transient_bytes(tiny, t, 4) == expected


def test_checkpoint_recompute_locals_hand_derived(tiny):
    # LoRA on a bf16 base under autocast: the recompute stops at lora_B of down_proj with the
    # residual, the post-attention norm output and down's base output (3 x 2h), down's input (2i)
    # and PEFT's fp32 cast of it (4i) alive -- none of them saved
    h, i = 256, 688
    lora = spec(method=Method.ORPO, strategy=Strategy.NONE, finetune=Finetune.LORA, dtype="bf16", grad_ckpt=True)
    assert backward.recompute_locals_bytes_per_token(tiny, tiny.layers[0], lora) == 3 * 2 * h + 2 * i + 4 * i
    # fp32 LoRA: no casts; the peak is up_proj's output forming (base, B output, scaled: 3 x 4i),
    # before the saved up output (4i), the product (4i, kept by down's A) and A's output (4r) exist
    fp32 = spec(method=Method.ORPO, strategy=Strategy.NONE, finetune=Finetune.LORA, lora_r=8,
                grad_ckpt=True)
    assert backward.recompute_locals_bytes_per_token(tiny, tiny.layers[0], fp32) == 3 * 4 * i - 4 * i - 4 * i - 4 * 8
    # full fine-tune in fp32: every local is saved by its consumer
    full = spec(grad_ckpt=True)
    assert backward.recompute_locals_bytes_per_token(tiny, tiny.layers[0], full) == 0
    assert act.checkpoint_input_resaved_bytes_per_token(tiny, full) == 4 * h  # the norm keeps the input itself


def test_mlp_backward_gradients_hand_derived(tiny):
    i, h = 688, 256
    full = spec()
    # act(gate) * up backward: its incoming gradient and the two it returns
    assert backward.mlp_backward_grad_bytes_per_token(tiny, tiny.layers[0], full) == 3 * 4 * i
    assert backward.down_saved_bytes_per_token(tiny, tiny.layers[0], full) == 4 * i
    # LoRA on a fp32 base under bf16 autocast: PEFT's cast backward holds the fp32 and bf16 gradients
    # of down's input while the MLP output's bf16 gradient (cast by the residual add's backward) waits
    lora = spec(finetune=Finetune.LORA, strategy=Strategy.UNWRAP, autocast="bf16")
    assert backward.mlp_backward_grad_bytes_per_token(tiny, tiny.layers[0], lora) == i * (2 + 4) + 2 * h
    assert backward.rms_norm_backward_grad_bytes_per_token(tiny) == 5 * 4 * h


def test_backward_candidates_keep_the_peak(llama8b, tiny):
    from refplan.planner import _backward_moments, _Step
    from refplan.reference import reference_plan

    for model in (llama8b, tiny):
        lora = spec(finetune=Finetune.LORA, strategy=Strategy.UNWRAP, grad_ckpt=True, autocast="bf16")
        for t in (spec(), spec(grad_ckpt=True, dtype="bf16"), lora):
            step = _Step(model, t, reference_plan(t))
            every = [sum(p.values()) for _, p in _backward_moments(step)]
            some = [sum(p.values()) for _, p in _backward_moments(step, candidates_only=True)]
            assert max(some) == max(every) and len(some) < len(every)


def test_tiny_dpo_separate_matches_measured_run(tiny):
    # measured on this machine: DPOTrainer fp32 CPU, 2 pairs x 128 tokens, live tensor bytes, step 2:
    # 180,145,764 bytes + the reference's 1,048,576-byte embedding the scratch tracker missed
    est = estimate(tiny, spec())
    measured = 180_145_764 + 1_048_576
    assert est.peak_phase.name == "backward"
    assert abs(est.peak_bytes - measured) / measured < 0.01


# ---------------------------------------------------------------- combinations

def test_impossible_combinations_refused():
    with pytest.raises(PlanError, match="--strategy"):
        check_combination(Method.ORPO, Strategy.SEPARATE, Finetune.FULL)
    with pytest.raises(PlanError, match="sync"):
        check_combination(Method.DPO, Strategy.SYNC, Finetune.LORA)
    with pytest.raises(PlanError, match="LoRA"):
        check_combination(Method.DPO, Strategy.UNWRAP, Finetune.FULL)
    with pytest.raises(PlanError):
        check_combination(Method.DPO, Strategy.NONE, Finetune.FULL)
    with pytest.raises(PlanError, match="--ref-quant"):
        check_combination(Method.DPO, Strategy.UNWRAP, Finetune.LORA, "4bit")
    assert applicable_strategies(Method.SIMPO, Finetune.LORA) == [Strategy.NONE]
    assert Strategy.SYNC not in applicable_strategies(Method.KTO, Finetune.QLORA)


def test_trainspec_validation_names_flags():
    for kw, flag in (({"batch": 0}, "--batch"), ({"seq": -1}, "--seq"), ({"dtype": "fp8"}, "--dtype"),
                     ({"zero": 4}, "--zero"), ({"seq": 10**9}, "--seq"), ({"optim": "lion"}, "--optim")):
        with pytest.raises(PlanError) as e:
            spec(**kw)
        assert e.value.where == flag




def test_unknown_lora_target_is_exit_2_naming_the_flag_and_the_linears():
    r = subprocess.run([sys.executable, "-m", "refplan", "estimate", "--model", "gpt2", "--finetune", "lora",
                        "--lora-targets", "q_proj,c_attn"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    line = r.stderr.strip()
    assert "\n" not in line and "--lora-targets" in line and "'q_proj'" in line
    assert "c_attn" in line and "c_fc" in line  # the model's own linear names


def test_reference_plan_follows_strategy_capabilities():
    from refplan.reference import RefKind, reference_plan

    sep = reference_plan(spec(strategy=Strategy.SEPARATE, ref_dtype="bf16"))
    assert sep.kind is RefKind.FULL_COPY and sep.holds_copy and sep.own_model and sep.forward_per_step
    assert not sep.precompute_pass and not sep.sync
    same = reference_plan(spec(strategy=Strategy.SEPARATE))
    assert not same.own_model  # TRL reloads it from config._name_or_path
    assert reference_plan(spec(strategy=Strategy.SYNC)).sync
    pre = reference_plan(spec(strategy=Strategy.PRECOMPUTE))
    assert pre.kind is RefKind.PRECOMPUTED and pre.precompute_pass and not pre.forward_per_step
    unwrap = reference_plan(spec(strategy=Strategy.UNWRAP, finetune=Finetune.LORA))
    assert unwrap.kind is RefKind.ADAPTERS_OFF and not unwrap.holds_copy
    assert reference_plan(spec(strategy=Strategy.REF_ADAPTER, finetune=Finetune.LORA)).wrap_policy_before_trainer
    none = reference_plan(spec(method=Method.ORPO, strategy=Strategy.NONE))
    assert none.kind is RefKind.NONE and not none.forward_per_step
    sharded = reference_plan(TrainSpec.parse(method=Method.DPO, strategy=Strategy.SEPARATE, gpus=4, zero=3))
    assert sharded.sharded and not reference_plan(TrainSpec.parse(method=Method.DPO, strategy=Strategy.SEPARATE,
                                                                  gpus=4, zero=2)).sharded


def test_settings_parse_once_into_enums():
    from refplan.settings import Dtype, Optim, Sharding, StateRule

    t = TrainSpec.parse(method="dpo", strategy="separate", dtype="bfloat16", optim="adamw_torch_fused", gpus=2, zero=3,
                        lora_targets="q_proj, v_proj")
    assert t.dtype is Dtype.BF16 and t.optim is Optim.ADAMW and t.sharding is Sharding.ZERO3
    assert t.lora_targets == ("q_proj", "v_proj") and t.optim.caps.state is StateRule.ADAM
    assert Optim.ADAMW_8BIT.caps.trainer_name == "adamw_bnb_8bit"
    with pytest.raises(PlanError) as e:
        TrainSpec.parse(method="dpo", strategy="separate", zero=2, fsdp=True)
    assert e.value.where == "--fsdp"


def test_cpu_offload_removes_what_leaves_the_gpu(llama8b):
    def run(offload, zero=3):
        return estimate(llama8b, TrainSpec.parse(method=Method.DPO, strategy=Strategy.SEPARATE, gpus=4, zero=zero,
                                                 offload=offload, grad_ckpt=True))
    none, opt, params = run("none"), run("optimizer"), run("all")
    assert opt.peak_bytes < none.peak_bytes and params.peak_bytes < opt.peak_bytes
    comps = {p.name: dict(p.components) for p in opt.phases}["optimizer step"]
    assert "optimizer state" not in comps and "master weights" not in comps and "gradients" not in comps
    comps = {p.name: dict(p.components) for p in params.phases}["backward"]
    assert "policy weights" not in comps and "reference weights" not in comps and comps["gathered params"] > 0
    assert run("params").peak_bytes < none.peak_bytes
    with pytest.raises(PlanError) as e:
        run("params", zero=2)
    assert e.value.where == "--offload"
    with pytest.raises(PlanError):
        TrainSpec.parse(method=Method.DPO, strategy=Strategy.SEPARATE, offload="optimizer")


def test_zero3_lora_adapters_keep_the_base_dtype(llama8b):
    # TRL 1.16 dpo_trainer.py: autocast_adapter_dtype=False under ZeRO-3 with a non-quantized base
    z3 = TrainSpec.parse(method=Method.DPO, strategy=Strategy.UNWRAP, finetune="lora", gpus=2, zero=3)
    z2 = TrainSpec.parse(method=Method.DPO, strategy=Strategy.UNWRAP, finetune="lora", gpus=2, zero=2)
    assert terms.lora_weight_bytes(llama8b, z3) * 2 == terms.lora_weight_bytes(llama8b, z2)


def test_nf4_without_double_quant_keeps_fp32_absmax(llama8b):
    dq = terms.weight_bytes(llama8b, "bf16", "4bit", double_quant=True)
    plain = terms.weight_bytes(llama8b, "bf16", "4bit", double_quant=False)
    sizes = [4096 * 4096, 4096 * 1024, 4096 * 1024, 4096 * 4096] + [4096 * 14336] * 3
    # per linear: 3 bytes more per block, less the nested state (its fp32 absmax, 1 KiB code, offset)
    assert plain - dq == 32 * sum(3 * (n // 64) - 4 * -(-(n // 64) // 256) - 1024 - 4 for n in sizes)