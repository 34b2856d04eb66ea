"""FSDP2 per-rank terms (refplan/fsdp_terms.py) on the TINY Llama, numbers derived by hand.

TINY: hidden 256, intermediate 688, 4 layers, 4 heads (head_dim 64), 2 KV heads, vocab 1024, untied.
A decoder layer: q 256x256 + k 256x128 + v 256x128 + o 256x256 = 196,608; MLP 3 x 256 x 688 =
528,384; two RMSNorms 512: 725,504 parameters. Tail unit: final norm 256 + LM head 1024 x 256 =
262,400. Embedding 262,144. Whole model: 4 x 725,504 + 262,400 + 262,144 = 3,426,560.
"""

from __future__ import annotations

import pytest

from refplan import fsdp_terms
from refplan.planner import estimate
from conftest import spec

LAYER = 725_504
TAIL = 262_400
EMBED = 262_144
MODEL = 4 * LAYER + TAIL + EMBED


def fsdp(**kw):
    return spec(fsdp=True, gpus=2, **kw)


def test_model_size_is_what_the_docstring_derives(tiny):
    assert tiny.params == MODEL


def test_units_in_the_policy_dtype(tiny):
    assert fsdp_terms.layer_unit_bytes(tiny, fsdp()) == LAYER * 4
    assert fsdp_terms.layer_unit_bytes(tiny, fsdp(dtype="bf16")) == LAYER * 2
    assert fsdp_terms.tail_bytes(tiny, fsdp()) == TAIL * 4


def test_lora_adapters_are_gathered_with_their_layer(tiny):
    # r=8 on every linear of a layer: 8 x ((256+256) + (256+128) x 2 + (256+256) + (256+688) x 2 + (688+256))
    lora = 8 * (512 + 384 * 2 + 512 + 944 * 2 + 944)
    t = fsdp(finetune="lora", lora_r=8)
    assert fsdp_terms.layer_unit_bytes(tiny, t) == LAYER * 4 + lora * 4
    assert fsdp_terms.lora_shard_bytes(tiny, t) == 4 * lora * 4 // 2


def test_separate_reference_is_one_unit_gathered_twice(tiny):
    # TRL prepare_fsdp: fully_shard(ref) whole; the flat all-gather output deferred to the root's post-forward
    assert fsdp_terms.reference_gathered_bytes(tiny, fsdp()) == 2 * MODEL * 4


def test_forward_moments(tiny):
    assert fsdp_terms.policy_forward_gathered_bytes(tiny, fsdp()) == 2 * TAIL * 4  # tail + its deferred flat
    assert fsdp_terms.policy_held_bytes(tiny, fsdp()) == TAIL * 4  # reshard_after_forward=False
    assert fsdp_terms.forward_layer_gathered_bytes(tiny, fsdp()) == 3 * LAYER * 4


def test_backward_layer_holds_own_prefetched_and_in_flight_units(tiny):
    grads = [LAYER * 4] * 4
    # a middle layer: its unit, the layer below prefetched, the layer above's reduce-scatter input
    assert fsdp_terms.backward_layer_gathered_bytes(tiny, fsdp(), 1, grads) == 3 * LAYER * 4
    # the top layer: the tail's reduce-scatter input in flight
    assert fsdp_terms.backward_layer_gathered_bytes(tiny, fsdp(), 3, grads) == 2 * LAYER * 4 + TAIL * 4
    # layer 0: the embedding unit prefetched
    assert fsdp_terms.backward_layer_gathered_bytes(tiny, fsdp(), 0, grads) == 2 * LAYER * 4 + EMBED * 4
    assert fsdp_terms.backward_head_gathered_bytes(tiny, fsdp()) == TAIL * 4 + LAYER * 4
    assert fsdp_terms.backward_embedding_gathered_bytes(tiny, fsdp(), grads) == EMBED * 4 + LAYER * 4


def test_prepare_holds_the_unsharded_policy_on_cpu_one_unit_on_cuda(tiny):
    assert fsdp_terms.prepare_original_bytes(tiny, fsdp()) == MODEL * 4
    assert fsdp_terms.prepare_original_bytes(tiny, fsdp(device="cuda")) == LAYER * 4


def _parts(est, phase):
    return dict(next(p for p in est.phases if p.name == phase).components)


def test_reference_forward_phase_of_a_separate_copy(tiny):
    est = estimate(tiny, fsdp())
    ref = _parts(est, "reference forward")
    assert ref["gathered reference"] == 2 * MODEL * 4
    assert ref["gathered params"] == TAIL * 4
    assert ref["reference weights"] == MODEL * 4 // 2
    assert ref["policy weights"] == MODEL * 4 // 2


def test_precompute_under_fsdp_holds_the_unsharded_policy_and_the_gathered_reference(tiny):
    pre = _parts(estimate(tiny, fsdp(strategy="precompute")), "precompute")
    assert pre["policy weights"] == MODEL * 4  # prepared by accelerate only in train()
    assert pre["reference weights"] == MODEL * 4 // 2
    assert pre["gathered reference"] == 2 * MODEL * 4


def test_prepare_phase_only_under_fsdp(tiny):
    names = [p.name for p in estimate(tiny, spec(gpus=2, zero=3)).phases]
    assert "fsdp prepare" not in names
    prep = _parts(estimate(tiny, fsdp()), "fsdp prepare")
    assert prep == {"policy weights": MODEL * 2, "reference weights": MODEL * 2, "unsharded originals": MODEL * 4}


def test_optimizer_step_gathers_nothing(tiny):
    assert "gathered params" not in _parts(estimate(tiny, fsdp()), "optimizer step")


@pytest.mark.parametrize("gpus", [2, 4])
def test_backward_layer_end_holds_its_gradients_unsharded(tiny, gpus):
    from refplan.planner import _backward_moments, _Step
    from refplan.reference import reference_plan

    t = spec(fsdp=True, gpus=gpus, strategy="precompute")
    moments = dict(_backward_moments(_Step(tiny, t, reference_plan(t))))
    # at a layer's end its own gradients are whole (reduce-scattered in its post_backward), the ones
    # above are shards: going one layer down adds exactly the layer above's shard
    assert moments["layer 1"]["gradients"] - moments["layer 2"]["gradients"] == LAYER * 4 // gpus
    assert moments["layer 1"]["gathered params"] == 3 * LAYER * 4


def test_lora_precompute_under_fsdp_loads_no_reference(tiny):
    # TRL: is_peft_model(self.model) is checked first -- the adapters are disabled, no reference is loaded
    pre = _parts(estimate(tiny, fsdp(strategy="precompute", finetune="lora", lora_r=8)), "precompute")
    assert "gathered reference" not in pre and "reference weights" not in pre
    assert pre["policy weights"] == MODEL * 4  # not sharded before train()
