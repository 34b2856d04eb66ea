"""What ``seq`` is, measured: real DPO bursts on a .jsonl whose examples exceed max_length (truncation) and one
whose examples are all shorter (padding to the longest). TRL's widest batch is what refplan.seqlen derives,
and the planner at that length matches the burst's measured peak."""

from __future__ import annotations

import json
import os
import random

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")

from refplan.harness.scenario import Scenario  # noqa: E402

pytestmark = pytest.mark.slow
MICRO = dict(model="random:micro", batch=2, steps=2, device="cpu", dtype="fp32", method="dpo", strategy="separate")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    os.environ.setdefault("REFPLAN_CACHE", str(tmp_path_factory.mktemp("refplan-cache")))
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from refplan.harness.tiny import build_model

    return build_model("micro")


def _dataset(model_dir, path, plen, clens):
    from transformers import AutoTokenizer

    from refplan.harness.tiny import single_token_words

    words, rng = single_token_words(AutoTokenizer.from_pretrained(str(model_dir))), random.Random(0)
    text = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    rows = [{"prompt": text(plen), "chosen": " " + text(c), "rejected": " " + text(3)} for c in clens]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("case, max_length, clens", [
    ("truncated", 32, [60, 50, 70, 40]),  # every example longer than max_length
    ("padded", 128, [30, 4, 5, 30]),  # every batch padded to its longest (2 rows a step)
])
def test_burst_sees_the_derived_seq_and_the_planner_matches_its_peak(model_dir, tmp_path, case, max_length, clens):
    from refplan.harness.burst import planner_estimate, run_burst
    from refplan.methods import Method
    from refplan.seqlen import Padding, Tokenizer, derive

    data = _dataset(model_dir, tmp_path / f"{case}.jsonl", 8, clens)
    d = derive(data, Tokenizer(model_dir, "--tokenizer"), Method.DPO, Padding(max_length), MICRO["batch"])
    assert (d.seq == max_length) == (case == "truncated")
    rec = run_burst(Scenario.from_dict({**MICRO, "seq": max_length, "dataset": data}))  # TRL max_length = seq
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["seq_seen"] == d.seq
    planned = planner_estimate(Scenario.from_dict({**MICRO, "seq": d.seq}), rec["model_dir"])
    err = planned / rec["peak_bytes"] - 1
    print(f"{case}: max_length {max_length}, longest {d.longest}, seq {d.seq}, measured {rec['peak_bytes']:,} B, "
          f"planned {planned:,} B ({100 * err:+.2f} %)")
    assert abs(err) <= 0.01
