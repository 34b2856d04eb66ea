"""The measuring half: real TRL bursts on a tiny offline model (no network), the tracker, the runner.

Bursts use the "micro" preset (2 layers, hidden 64, vocab 512), 2 steps, fp32 on CPU, so parity is
exact. Each burst runs in this process (``run_burst``); the runner tests go through the fork server.
"""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from refplan.harness.scenario import Scenario  # noqa: E402

pytestmark = pytest.mark.slow

MICRO = dict(model="random:micro", seq=32, batch=2, steps=2, lora_r=4, device="cpu", dtype="fp32")
TOL = 1e-5


@pytest.fixture(scope="session", autouse=True)
def offline_cache(tmp_path_factory):
    """Build the micro model once, in a cache of the test session's own."""
    cache = tmp_path_factory.mktemp("refplan-cache")
    old = os.environ.get("REFPLAN_CACHE")
    os.environ["REFPLAN_CACHE"] = str(cache)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from refplan.harness.tiny import build_model

    build_model("micro")
    yield cache
    if old is None:
        os.environ.pop("REFPLAN_CACHE", None)
    else:
        os.environ["REFPLAN_CACHE"] = old


_RESULTS: dict = {}


def burst(method, strategy, finetune="full", ref_dtype=None, **kw):
    """Run (once per session) and return the result record of a micro scenario."""
    from refplan.harness.burst import run_burst

    sc = scenario(method, strategy, finetune=finetune, ref_dtype=ref_dtype, **kw)
    if sc.key not in _RESULTS:
        rec = run_burst(sc)
        assert rec["status"] == "ok", rec.get("traceback")
        _RESULTS[sc.key] = rec
    return _RESULTS[sc.key]


def scenario(method, strategy, **kw) -> Scenario:
    return Scenario.from_dict({"method": method, "strategy": strategy, **MICRO, **kw})


def max_diff(a, b):
    return max(abs(x - y) for x, y in zip(a, b))


def ref_diff(a, b):
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


# --------------------------------------------------------------------------------------------------
# tracker
# --------------------------------------------------------------------------------------------------

def test_tracker_counts_a_known_tensor_exactly():
    from refplan.harness.tracker import LiveBytes

    tr = LiveBytes()
    with tr:
        a = torch.empty(1000, dtype=torch.float32)  # 4000 bytes
        view = a[100:200]  # same storage: not counted again
        b = a.to(torch.bfloat16)  # 2000 bytes
        a.mul_(2)  # in place: nothing new
        assert tr.live == 6000
        del a
        assert tr.live == 6000  # the view keeps the storage alive
        del view
        assert tr.live == 2000
        del b
        assert tr.live == 0
    assert tr.peak == 6000


def test_tracker_registers_weights_loaded_from_safetensors():
    from refplan.harness.recipes.common import load_model
    from refplan.harness.tiny import build_model
    from refplan.harness.tracker import LiveBytes, module_state_bytes, register_loaded_models

    sc = scenario("orpo", "none")
    tr = LiveBytes()
    with tr, register_loaded_models(tr):
        model = load_model(build_model("micro"), sc.train.dtype, sc.train)
        assert tr.live == module_state_bytes(model)
        n_params = sum(p.numel() for p in model.parameters())
        assert module_state_bytes(model) >= 4 * n_params


@pytest.mark.parametrize("double_quant", [False, True])
def test_tracker_counts_a_linear4bit_and_its_quant_state_exactly(double_quant):
    bnb = pytest.importorskip("bitsandbytes")
    from refplan.harness.tracker import LiveBytes, module_state_bytes

    def quantized(out_f, in_f):
        layer = bnb.nn.Linear4bit(in_f, out_f, bias=False, compute_dtype=torch.float32,
                                  compress_statistics=double_quant, quant_type="nf4")
        return layer.to("cpu")  # quantization happens here (Params4bit._quantize)

    quantized(64, 64)  # bitsandbytes caches its 8-bit dynamic map once per process: not this layer's
    out_f, in_f = 96, 160  # 15360 weights, 240 blocks of 64
    tr = LiveBytes()
    with tr:
        layer = quantized(out_f, in_f)
        # packed 4-bit codes + absmax (fp32, or uint8 + an fp32 per 256 blocks + 1 KiB code + offset) + 64 B code
        n, blocks = out_f * in_f, 240
        expected = n // 2 + 64 + (blocks + 4 * 1 + 1024 + 4 if double_quant else 4 * blocks)
        assert module_state_bytes(layer) == expected
        assert tr.live == expected  # made through the dispatcher: counted without registering anything
        x = torch.randn(8, in_f, requires_grad=True)
        tr.reset_peak()
        before = tr.live
        y = layer(x)
        # inside bitsandbytes::gemm_4bit: the weight dequantized to fp32 (and a nested absmax in fp32)
        assert tr.peak - before == 8 * out_f * 4 + 4 * n + (4 * blocks if double_quant else 0)
        del y


