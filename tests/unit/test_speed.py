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


# --------------------------------------------------------------------------------------------------
# speed groups (refplan.harness.speed): a baseline and its rows stepped in turn in one process
# --------------------------------------------------------------------------------------------------

def test_the_baton_gives_turns_round_robin_and_skips_who_left():
    import threading

    from refplan.harness.speed import Baton

    baton, order = Baton(3), []

    def worker(i: int, steps: int) -> None:
        for _ in range(steps):
            baton.wait(i)
            order.append(i)
            baton.release(i)
        baton.leave(i)

    threads = [threading.Thread(target=worker, args=(i, n)) for i, n in ((2, 3), (0, 3), (1, 1))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=10)
    assert not any(th.is_alive() for th in threads)
    assert order == [0, 1, 2, 0, 2, 0, 2]  # 1 left after one step; the others keep their order


def group(steps: dict, errors: dict | None = None) -> dict:
    return {"rounds": 6, "order": list(steps), "step_s": steps, "errors": errors or {}}


def test_a_grouped_ratio_is_the_median_of_same_round_ratios():
    from refplan.harness.speed import group_timing

    # the machine slows down 2x from round 3 on: each round's pair moves together, the ratio does not
    base = [9.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    row = [9.0, 0.5, 0.5, 1.0, 1.0, 1.0]
    g = group({"base": base, "row": row})
    out = group_timing(g, "row", "base")
    assert out["speed_vs_separate"] == 2.0 and out["speed_flag"] == ""
    assert out["median_step_s"] == 1.0 and out["timing"] == "interleaved x5"
    assert group_timing(g, "base", "base")["speed_vs_separate"] == 1.0
    # the two medians alone would say 2.0 / 1.0 here too, but not when the slow rounds differ:
    assert group_timing(group({"base": base, "row": [9.0, 1.0, 1.0, 1.0, 1.0, 1.0]}), "row", "base")[
        "speed_vs_separate"] == 2.0


def test_a_scattered_paired_ratio_is_flagged_and_a_failed_member_has_no_timing():
    from refplan.harness.speed import PAIRED_SPREAD_LIMIT_PCT, group_timing

    base = [1.0] * 6
    row = [1.0, 0.5, 1.0, 0.5, 1.0, 0.75]
    out = group_timing(group({"base": base, "row": row}), "row", "base")
    assert out["speed_flag"] == "noisy" and PAIRED_SPREAD_LIMIT_PCT == 25.0
    assert group_timing(group({"base": base, "row": row}, {"row": "RuntimeError: x"}), "row", "base") == {}
    no_base = group_timing(group({"base": base, "row": row}, {"base": "RuntimeError: x"}), "row", "base")
    assert "speed_vs_separate" not in no_base and no_base["median_step_s"] == 0.75


def test_speed_groups_are_cpu_baselines_with_their_rows():
    from refplan.harness.runner import speed_groups

    sep, unwrap, pre = scenario("separate"), scenario("unwrap"), scenario("precompute")
    orpo = scenario("none", "full", "orpo")
    lonely = scenario("separate", "full")
    groups = speed_groups([sep, orpo, unwrap, lonely, pre])
    assert list(groups) == [sep.key]
    assert [s.key for s in groups[sep.key]] == [sep.key, unwrap.key, pre.key]
