"""`refplan fit` answers are the exact boundaries of `refplan estimate`: the estimate fits at the
answer and not one step beyond -- over random models, methods, strategies, settings and GPUs."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refplan.families import spec_from_config
from refplan.fit import fit_row
from refplan.methods import Finetune, Method, applicable_strategies
from refplan.planner import estimate
from refplan.settings import Offload, Sharding
from refplan.spec import TrainSpec

GIB = 2**30


@st.composite
def scenario(draw):
    heads = draw(st.sampled_from([4, 8, 16]))
    kv = draw(st.sampled_from([d for d in (1, 2, 4, 8) if heads % d == 0]))
    hidden = heads * draw(st.sampled_from([32, 64, 128]))
    cfg = {"model_type": draw(st.sampled_from(["llama", "qwen2", "mistral"])), "hidden_size": hidden,
           "intermediate_size": draw(st.sampled_from([2 * hidden, 3 * hidden, 4 * hidden])),
           "num_hidden_layers": draw(st.integers(2, 40)), "num_attention_heads": heads, "num_key_value_heads": kv,
           "vocab_size": draw(st.sampled_from([32000, 50000, 128256])), "max_position_embeddings": 1 << 17}
    model = spec_from_config(cfg, "random", "test")
    finetune = draw(st.sampled_from([Finetune.FULL, Finetune.LORA]))
    method = draw(st.sampled_from(list(Method)))
    strategy = draw(st.sampled_from(applicable_strategies(method, finetune)))
    train = TrainSpec(method=method, strategy=strategy, finetune=finetune,
                      dtype=draw(st.sampled_from(["bf16", "fp32"])), batch=draw(st.integers(2, 4)),
                      seq=draw(st.sampled_from([256, 512, 1024, 2048])), grad_ckpt=draw(st.booleans()))
    capacity = draw(st.integers(1, 96)) * GIB
    return model, train, capacity


def _fits(model, train, capacity):
    return estimate(model, train).peak_bytes <= capacity


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_fit_answers_are_exact_boundaries(case):
    model, train, cap = case
    row = fit_row(model, train, cap)
    low = 2 if train.method is Method.KTO else 1
    if row.max_batch:
        assert _fits(model, replace(train, batch=row.max_batch), cap)
        assert not _fits(model, replace(train, batch=row.max_batch + 1), cap)
    else:
        assert not _fits(model, replace(train, batch=low), cap)
    if row.max_seq:
        assert _fits(model, replace(train, seq=row.max_seq), cap)
        if not row.seq_capped:
            assert not _fits(model, replace(train, seq=row.max_seq + 1), cap)
    if row.fits:
        assert row.min_gpus is None
    elif row.min_gpus:
        sharding, _, off = row.sharding.partition("+")
        at = dict(sharding=Sharding(sharding), offload=Offload.OPTIMIZER if off else Offload.NONE)
        assert _fits(model, replace(train, gpus=row.min_gpus, **at), cap)
        if row.min_gpus > 1:
            assert not _fits(model, replace(train, gpus=row.min_gpus - 1, **at), cap)