def test_tracker_counts_a_linear8bit_exactly():
    bnb = pytest.importorskip("bitsandbytes")
    from refplan.harness.tracker import LiveBytes, module_state_bytes

    tr = LiveBytes()
    with tr:
        layer = bnb.nn.Linear8bitLt(160, 96, bias=False, has_fp16_weights=False, threshold=6.0).to("cpu")
        # int8 weight + one fp32 scale per output row
        assert module_state_bytes(layer) == tr.live == 96 * 160 + 4 * 96


# --------------------------------------------------------------------------------------------------
# bursts: every method and strategy family, parity
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["dpo", "kto", "orpo", "simpo"])
def test_every_method_sees_exactly_seq_tokens(method):
    strategy = "none" if method in ("orpo", "simpo") else "separate"
    rec = burst(method, strategy)
    assert rec["seq_seen"] == MICRO["seq"]
    rows = MICRO["batch"] * (1 if method == "kto" else 2)
    assert rec["rows_seen"] == rows
    assert len(rec["losses"]) == MICRO["steps"]
    assert rec["peak_train_bytes"] > rec["loaded_bytes"] > 0


@pytest.mark.parametrize("method", ["dpo", "ipo", "kto"])
def test_precompute_matches_separate_and_saves_exactly_the_reference(method):
    sep, pre = burst(method, "separate"), burst(method, "precompute")
    assert max_diff(sep["losses"], pre["losses"]) <= TOL
    assert ref_diff(sep["ref_logps"], pre["ref_logps"]) <= TOL
    # Full fine-tune, same seed and data: the training peaks differ by exactly the reference's
    # parameters + buffers, less the precomputed log-prob columns that precompute's live batches
    # carry instead (two fp32 columns of `batch` values per batch; one batch is live at the peak on
    # the last step, two before it, when the dataloader has prefetched the next one).
    assert sep["ref_state_bytes"] > 0 and pre["ref_state_bytes"] == 0
    column_bytes = 2 * MICRO["batch"] * 4
    diff = sep["peak_train_bytes"] - pre["peak_train_bytes"]
    assert diff in (sep["ref_state_bytes"] - column_bytes, sep["ref_state_bytes"] - 2 * column_bytes)
    assert pre["peak_precompute_bytes"] is not None and sep["peak_precompute_bytes"] is None


@pytest.mark.parametrize("method", ["dpo", "kto"])
@pytest.mark.parametrize("strategy", ["unwrap", "ref-adapter", "precompute"])
def test_lora_strategies_match_separate(method, strategy):
    sep, other = burst(method, "separate", "lora"), burst(method, strategy, "lora")
    assert max_diff(sep["losses"], other["losses"]) <= TOL
    assert ref_diff(sep["ref_logps"], other["ref_logps"]) <= TOL
    assert other["ref_state_bytes"] == 0  # no reference copy held


def test_lora_unwrap_holds_no_reference_copy():
    sep, unwrap, adapter = (burst("dpo", s, "lora") for s in ("separate", "unwrap", "ref-adapter"))
    assert sep["loaded_bytes"] - unwrap["loaded_bytes"] == sep["ref_state_bytes"]
    assert adapter["loaded_bytes"] > unwrap["loaded_bytes"]  # the frozen 'ref' adapter copy


