"""The sharded validation matrix's draws (refplan validate --sharded) and its flag checks."""

from __future__ import annotations

import subprocess
import sys

from refplan.families import spec_from_config
from refplan.harness.scenario import bench_train_spec
from refplan.validate_sharded import METHODS, SHARDINGS, generate_sharded


def test_every_sharding_and_method_appears_and_draws_repeat():
    cases = generate_sharded(24, 0)
    assert [c.name for c, _ in cases] == [c.name for c, _ in generate_sharded(24, 0)]
    assert {s["sharding"] for _, s in cases} == set(SHARDINGS)
    assert {c.method for c, _ in cases} == {m.value for m in METHODS}
    assert any(s["gpus"] == 3 for _, s in cases)


def test_every_draw_is_a_benchable_sharded_spec_whose_weights_dominate():
    for case, shard in generate_sharded(24, 0):
        train = bench_train_spec(method=case.method, strategy=case.strategy, finetune=case.finetune, dtype="fp32",
                                 batch=case.batch, seq=case.seq, lora_r=case.lora_r, device="cpu", **shard)
        model = spec_from_config(dict(case.config), case.name, "test")
        tokens = train.batch * 2 * train.seq
        # weights (fp32) outweigh one layer's worth of activations of the batch by far
        assert model.params * 4 > 20 * tokens * model.hidden_size * 4


def test_sharded_refuses_the_quantized_matrix_naming_the_flag():
    r = subprocess.run([sys.executable, "-m", "refplan", "validate", "--sharded", "--quantized"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--sharded" in r.stderr and len(r.stderr.strip().splitlines()) == 1
