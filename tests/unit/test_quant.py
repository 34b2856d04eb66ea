"""The k-bit terms (refplan/quant.py and their use in terms / activations), hand-derived.

Every expected value below is written out from bitsandbytes 0.50's code (the docstrings of refplan.quant
cite it); bench/quant_inventory.py measures the same quantities on single layers.
"""

from __future__ import annotations

import pytest

from refplan import activations as act
from refplan import quant, terms
from refplan.families import spec_from_config
from refplan.methods import Method, Strategy
from refplan.model import Linear, Role
from refplan.settings import Device, Dtype, Quant
from refplan.spec import TrainSpec

#: hidden 64, MLP 128, 4 heads of 16, 2 KV heads, 2 layers, vocab 512, untied
MICRO = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": False}
#: q 64x64, k 32x64, v 32x64, o 64x64, gate/up 128x64, down 64x128 (out x in), per layer
LINEARS = [64 * 64, 32 * 64, 32 * 64, 64 * 64, 128 * 64, 128 * 64, 64 * 128]


@pytest.fixture(scope="module")
def micro():
    return spec_from_config(dict(MICRO), "micro", "test")


def qlora(**kw) -> TrainSpec:
    base = dict(method=Method.DPO, strategy=Strategy.UNWRAP, finetune="qlora", dtype="fp32", device="cpu",
                batch=2, seq=32, lora_r=4, padded=False)
    return TrainSpec(**{**base, **kw})


def lin(out_f: int, in_f: int) -> Linear:
    return Linear("proj", Role.MLP_UP, in_f, out_f)


# -- storage ---------------------------------------------------------------------------------------

def test_linear4bit_bytes_per_block():
    # 96 x 160 = 15360 weights = 240 blocks of 64: 7680 packed bytes + 64 B code
    assert quant.linear4bit_bytes(15360, double_quant=False) == 7680 + 240 * 4 + 64
    # nested: 240 uint8 absmax + one fp32 per 256 blocks (1) + 1 KiB code + 4 B offset
    assert quant.linear4bit_bytes(15360, double_quant=True) == 7680 + 240 + 4 + 1024 + 4 + 64
    # an odd weight count pads one code; a partial last block still has an absmax
    assert quant.linear4bit_bytes(65, double_quant=False) == 33 + 2 * 4 + 64


def test_cpu_repack_stores_a_bf16_absmax():
    # _convert_weight_packed_for_cpu: same packed bytes, absmax as bf16 (2 B/block), nested state dropped
    assert quant.linear4bit_cpu_packed_bytes(15360, double_quant=False) == 7680 + 240 * 2 + 64
    assert quant.linear4bit_cpu_packed_bytes(15360, double_quant=True) == 7680 + 240 * 2 + 64 + 4


def test_linear8bit_bytes():
    assert quant.linear8bit_bytes(lin(96, 160)) == 96 * 160 + 96 * 4