@pytest.mark.parametrize("setup", [
    # a QLoRA policy: 4-bit NF4 base, bf16 compute, TRL's bf16 adapters; the reference is the base itself
    dict(method="dpo", strategy="unwrap", finetune="qlora", quant_compute_dtype="bf16"),
    # a full-precision LoRA policy against a 4-bit reference (double quantization; CPU-repacked at its first
    # forward) and an 8-bit QLoRA policy under checkpointing (its inputs outlive the checkpoint)
    dict(method="kto", strategy="separate", finetune="lora", ref_quant="4bit", double_quant=True),
    dict(method="orpo", strategy="none", finetune="qlora", quant_bits=8, grad_ckpt=True),
], ids=["qlora-4bit-unwrap", "lora-4bit-reference", "qlora-8bit-ckpt"])
def test_kbit_bursts_match_the_planner(setup):
    pytest.importorskip("bitsandbytes")
    from refplan.harness.tiny import build_model
    from refplan.planner import estimate
    from refplan.resolve import resolve_model

    rec = burst(**setup)
    sc = scenario(**setup)
    est = estimate(resolve_model(str(build_model("micro"))), sc.train).peak_bytes
    assert abs(est - rec["peak_bytes"]) / rec["peak_bytes"] < 0.005, (est, rec["peak_bytes"])


def test_sync_matches_separate_until_the_first_sync():
    sep, sync = burst("dpo", "separate"), burst("dpo", "sync")
    assert abs(sep["losses"][0] - sync["losses"][0]) <= TOL
    assert sync["ref_state_bytes"] == sep["ref_state_bytes"]


def test_lower_precision_reference_drifts_and_halves_the_copy():
    sep, bf16 = burst("dpo", "separate"), burst("dpo", "separate", ref_dtype="bf16")
    assert 0 < ref_diff(sep["ref_logps"], bf16["ref_logps"]) < 1.0
    assert bf16["ref_state_bytes"] * 2 == pytest.approx(sep["ref_state_bytes"], rel=0.01)


# --------------------------------------------------------------------------------------------------
# runner: isolation, faults, resume
# --------------------------------------------------------------------------------------------------

def test_runner_turns_crash_and_timeout_into_rows_and_resumes(tmp_path, monkeypatch):
    from refplan.harness import rows as csv_rows
    from refplan.harness import runner, suites

    ok1 = scenario("orpo", "none")
    crash = scenario("simpo", "none")
    hang = scenario("simpo", "none", seed=1)
    ok2 = scenario("dpo", "separate")
    unsupported = suites.make_item({**MICRO, "method": "dpo", "strategy": "sync", "finetune": "lora"})
    assert isinstance(unsupported, suites.Unsupported)
    monkeypatch.setenv("REFPLAN_BENCH_FAULT", f"{crash.key}=crash,{hang.key}=hang")
    items = [ok1, crash, hang, ok2, unsupported]
    opts = runner.RunOptions(out_dir=tmp_path, suite="test", timeout_s=12, progress=False, report=False)
    runner.run_matrix(items, opts)

    rows = csv_rows.read_done(tmp_path / "bench.csv")
    assert list(rows) == [it.key for it in items]
    status = {k: r["status"] for k, r in rows.items()}
    assert status[ok1.key] == status[ok2.key] == "ok"
    assert status[crash.key] == "crash" and "SIGSEGV" in rows[crash.key]["error"]
    assert status[hang.key] == "timeout"
    assert status[unsupported.key] == "unsupported" and "PEFT" in rows[unsupported.key]["error"]
    assert set(csv_rows.COLUMNS) == set(next(iter(rows.values())))
    assert json.loads((tmp_path / "losses" / f"{ok2.key}.json").read_text())["losses"]

    # --resume: nothing left to run, the CSV keeps one row per scenario
    monkeypatch.setenv("REFPLAN_BENCH_FAULT", f"{ok1.key}=crash")
    runner.run_matrix(items, runner.RunOptions(out_dir=tmp_path, suite="test", resume=True, progress=False,
                                               report=True))
    again = csv_rows.read_done(tmp_path / "bench.csv")
    assert again == rows
    assert (tmp_path / "summary.md").exists() and (tmp_path / "charts" / "memory.png").exists()


