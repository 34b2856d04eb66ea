"""Speed relative to ``separate`` (refplan.harness.rows.speed): the ratio a user reads across strategies."""

from __future__ import annotations

from refplan.harness.rows import SPREAD_LIMIT_PCT, speed
from refplan.harness.scenario import Scenario, bench_train_spec


def scenario(strategy: str, finetune: str = "lora", method: str = "dpo") -> Scenario:
    return Scenario(bench_train_spec(method=method, strategy=strategy, finetune=finetune, dtype="fp32", batch=2,
                                     seq=32, device="cpu"), model="random:micro", steps=6, seed=0)


def rec(median: float, spread: float = 5.0, status: str = "ok") -> dict:
    return {"status": status, "median_step_s": median, "step_spread_pct": spread}


def test_a_strategy_is_timed_against_its_separate_row():
    unwrap = scenario("unwrap")
    assert unwrap.baseline is not None and unwrap.baseline.train.strategy.value == "separate"
    out = speed(unwrap, rec(0.5), rec(0.75))
    assert out == {"speed_vs_separate": 1.5, "speed_flag": ""}


def test_the_separate_row_is_one_and_reference_free_rows_have_none():
    sep = scenario("separate")
    assert sep.baseline is None
    assert speed(sep, rec(0.8), None) == {"speed_vs_separate": 1.0, "speed_flag": ""}
    assert speed(scenario("none", "full", "orpo"), rec(0.8), None) == {}


def test_a_wide_spread_on_either_side_flags_the_ratio():
    unwrap = scenario("unwrap")
    assert speed(unwrap, rec(0.5, SPREAD_LIMIT_PCT + 1), rec(0.5))["speed_flag"] == "noisy"
    assert speed(unwrap, rec(0.5), rec(0.5, SPREAD_LIMIT_PCT + 1))["speed_flag"] == "noisy"


def test_no_ratio_without_timed_steps_on_both_sides():
    unwrap = scenario("unwrap")
    assert speed(unwrap, rec(0.5), rec(0.5, status="crash")) == {}
    assert speed(unwrap, rec(0.5), None) == {}
    assert speed(unwrap, {"status": "ok"}, rec(0.5)) == {}