def test_what_transformers_quantizes(micro):
    # every decoder nn.Linear; the embeddings, norms and LM head stay in the load dtype
    assert sorted(l.in_features * l.out_features for l in quant.quantized_linears(micro)) == sorted(LINEARS * 2)
    rest = micro.params - 2 * sum(LINEARS)
    assert terms.weight_bytes(micro, "fp32", "4bit") == rest * 4 + 2 * sum(n // 2 + n // 64 * 4 + 64 for n in LINEARS)
    assert terms.weight_bytes(micro, "bf16", "8bit") == rest * 2 + 2 * (sum(LINEARS) + 4 * (64 + 32 + 32 + 64 + 128
                                                                                             + 128 + 64))


def test_micro_fits_the_cpu_kernel_and_an_odd_shape_does_not(micro):
    assert quant.cpu_repacks(micro)
    odd = spec_from_config({**MICRO, "intermediate_size": 100}, "odd", "test")
    assert not quant.cpu_repacks(odd)


def test_policy_weights_follow_quant_settings(micro):
    rest = micro.params - 2 * sum(LINEARS)
    plain = 2 * sum(n // 2 + n // 64 * 4 + 64 for n in LINEARS)
    assert terms.policy_weight_bytes(micro, qlora()) == rest * 4 + plain
    # TRL's precompute runs the policy in eval mode without grad: on CPU bitsandbytes repacks it
    repacked = 2 * sum(n // 2 + n // 64 * 2 + 64 for n in LINEARS)
    assert terms.policy_weight_bytes(micro, qlora(strategy=Strategy.PRECOMPUTE)) == rest * 4 + repacked
    assert terms.policy_weight_bytes(micro, qlora(strategy=Strategy.PRECOMPUTE, device="cuda")) == rest * 4 + plain
    # prepare_model_for_kbit_training casts every 16-bit parameter that is not a Params4bit to fp32
    bf16 = qlora(dtype="bf16", device="cuda")
    assert terms.policy_weight_bytes(micro, bf16) == rest * 2 + plain
    assert terms.policy_weight_bytes(micro, qlora(dtype="bf16", device="cuda", prepare_kbit=True)) == rest * 4 + plain


# -- adapters --------------------------------------------------------------------------------------

def test_qlora_adapters_are_bf16_under_dpo_and_kto_only(micro):
    lora = 2 * 4 * sum(i + o for o, i in ((64, 64), (32, 64), (32, 64), (64, 64), (128, 64), (128, 64), (64, 128)))
    assert terms.lora_params(micro, 4) == lora
    # dpo_trainer.py ~726: trainable parameters of a k-bit model cast to bf16
    assert terms.lora_weight_bytes(micro, qlora()) == lora * 2
    assert terms.gradient_bytes(micro, qlora()) == lora * 2
    assert terms.lora_weight_bytes(micro, qlora(method=Method.ORPO, strategy=Strategy.NONE)) == lora * 4
    # the frozen "ref" adapter is not trainable: PEFT's fp32
    assert terms.reference_weight_bytes(micro, qlora(strategy=Strategy.REF_ADAPTER)) == lora * 4


# -- activations -----------------------------------------------------------------------------------

def test_bf16_adapters_keep_their_own_input_casts(micro):
    # fp32 activations, bf16 adapters: each wrapped linear's LoRA A keeps a bf16 copy of its input and
    # LoRA B A's bf16 output; o_proj's input is then kept by nobody else
    layer = micro.layers[1]
    fp32 = act._linear_inputs_saved(micro, layer, qlora(method=Method.ORPO, strategy=Strategy.NONE),
                                    act.act_mode(qlora(method=Method.ORPO, strategy=Strategy.NONE)))
    bf16 = act._linear_inputs_saved(micro, layer, qlora(), act.act_mode(qlora()))
    r = 4
    # fp32 adapters share the norm outputs (2 x 64 wide) and the MLP hidden (128); o_proj's input is SDPA's
    assert fp32 == 4 * (64 + 64 + 128) + 4 * r * 7
    # bf16: 3 casts of the attention input, o_proj's, 2 of the MLP input, down's: (width + r) x 2 B each
    assert bf16 == 2 * (3 * (64 + r) + (64 + r) + 2 * (64 + r) + (128 + r))


def test_8bit_base_keeps_its_inputs_even_under_checkpointing(micro):
    ckpt = qlora(quant_bits=8, grad_ckpt=True)
    per_token = act.checkpoint_saved_bytes_per_token(micro, ckpt)
    # MatMul8bitFp: ctx.A = A is not save_for_backward, so checkpointing cannot drop it: the attention
    # input, o_proj's input, the MLP input and the MLP hidden state, fp32
    kept = 4 * (64 + 64 + 64 + 128)
    assert act.kbit_ctx_inputs_bytes_per_token(micro, micro.layers[0], ckpt) == kept
    tokens = 2 * 2 * 32
    assert act.per_layer_saved_bytes(micro, ckpt, 4) == [tokens * (per_token + kept)] * 2
    assert act.kbit_ctx_inputs_bytes_per_token(micro, micro.layers[0], qlora(grad_ckpt=True)) == 0


# -- transients ------------------------------------------------------------------------------------

def test_backward_dequantizes_in_the_load_dtype_then_casts():
    l_ = lin(128, 64)
    n = 128 * 64
    assert quant.backward_transient_bytes(l_, Quant.NF4, Dtype.FP32, Dtype.FP32) == 4 * n
    assert quant.backward_transient_bytes(l_, Quant.NF4, Dtype.FP32, Dtype.BF16) == 6 * n
    assert quant.backward_transient_bytes(l_, Quant.INT8, Dtype.FP32, Dtype.FP32) == 4 * n
    # split at the matmul: the load-dtype dequant is freed once its cast returns
    assert quant.input_grad_weight_bytes(l_, Quant.NF4, Dtype.FP32, Dtype.BF16) == (6 * n, 2 * n)
    assert quant.input_grad_weight_bytes(l_, Quant.NF4, Dtype.BF16, Dtype.BF16) == (2 * n, 2 * n)
    assert quant.input_grad_weight_bytes(l_, Quant.INT8, Dtype.FP32, Dtype.BF16) == (2 * n, 2 * n)


def test_the_down_projection_dequant_is_a_moment_of_its_own(micro):
    """A QLoRA layer's backward gains the dequant moment before its down projection's matmul, whose input
    gradient is not made yet, and the compute-dtype copy at the matmul."""
    from refplan import planner
    from refplan.reference import reference_plan

    t = qlora(quant_compute_dtype="bf16")
    step = planner._Step(micro, t, reference_plan(t))
    moments = dict(planner._backward_moments(step))
    down = micro.layers[1].first(Role.MLP_DOWN)
    n, out = down.in_features * down.out_features, step.rows * t.seq * down.in_features * 4
    before, during = moments["layer 1 down k-bit"], moments["layer 1 down"]
    assert (before["k-bit dequant"], during["k-bit dequant"]) == (6 * n, 2 * n)
    assert during["activation grads"] - before["activation grads"] == out


def test_no_grad_forward_paths():
    l_, t = lin(128, 64), 100
    n = 128 * 64
    # gemm_4bit: the weight dequantized into the compute dtype (+ a nested absmax in fp32)
    assert quant.no_grad_forward_transient_bytes(l_, t, Quant.NF4, True, Dtype.FP32, Dtype.FP32, Device.CPU,
                                                 False, False) == 4 * n + 4 * (n // 64)
    # the repacked CPU kernel: bf16 input and output whatever the compute dtype
    assert quant.no_grad_forward_transient_bytes(l_, t, Quant.NF4, False, Dtype.FP32, Dtype.FP32, Device.CPU,
                                                 True, True) == t * 128 * 2 + t * 64 * 2
    # LLM.int8 in eval mode: int8 input + row scales, the int32 product and one fp32 scale product
    assert quant.no_grad_forward_transient_bytes(l_, t, Quant.INT8, False, Dtype.FP32, Dtype.FP32, Device.CPU,
                                                 True, False) == t * 64 + 4 * t + 8 * t * 128
    # in train mode on CPU (MatMul8bitFp): the dequantized weight in the input's dtype
    assert quant.no_grad_forward_transient_bytes(l_, t, Quant.INT8, False, Dtype.FP32, Dtype.FP32, Device.CPU,
                                                 False, False) == 4 * n


def test_cpu_repack_is_seven_bytes_per_weight(micro):
    assert quant.cpu_repack_transient_bytes(1000) == 7000
    assert quant.largest_cpu_repack_transient_bytes(micro) == 7 * 128 * 64


# -- bitsandbytes optimizers ------------------------------------------------------------------------

def test_bnb_8bit_adamw_state_per_tensor(micro):
    # uint8 states + an fp32 absmax per 256 elements each; fp32 states under 4096 elements or for embeddings
    assert terms.bnb8_state_bytes(65536) == 2 * 65536 + 2 * 4 * 256
    assert terms.bnb8_state_bytes(65537) == 2 * 65537 + 2 * 4 * 257
    assert terms.bnb8_state_bytes(4095) == 8 * 4095
    assert terms.bnb8_state_bytes(65536, embedding=True) == 8 * 65536
    # LoRA r4 on micro: A 4 x in and B out x 4 -- all under 4096 elements: fp32 states, + the two 1 KiB maps
    train = qlora(method=Method.ORPO, strategy=Strategy.NONE, optim="adamw-8bit")
    assert terms.optimizer_state_bytes(micro, train) == 8 * terms.lora_params(micro, 4) + 2048


def test_bnb_paged_adamw_keeps_fp32_states_for_bf16_adapters(micro):
    # PagedAdamW32bit: two fp32 states whatever the parameter dtype, no step tensor
    train = qlora(optim="paged-adamw")
    assert terms.optimizer_state_bytes(micro, train) == 8 * terms.lora_params(micro, 4)


def test_bnb_cpu_step_temporaries():
    assert terms.bnb_cpu_step_bytes(65536, eight_bit=True, fp32_param=True) == 20 * 65536
    assert terms.bnb_cpu_step_bytes(65536, eight_bit=True, fp32_param=False) == 24 * 65536
    assert terms.bnb_cpu_step_bytes(2048, eight_bit=True, fp32_param=True) == 12 * 2048  # 32-bit path
    assert terms.bnb_cpu_step_bytes(65536, eight_bit=False, fp32_param=False) == 16 * 65536


def test_bf16_adapters_on_a_bf16_load_read_the_input_itself(micro):
    # DPO on a bf16 4-bit base (bf16 compute): TRL's bf16 adapters share the activations' dtype, so LoRA A
    # keeps the norm output itself, not a copy per wrapped linear (measured: a bf16 QLoRA burst, -0.005 %)
    train = qlora(dtype="bf16", device="cuda")
    m = act.act_mode(train)
    assert (m.a, m.adapter, m.autocast) == (2, 2, True)
    r = 4
    # o_proj's input is SDPA's output, which SDPA keeps: counted with attention
    assert act._linear_inputs_saved(micro, micro.layers[1], train, m) == 2 * (64 + 64 + 128) + 2 * r * 7