def test_a_baseline_and_its_rows_are_timed_interleaved_in_one_speed_group(tmp_path, monkeypatch):
    """The runner times ``separate`` and the rows compared with it in one process, in turns (their own
    bursts run only the memory steps); a group that dies leaves every row, timed by its own burst."""
    from refplan.harness import rows as csv_rows
    from refplan.harness import runner
    from refplan.harness.speed import MEMORY_STEPS

    sep = scenario("dpo", "separate", steps=4)
    pre = scenario("dpo", "precompute", steps=4)
    orpo = scenario("orpo", "none", steps=4)
    opts = runner.RunOptions(out_dir=tmp_path / "a", suite="test", timeout_s=120, progress=False, report=False)
    runner.run_matrix([sep, pre, orpo], opts)
    rows = csv_rows.read_done(tmp_path / "a" / "bench.csv")
    group = json.loads((tmp_path / "a" / "speed" / f"{sep.key}.json").read_text())
    assert group["order"] == [sep.key, pre.key] and not group["errors"]
    assert all(len(group["step_s"][k]) == 4 for k in group["order"])
    for sc in (sep, pre):
        row = rows[sc.key]
        assert row["status"] == "ok" and row["parity_ok"] in ("baseline", "pass")
        assert row["timing"] == "interleaved x3" and int(row["memory_steps"]) == MEMORY_STEPS
        assert float(row["speed_vs_separate"]) > 0 and float(row["median_step_s"]) > 0
    assert float(rows[sep.key]["speed_vs_separate"]) == 1.0
    assert rows[orpo.key]["timing"] == "burst x3" and int(rows[orpo.key]["memory_steps"]) == 4

    monkeypatch.setenv("REFPLAN_BENCH_FAULT", f"speed:{pre.key}=crash")
    runner.run_matrix([sep, pre], runner.RunOptions(out_dir=tmp_path / "b", suite="test", timeout_s=120,
                                                    progress=False, report=False))
    rows = csv_rows.read_done(tmp_path / "b" / "bench.csv")
    assert not (tmp_path / "b" / "speed" / f"{sep.key}.json").exists()
    assert [r["status"] for r in rows.values()] == ["ok", "ok"]
    assert all(r["timing"] == f"burst x{MEMORY_STEPS - 1}" for r in rows.values())


def test_suites_expand_without_torch_errors():
    from refplan.harness import suites

    assert set(suites.shipped_suites()) == {"default", "ci", "gpu", "sharded"}
    for name in ("default", "ci", "gpu", "sharded"):
        items = suites.expand(suites.load_suite(name))
        keys = [it.key for it in items]
        assert len(keys) == len(set(keys))
        baselines = {it.key: i for i, it in enumerate(items) if isinstance(it, Scenario) and it.baseline is None}
        for i, it in enumerate(items):
            if isinstance(it, Scenario) and it.baseline is not None:
                assert baselines[it.baseline.key] < i


# --------------------------------------------------------------------------------------------------
# CLI: bad input is one line and exit 2; the bench command does not import torch at parse time
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, flag", [
    (["--model", "/nonexistent/model"], "--model"),
    (["--method", "dpo", "--strategy", "unwrap", "--finetune", "full"], "--strategy"),
    (["--method", "orpo", "--strategy", "separate"], "--strategy"),
    (["--dataset", "/nonexistent.jsonl"], "--dataset"),
    (["--method", "kto", "--batch", "1", "--list"], "--batch"),
    (["--suite", "no-such-suite"], "--suite"),
    (["--finetune", "qlora", "--quant-bits", "3", "--list"], "--quant-bits"),
    (["--finetune", "qlora", "--quant-type", "int4", "--list"], "--quant-type"),
    (["--finetune", "qlora", "--quant-compute-dtype", "fp8", "--list"], "--quant-compute-dtype"),
    (["--ref-quant", "2bit", "--list"], "--ref-quant"),
    (["--method", "dpo", "--strategy", "precompute", "--finetune", "lora", "--ref-quant", "4bit",
      "--double-quant", "--list"], "--double-quant"),
])
def test_bad_input_exits_2_naming_the_flag(argv, flag, capsys):
    from refplan.cli import main

    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0]


def test_dataset_without_needed_columns_exits_2(tmp_path, capsys):
    from refplan.cli import main

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "hello"}) + "\n")
    assert main(["bench", "--dataset", str(path), "--method", "dpo", "--list"]) == 2
    assert "--dataset" in capsys.readouterr().err
