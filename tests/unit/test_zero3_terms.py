"""ZeRO-3 per-rank terms (refplan/sharding_terms.py), by hand on the sharded suite's "wide" Llama:
hidden 512, intermediate 1536, 4 layers, vocab 512, untied, fp32, 2 ranks (the shape the bursts
measured: reports/validate-sharded/README.md)."""

from refplan.families import spec_from_config
from refplan.planner import estimate
from refplan.settings import train_spec_from_strings
from refplan import sharding_terms as st

WIDE = {"model_type": "llama", "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 4,
        "num_attention_heads": 8, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 512,
        "tie_word_embeddings": False, "rms_norm_eps": 1e-6}
# per layer: q, k, v, o 512x512 + gate, up, down 512x1536 + 2 norms; + embed, lm_head, final norm
PARAMS = 4 * (4 * 512 * 512 + 3 * 512 * 1536 + 2 * 512) + 2 * 512 * 512 + 512  # 14,160,384
NORMS = 9 * 512  # the tensors at or under 10 * hidden = 5120 elements


def _model():
    return spec_from_config(dict(WIDE), "wide", "test")


def _train(method="dpo", strategy="separate", finetune="full", **kw):
    return train_spec_from_strings(method, strategy, finetune, dtype="fp32", batch=2, seq=32, device="cpu",
                                   zero=3, gpus=2, lora_r=8, **kw)


def test_param_count_is_the_hand_count():
    assert _model().params == PARAMS == 14_160_384


def test_partition_buffers_full():
    m, t = _model(), _train()
    half_fp32 = PARAMS // 2 * 4  # 28,320,768
    assert st.master_partition_bytes(m, t) == half_fp32  # a copy even for fp32 (device str compare)
    assert st.zero3_gradient_partition_bytes(m, t) == half_fp32
    assert st.zero3_reduce_bucket_bytes(m, t) == 512 * 512 * 4  # 1 MiB ipg bucket


def test_persistent_params_norms_only_full():
    m = _model()
    assert st.zero3_persistent_bytes(m, _train(), with_reference=True) == 2 * NORMS * 4  # policy + reference
    assert st.zero3_persistent_bytes(m, _train(method="orpo", strategy="none"), with_reference=False) == NORMS * 4


def test_persistent_lora_tensors():
    # r=8: A (8x512) and B (512x8) are 4096 elements each, under 5120: persistent; gate/up B (1536x8)
    # and down A (8x1536) are 12288: partitioned. Per layer 4*2 + 2 + 1 = 11 tensors of 4096.
    m, t = _model(), _train(method="orpo", strategy="none", finetune="lora")
    assert st.zero3_persistent_bytes(m, t, with_reference=False) == NORMS * 4 + 4 * 11 * 4096 * 4


def test_gathered_policy_kept_when_one_forward_per_step():
    m = _model()
    dpo, kto = _train(), _train(method="kto")
    assert st.zero3_policy_keeps_gathered(dpo, policy_runs_reference=False)
    assert not st.zero3_policy_keeps_gathered(kto, policy_runs_reference=False)  # KL forward
    assert not st.zero3_policy_keeps_gathered(dpo, policy_runs_reference=True)  # unwrap
    assert st.zero3_gathered_bytes(m, dpo, True) == (PARAMS - NORMS) * 4
    layer = 4 * 512 * 512 + 3 * 512 * 1536 + 2 * 512
    assert st.zero3_gathered_bytes(m, kto, False) == 2 * layer * 4


def test_inflight_gradient_is_the_largest_tensor():
    m = _model()
    assert st.zero3_inflight_gradient_bytes(m, _train()) == 512 * 1536 * 4
    assert st.zero3_inflight_gradient_bytes(m, _train(finetune="lora")) == 8 * 1536 * 4


def test_orpo_full_steady_state_between_steps():
    """The optimizer step's parts: what a rank holds between steps (measured 142,678,297 B at step
    begin, rank 0, orpo-none-full-zero3x2: these terms plus the 7.4 kB batch)."""
    est = estimate(_model(), _train(method="orpo", strategy="none"))
    parts = dict(next(p for p in est.phases if p.name == "optimizer step").components)
    half = PARAMS // 2 * 4
    assert parts["policy weights"] == half
    assert parts["master weights"] == half
    assert parts["gradient partition"] == half
    assert 2 * half <= parts["optimizer state"] < 2 * half + 4096  # exp_avg, exp_avg_sq (+ step counters)
    assert parts["reduce bucket"] == 512 * 512 * 4
    assert "gathered params" not in parts and "gradients" not in parts
    held = sum(v for k, v in parts.items() if k != "batch")
    assert abs(held - 142_678_297) < 16_000


