"""The trace engine: fake-tensor steps agree with real CPU steps, the per-layer extrapolation with full
traces, and an 8B-shaped step runs in seconds.

Shapes are tiny except the 8B test (fake tensors: no memory). The real TRL burst comparison is
marked slow, like the harness tests.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from refplan import trace as T  # noqa: E402
from refplan.errors import PlanError  # noqa: E402
from refplan.families import spec_from_config  # noqa: E402
from refplan.methods import Finetune, Method, Strategy  # noqa: E402
from refplan.planner import estimate  # noqa: E402
from refplan.resolve import resolve_model  # noqa: E402
from refplan.spec import TrainSpec  # noqa: E402

LLAMA4 = dict(model_type="llama", hidden_size=128, intermediate_size=344, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False)
MOE = dict(model_type="qwen3_moe", hidden_size=64, intermediate_size=128, num_hidden_layers=3,
           num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256, num_experts=4,
           num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
GEMMA2 = dict(model_type="gemma2", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256, sliding_window=16)


def train(method="dpo", strategy="separate", finetune="full", **kw) -> TrainSpec:
    base = dict(dtype="fp32", batch=2, seq=64, padded=False, device="cpu", lora_r=4)
    return TrainSpec(Method(method), Strategy(strategy), Finetune(finetune), **{**base, **kw})


def model(cfg: dict, name: str = "tiny"):
    return spec_from_config(dict(cfg), name, "test")


SETUPS = [
    train(),
    train(strategy="precompute", grad_ckpt=True),
    train(strategy="unwrap", finetune="lora", dtype="bf16"),
    train(strategy="ref-adapter", finetune="lora", padded=True),
    train(method="kto", strategy="separate", dtype="bf16", grad_ckpt=True),
    train(method="orpo", strategy="none", dtype="bf16"),
    train(method="simpo", strategy="none", finetune="lora"),
    train(dtype="fp32", autocast="bf16"),
]


def _ids(setups):
    return [f"{t.method.value}-{t.strategy.value}-{t.finetune.value}-{t.dtype}{'-ac' if t.autocast else ''}"
            f"{'-gc' if t.grad_ckpt else ''}{'-pad' if t.padded else ''}" for t in setups]


# -- fake == real -------------------------------------------------------------------------------------

@pytest.mark.parametrize("setup", SETUPS, ids=_ids(SETUPS))
def test_fake_step_equals_the_same_step_on_real_tensors(setup):
    """The same step on real CPU tensors: every (phase, segment) peak agrees to the byte."""
    spec = model(LLAMA4)
    fake = T.trace(spec, setup, spec.num_layers)
    real = T.trace(spec, setup, spec.num_layers, real=True)
    assert fake.segments == real.segments
    assert fake.static == real.static


@pytest.mark.parametrize("cfg", [MOE, GEMMA2], ids=["qwen3_moe", "gemma2"])
def test_fake_equals_real_beyond_llama(cfg):
    spec = model(cfg)
    setup = train(dtype="bf16", padded=True)
    fake = T.trace(spec, setup, spec.num_layers)
    real = T.trace(spec, setup, spec.num_layers, real=True)
    assert fake.segments == real.segments


@pytest.mark.parametrize("setup", [train(), train(strategy="unwrap", finetune="lora", dtype="bf16", grad_ckpt=True),
                                   train(method="orpo", strategy="none")], ids=["dpo", "dpo-lora", "orpo"])
def test_tiny_trace_matches_the_formula_within_1_percent(setup):
    """The formula engine is calibrated against real CPU bursts of this kind of setup."""
    spec = model(LLAMA4)
    traced = T.trace_estimate(spec, setup, layers=spec.num_layers)
    formula = estimate(spec, setup)
    assert traced.peak_bytes == pytest.approx(formula.peak_bytes, rel=0.01)


LAYER_BACKWARD = [train(method="orpo", strategy="none", finetune=ft, dtype=dt, autocast=ac, grad_ckpt=gc, seq=256,
                         lora_r=8)
                   for ft, dt, ac, gc in [("lora", "bf16", None, True), ("lora", "fp32", "bf16", True),
                                          ("lora", "fp32", None, True), ("full", "fp32", "bf16", True),
                                          ("full", "fp32", None, True), ("full", "bf16", None, True),
                                          ("lora", "fp32", "bf16", False), ("full", "bf16", None, False)]]


#: since the first layer's frozen input stopped counting weight casts (LoRA + fp32 weights + autocast, no
#: checkpointing), every layer's backward moment here reads 88 KB (1.0 %) below the trace engine's. The
#: first layer's casts themselves agree with the trace (71,680 B fewer than layer 1's in both); the rest of
#: the gap is not located. A real CPU burst of this very setup (ORPO LoRA, llama h128 x 4 layers, seq 256)
#: reads formula -0.008 %, trace +0.056 % of the measured peak.
_TRACE_KEEPS_LAYER0_COPIES = "formula's per-layer backward moments 1 % below the trace engine (LoRA, fp32 + autocast)"
LAYER_BACKWARD_CASES = [pytest.param(s, marks=pytest.mark.xfail(strict=True, reason=_TRACE_KEEPS_LAYER0_COPIES))
                        if s.finetune.value == "lora" and s.autocast is not None and not s.grad_ckpt else s
                        for s in LAYER_BACKWARD]


@pytest.mark.parametrize("setup", LAYER_BACKWARD_CASES, ids=_ids(LAYER_BACKWARD))
def test_each_layer_backward_matches_the_trace(setup):
    """Each decoder layer's backward peak in the trace against the formula's moments of that layer
    (refplan.backward: the recompute's forward locals, the MLP's gradients, the norm's fp32 chain),
    step tensors only (the static components are the same in both)."""
    from refplan.planner import _Step, timeline
    from refplan.reference import reference_plan

    spec = model(LLAMA4)
    traced = T.trace(spec, setup, spec.num_layers)
    traced_static = sum(traced.static.values())
    formula_static = sum(_Step(spec, setup, reference_plan(setup)).static.values())
    points = timeline(spec, setup)
    for i in range(spec.num_layers):
        formula = max(v for phase, moment, v in points
                      if phase == "backward" and (moment == f"layer {i}" or moment.startswith(f"layer {i} ")))
        measured = traced.segments[("backward", ("layer", i))] - traced_static
        assert formula - formula_static == pytest.approx(measured, rel=0.005), i


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(method="dpo", strategy="separate"),
                                dict(method="dpo", strategy="unwrap", finetune="lora", dtype="bf16"),
                                dict(method="orpo", strategy="none", dtype="bf16")], ids=["dpo", "dpo-lora", "orpo"])
def test_trace_matches_a_real_trl_burst(kw, tmp_path, monkeypatch):
    """A real TRL trainer run on CPU (refplan.harness) and the trace of the same setup: the same live
    bytes, to a few bytes (the burst also counts the scalar constants of modules it imports while
    tracked)."""
    from refplan.harness.burst import run_burst
    from refplan.harness.scenario import Scenario
    from refplan.harness.tiny import build_model

    monkeypatch.setenv("REFPLAN_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    build_model("micro")
    # 3 steps: the second is steady state (its next batch is prefetched; the last step's is not)
    sc = Scenario.from_dict({"model": "random:micro", "seq": 32, "batch": 2, "steps": 3, "lora_r": 4, "device": "cpu",
                             "dtype": "fp32", **kw})
    rec = run_burst(sc)
    assert rec["status"] == "ok", rec.get("traceback")
    spec = resolve_model(rec["model_dir"])
    traced = T.trace_estimate(spec, sc.train, layers=spec.num_layers)
    assert abs(traced.peak_bytes - rec["peak_train_bytes"]) <= 64


# -- extrapolation --------------------------------------------------------------------------------------

EXTRAPOLATED = [SETUPS[0], SETUPS[1], SETUPS[2], SETUPS[4], SETUPS[7]]


@pytest.mark.parametrize("setup", EXTRAPOLATED, ids=_ids(EXTRAPOLATED))
def test_extrapolation_equals_the_full_trace(setup):
    spec = model(LLAMA4)
    assert T.extrapolation_depths(spec) == (2, 3, 1)
    full = T.trace_estimate(spec, setup, layers=4)
    extrapolated = T.trace_estimate(spec, setup)
    assert extrapolated.phases == full.phases


def test_extrapolation_follows_a_first_dense_layer_and_a_period():
    deepseek = resolve_model("deepseek-ai/DeepSeek-V2-Lite", offline=True)
    assert T.layer_pattern(deepseek) == (1, 1)  # first_k_dense_replace
    gemma3 = resolve_model("google/gemma-3-4b-pt", offline=True)
    assert T.layer_pattern(gemma3) == (0, 6)  # five sliding layers, one full
    n1, n2, period = T.extrapolation_depths(gemma3)
    assert (gemma3.num_layers - n1) % period == 0 and n2 == n1 + period


def test_cut_configs_keep_the_layer_pattern():
    for name in ("google/gemma-2-9b", "deepseek-ai/DeepSeek-V2-Lite", "Qwen/Qwen3-30B-A3B"):
        spec = resolve_model(name, offline=True)
        n = T.extrapolation_depths(spec)[1]
        cut = spec_from_config(T.decoder_config(spec, n).to_dict(), "cut", "test")
        assert cut.layers == spec.layers[:n]
        assert (cut.structure.layer_types or None) == ((spec.structure.layer_types or ())[:n] or None)


# -- real shapes -------------------------------------------------------------------------------------

def test_an_8b_step_traces():
    """Seconds on fake tensors (bench/trace_check.py times it); no 8B worth of memory is allocated."""
    spec = resolve_model("meta-llama/Llama-3.1-8B", offline=True)
    setup = TrainSpec(Method.DPO, Strategy.SEPARATE, dtype="bf16", batch=1, seq=512, padded=False, device="cpu")
    est = T.trace_estimate(spec, setup)
    parts = est.components
    assert parts["policy weights"] == parts["reference weights"]
    assert 0 <= parts["policy weights"] - 2 * spec.params < 4096  # bf16 weights + the fp32 rotary buffer
    assert est.peak_bytes == pytest.approx(estimate(spec, setup).peak_bytes, rel=0.01)


def test_fused_head_uses_its_torch_fallback_on_fake_cpu():
    from trl.kernels.chunked_logprob import _use_triton

    assert not _use_triton(torch.device("cpu"))


# -- the recipe's trainer drives the step ----------------------------------------------------------------

def test_the_step_is_trls_own_compute_loss(monkeypatch):
    """No hand copy of the loss: the trace calls the recipe trainer's ``_compute_loss`` once per step."""
    from trl import DPOTrainer

    calls = []
    original = DPOTrainer._compute_loss

    def counting(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DPOTrainer, "_compute_loss", counting)
    spec = model(LLAMA4)
    T.trace(spec, train(), 2)
    assert calls == ["DPOTrainer", "DPOTrainer"]  # the warm-up step and the measured one


def test_the_stand_in_trainer_takes_the_router_loss_from_the_traced_config():
    from refplan.reference import reference_plan
    from refplan.trace.trainer import recipe_trainer

    for cfg, enabled in ((MOE, True), (LLAMA4, False)):
        setup = train()
        trainer, _ = recipe_trainer(setup, reference_plan(setup), T.decoder_config(model(cfg), 2))
        assert trainer.aux_loss_enabled is enabled


def test_known_values_give_value_dependent_ops_their_real_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from refplan.trace.values import KnownValues

    with FakeTensorMode(), KnownValues():
        labels = torch.zeros(5, dtype=torch.bool)
        labels[::2] = True
        logps = torch.empty(5, 7)  # no values: a model output
        assert torch.nonzero(labels).shape == (3, 1)
        assert logps[labels].shape == (3, 7)
        assert labels.sum().item() == 3
        assert logps.sum().item() == 0  # logging of an unknown value


# -- refusals -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, flag", [
    (dict(device="cuda"), "--device"),
    (dict(optim="adafactor"), "--optim"),
    (dict(attn="flash"), "--attn"),
    (dict(dtype="fp16"), "--dtype"),
])
def test_refuses_what_fake_cpu_cannot_run(kw, flag):
    spec = model(LLAMA4)
    with pytest.raises(PlanError) as err:
        T.trace_estimate(spec, train(**kw))
    assert err.value.where == flag


