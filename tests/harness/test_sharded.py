"""Sharded bursts: the config writer, the sharding proof (a silent DDP fallback is a failure), the
per-rank collection, and -- slow -- one real 2-rank ZeRO-2 burst end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from refplan.errors import PlanError
from refplan.harness import launch
from refplan.harness.scenario import Scenario


def _sc(**kw):
    flat = dict(method="dpo", strategy="separate", finetune="full", model="random:micro", batch=2, seq=32,
                steps=2, gpus=2, sharding="zero2")
    flat.update(kw)
    return Scenario.from_dict(flat)


def test_scenario_keeps_sharding_in_key_and_flat_spelling():
    sc = _sc(sharding="zero3", gpus=3)
    assert "zero3x3" in sc.key and sc.sharded
    assert Scenario.from_dict(sc.as_dict()) == sc
    plain = Scenario.from_dict({"method": "dpo", "strategy": "separate", "model": "random:micro"})
    assert "gpus" not in plain.as_dict() and not plain.sharded


@pytest.mark.parametrize("bad, flag", [(dict(gpus=1), "--gpus"), (dict(sharding="zero1"), "--zero"),
                                       (dict(strategy="sync"), "--strategy")])
def test_scenario_refuses_what_a_burst_cannot_launch(bad, flag):
    with pytest.raises(PlanError) as e:
        _sc(**bad)
    assert e.value.where == flag


def test_deepspeed_config_uses_hf_auto_buckets_and_leaves_trainer_keys_auto():
    cfg = launch.deepspeed_config(_sc(sharding="zero3"), hidden_size=64)
    z = cfg["zero_optimization"]
    assert z["stage"] == 3 and z["reduce_bucket_size"] == 64 * 64
    assert z["stage3_param_persistence_threshold"] == 640
    assert cfg["train_micro_batch_size_per_gpu"] == "auto" and "optimizer" not in cfg
    assert launch.deepspeed_config(_sc(), 64)["zero_optimization"]["allgather_bucket_size"] == 4096


def test_accelerate_config_names_the_engine_and_ranks(tmp_path):
    acc = launch.write_configs(_sc(), tmp_path, hidden_size=64, port=29999)
    cfg = json.loads(acc.read_text())  # YAML is a superset of JSON
    assert cfg["distributed_type"] == "DEEPSPEED" and cfg["num_processes"] == 2 and cfg["use_cpu"]
    assert json.loads((tmp_path / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 2
    assert "mixed_precision" not in cfg  # accelerate refuses it beside a deepspeed_config_file
    fsdp = launch.accelerate_config(_sc(sharding="fsdp"), None, 1)
    assert fsdp["distributed_type"] == "FSDP" and fsdp["fsdp_config"]["fsdp_version"] == 2


def _trainer(dtype: str, deepspeed=False, fsdp=False):
    return SimpleNamespace(accelerator=SimpleNamespace(distributed_type=f"DistributedType.{dtype}"),
                           is_deepspeed_enabled=deepspeed, is_fsdp_enabled=fsdp, model=None, ref_model=None)


def test_proof_refuses_a_silent_ddp_fallback(monkeypatch):
    import torch.distributed as dist

    from refplan.harness import proof

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    # accelerate's FSDP config on CPU without the patch: MULTI_CPU, i.e. plain DDP
    with pytest.raises(proof.NotSharded, match="MULTI_CPU"):
        proof.check_sharded(_trainer("MULTI_CPU", fsdp=True), _sc(sharding="fsdp").train)
    with pytest.raises(proof.NotSharded, match="asked DeepSpeed"):
        proof.check_sharded(_trainer("MULTI_CPU"), _sc().train)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 1)
    with pytest.raises(proof.NotSharded, match="world size 1"):
        proof.check_sharded(_trainer("DEEPSPEED", deepspeed=True), _sc().train)


def test_proof_refuses_unsharded_parameters():
    import torch

    from refplan.harness import proof

    with pytest.raises(proof.NotSharded, match="not a DTensor"):
        proof._dtensor_shards(torch.nn.Linear(4, 4), "policy")
    with pytest.raises(proof.NotSharded, match="no ZeRO-3 partition"):
        proof._zero3_partitions(torch.nn.Linear(4, 4), "policy")


def test_collect_marks_missing_ranks_and_disagreeing_losses(tmp_path):
    ok = {"status": "ok", "error": "", "losses": [0.69, 0.5]}
    (tmp_path / "rank0.json").write_text(json.dumps(ok))
    ranks = launch.collect(tmp_path, 2, exit_code=1)
    assert ranks[1]["status"] == "crash" and ranks[0]["status"] == "ok" and "1 of 2" in ranks[0]["error"]
    (tmp_path / "rank1.json").write_text(json.dumps({**ok, "losses": [0.69, 0.4]}))
    ranks = launch.collect(tmp_path, 2)
    assert all(r["status"] == "error" and "different losses" in r["error"] for r in ranks)


@pytest.mark.slow
def test_two_rank_zero2_burst_end_to_end(tmp_path):
    """A real 2-rank ZeRO-2 DPO burst on the micro model (gloo): proof, equal losses, one record per rank
    within a few % of the planner (the first run on a machine also compiles DeepSpeed's comm op)."""
    pytest.importorskip("deepspeed")
    from refplan.harness.burst import planner_estimate

    sc = _sc(steps=2)
    res = launch.run_sharded(sc, tmp_path, timeout_s=240)
    ranks = res["ranks"]
    assert [r["status"] for r in ranks] == ["ok", "ok"], [r.get("error") for r in ranks]
    assert all(r["proof"]["zero_stage"] == 2 and r["proof"]["world_size"] == 2 for r in ranks)
    assert ranks[0]["losses"] == ranks[1]["losses"]
    est = planner_estimate(sc, ranks[0]["model_dir"])
    for r in ranks:
        assert abs(est - r["peak_bytes"]) / r["peak_bytes"] < 0.05