def test_reference_prefetch_frontier_on_wide_by_hand():
    # one tensor prefetched per module fetch (every matrix > 0.9 * 512^2 = 235,929): 13 fetches per layer
    # against 7 matrices, so the frontier reaches the end while layer 1's up projection runs; then layer 1's
    # up and down, layers 2 and 3 and the (fused, held) head are gathered -- the measured inventory
    layer = 4 * 512 * 512 + 3 * 512 * 1536
    assert st.zero3_forward_only_gathered_elements(_model()) == 2 * 512 * 1536 + 2 * layer + 512 * 512 == 8_650_752


def test_reference_prefetch_stops_at_max_live_parameters():
    # the live cap bounds the frontier; with a bucket of one element each fetch still takes one tensor
    assert st.zero3_forward_only_gathered_elements(_model(), bucket=1) == 8_650_752
    assert st.ZERO3_MAX_LIVE_PARAMETERS == 1_000_000_000


def test_reference_gathered_only_for_a_zero3_reference_engine():
    m = _model()
    assert st.zero3_reference_gathered_bytes(m, _train(), ref_in_own_engine=False) == 0
    assert st.zero3_reference_gathered_bytes(m, _train(), ref_in_own_engine=True) == 8_650_752 * 4


LAYER = 4 * 512 * 512 + 3 * 512 * 1536  # one layer's partitioned weights, 3,407,872 elements
HEAD = 512 * 512


def test_precompute_engine_on_policy_releases_each_module():
    # TRL's precompute engine wraps the policy (no ref_model with precompute outside FSDP); its
    # forward-only coordinator releases each module after it runs, for the training engine too
    dpo = _train(strategy="precompute")
    assert st.zero3_precompute_engine_on_policy(dpo, precompute_pass=True)
    assert not st.zero3_precompute_engine_on_policy(_train(), precompute_pass=False)
    assert not st.zero3_policy_keeps_gathered(dpo, policy_runs_reference=False, precompute_engine=True)


def test_two_prefetch_frontiers_on_wide_by_hand():
    # the training coordinator (queue on into its backward) and the precompute one each take one tensor
    # per fetch: the measured 12,845,056 elements while layer 0's MLP runs (every weight but layer 0's
    # q, k, v and o, plus the head); 2,359,296 in flight when the forward ends, + one MLP weight in the backward
    frontier = st._prefetch_frontier(_model(), (True, False))
    assert max(n for _, n in frontier) == 4 * LAYER - 4 * 512 * 512 + HEAD == 12_845_056
    assert frontier[-1][1] == 2_359_296
    assert st.zero3_two_engine_backward_gathered_bytes(_model(), _train(strategy="precompute")) == \
        (2_359_296 + 512 * 1536) * 4
    # layers finished before each fetch: 0 through layer 0, then one more per layer
    assert [k for k, _ in frontier][:4 + 13] == [0] * 17 and frontier[-1][0] == 3


def test_unwrap_keeps_backward_weights_until_the_end():
    # the reference forward through the policy resets ds_grads_remaining: no module both forwards ran is
    # released in the backward. At layer 0 (LoRA, frozen embedding): the head, layers 1-3, layer 0's o and MLP
    m, t = _model(), _train(strategy="unwrap", finetune="lora")
    assert st.zero3_unreleased_backward_bytes(m, t, 4) == HEAD * 4
    assert st.zero3_unreleased_backward_bytes(m, t, 0) == (HEAD + 3 * LAYER + 512 * 512 + 3 * 512 * 1536) * 4
    assert st.zero3_unreleased_backward_bytes(m, t, 0) // 4 == 13_107_200  # measured 13,156,352 (+ LoRA in flight)
    # the forwards: no prefetch on an invalid trace, the running module and the head
    assert st.zero3_invalid_trace_gathered_bytes(m, t) == (512 * 1536 + HEAD) * 4


def test_measured_zero3_peaks_within_target():
    # measured per-rank peaks, rank 0 (bench/sharded_summary.py /tmp/z3bench): DPO precompute full
    # 199,851,081 B, DPO unwrap LoRA 88,297,249 B, KTO unwrap LoRA 88,427,045 B
    m = _model()
    for kw, measured in ((dict(strategy="precompute"), 199_851_081),
                         (dict(strategy="unwrap", finetune="lora"), 88_297_249),
                         (dict(method="kto", strategy="unwrap", finetune="lora"), 88_427_045)):
        est = estimate(m, _train(**kw)).peak_bytes
        assert abs(est - measured) / measured < 0.06, (kw, est)


def test_unwrap_backward_reaches_a_layer_last_linear_first():
    # inside layer 2's backward: its down projection first, then its MLP, its attention last
    m, t = _model(), _train(strategy="unwrap", finetune="lora")
    above = HEAD + LAYER  # the head and layer 3
    assert st.zero3_unreleased_backward_bytes(m, t, 2, down_only=True) == (above + 512 * 1536) * 4
    assert st.zero3_unreleased_backward_bytes(m, t, 2, mlp_only=True) == (above + 3 * 512 * 1536) * 4
    assert st.zero3_unreleased_backward_bytes(m, t, 2) == (above + LAYER) * 4