def test_peak_inventory_names_what_is_live():
    spec = model(LLAMA4)
    inv = dict(T.peak_inventory(spec, train(), "backward", 2))
    assert inv["policy weights"] > 0 and inv["reference weights"] > 0
    assert any(label.startswith("policy forward / layer") for label in inv)


@pytest.mark.slow
def test_cli_engine_trace_runs_and_agrees_with_formula():
    import json
    import subprocess
    import sys

    args = ["estimate", "--model", "HuggingFaceTB/SmolLM2-135M", "--method", "dpo", "--strategy", "separate",
            "--device", "cpu", "--seq", "256", "--format", "json", "--offline"]
    traced = subprocess.run([sys.executable, "-m", "refplan", *args, "--engine", "trace"], capture_output=True,
                            text=True)
    formula = subprocess.run([sys.executable, "-m", "refplan", *args], capture_output=True, text=True)
    assert traced.returncode == 0, traced.stderr
    t = json.loads(traced.stdout)["rows"][0]["peak_bytes"]
    f = json.loads(formula.stdout)["rows"][0]["peak_bytes"]
    assert abs(f - t) / t < 0.03


@pytest.mark.parametrize("setup", [train(), train("dpo", "unwrap", "lora"), train("dpo", "precompute", "lora",
                                                                                     grad_ckpt=True)])
def test_dpo_sft_loss_term_adds_nothing_at_any_phase_peak(setup, monkeypatch):
    """``loss_type: [sigmoid, sft]`` (dpo_trainer.py ``_compute_loss``, ``loss_type == "sft"``): the NLL
    term reads the per-token log-probs the fused head already returned, through a [rows, S-1] mask and a
    boolean gather, alive between the last forward and the first backward node -- never a phase's peak.
    Measured on real CPU tensors: every phase peak is the same to the byte, so the planner adds no term."""
    import refplan.trace.step as step

    spec = model(LLAMA4)
    plain = T.trace(spec, setup, spec.num_layers, real=True)
    built = step.recipe_trainer

    def with_sft(*a, **kw):
        trainer, heads = built(*a, **kw)
        trainer.loss_types, trainer.loss_weights = ["sigmoid", "sft"], [1.0, 1.0]
        return trainer, heads

    monkeypatch.setattr(step, "recipe_trainer", with_sft)
    sft = T.trace(spec, setup, spec.num_layers, real=True)
    assert {ph: sft.phase_peak(ph) for ph in T.PHASES} == {ph: plain.phase_peak(ph) for ph in T.PHASES}
