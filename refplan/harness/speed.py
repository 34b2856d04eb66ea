"""Speed relative to ``separate``, timed interleaved: one process steps a baseline and its rows in turn.

Why: on a shared machine the speed of the whole box moves between one burst and the next (another
job starts, the host's neighbours wake), and a ratio of two timings taken in two processes a minute
apart carries that drift -- two default benches back to back disagreed by up to 22 % on the same
ratio with each burst timed alone. Here every trainer of a group (the ``separate`` baseline and the
scenarios compared with it) is built in one process and trained by its own unmodified
``trainer.train()`` in its own thread; a baton lets exactly one trainer run a step at a time, in a
fixed round-robin order, so round ``k`` of every trainer is timed within seconds of the others.
Each row's speed is then the median over rounds of the *paired* ratio ``baseline step k / row
step k``: whatever slowed round ``k`` down slowed both sides of its ratio.

The memory of these scenarios is still measured by their own bursts (one process each, as
always); this process measures time only, with the tracker off. Step times use the burst's clock
(:func:`refplan.harness.burst.step_clock`: process CPU time on CPU; only one trainer runs at a time,
so the process's CPU time between a step's begin and end is that step's). CUDA runs do not use
groups: a dedicated device timed with synchronised wall clocks does not drift like a shared CPU.
"""

from __future__ import annotations

import dataclasses
import importlib
import statistics
import tempfile
import threading
import time

from refplan.harness.scenario import Scenario

#: steps a grouped scenario's own (memory) burst runs: the second step is the first with the
#: optimizer's state allocated, so it reaches every phase's peak (measured: ``bench/speed_groups.py``
#: compares the peaks of 2-step and 6-step bursts of the default suite)
MEMORY_STEPS = 2
#: the middle half of a row's paired ratios spreading wider than this (100 * IQR / median) flags it noisy
PAIRED_SPREAD_LIMIT_PCT = 25.0


class Baton:
    """Round-robin turns among ``n`` threads; a finished (or failed) thread leaves the rotation."""

    def __init__(self, n: int):
        self._cv = threading.Condition()
        self._n = n
        self._turn = 0
        self._gone: set[int] = set()

    def wait(self, i: int) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self._turn == i)

    def release(self, i: int) -> None:
        with self._cv:
            self._turn = self._next(i)
            self._cv.notify_all()

    def leave(self, i: int) -> None:
        with self._cv:
            self._gone.add(i)
            if self._turn == i:
                self._turn = self._next(i)
            self._cv.notify_all()

    def _next(self, i: int) -> int:
        for k in range(1, self._n + 1):
            j = (i + k) % self._n
            if j not in self._gone:
                return j
        return -1


def _timer_cls():
    from transformers import TrainerCallback

    from refplan.harness.burst import step_clock

    class TurnTimer(TrainerCallback):
        """Waits for this trainer's turn before each step, times the step, passes the turn on."""

        def __init__(self, baton: Baton, index: int, cuda: bool = False):
            self.baton, self.index = baton, index
            self.clock = step_clock(cuda)
            self.step_s: list[float] = []
            self._t0 = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.baton.wait(self.index)
            self._t0 = self.clock()

        def on_step_end(self, args, state, control, **kw):
            self.step_s.append(self.clock() - self._t0)
            self.baton.release(self.index)

    return TurnTimer


def run_group(scenarios: list[Scenario], rounds: int) -> dict:
    """Build every scenario's trainer here and train them interleaved for ``rounds`` steps each.

    Returns ``{"rounds", "order", "step_s": {key: [...]}, "errors": {key: line}, "wall_s"}``; a
    scenario that fails (to build or to train) is an entry in ``errors`` and leaves the rotation,
    the others go on."""
    from refplan.harness.burst import RECIPES, _datasets_scratch, _first_line
    from refplan.harness.recipes.common import load_dataset, load_tokenizer
    from refplan.harness.tiny import resolve_model_dir

    t0 = time.perf_counter()
    baton = Baton(len(scenarios))
    timer_cls = _timer_cls()
    out = {"rounds": rounds, "order": [sc.key for sc in scenarios], "step_s": {}, "errors": {}}
    trainers: list = []
    timers: list = []
    with _datasets_scratch(), tempfile.TemporaryDirectory(prefix="refplan-speed-") as scratch:
        for i, sc in enumerate(scenarios):
            timer = timer_cls(baton, i)
            timers.append(timer)
            try:
                run = dataclasses.replace(sc, steps=rounds)
                recipe = importlib.import_module(RECIPES[sc.train.method])
                model_dir = resolve_model_dir(sc.model)
                tokenizer = load_tokenizer(model_dir)
                trainers.append(recipe.build_trainer(run, model_dir, tokenizer, load_dataset(run, tokenizer),
                                                     f"{scratch}/{i}", callbacks=[timer]))
            except Exception as e:  # noqa: BLE001 -- one scenario failing never stops the group
                out["errors"][sc.key] = _first_line(e)
                trainers.append(None)
                baton.leave(i)

        def train(i: int) -> None:
            try:
                trainers[i].train()
            except Exception as e:  # noqa: BLE001
                out["errors"][scenarios[i].key] = _first_line(e)
            finally:
                baton.leave(i)

        threads = [threading.Thread(target=train, args=(i,), daemon=True)
                   for i, tr in enumerate(trainers) if tr is not None]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    for sc, timer in zip(scenarios, timers):
        out["step_s"][sc.key] = timer.step_s
    out["wall_s"] = time.perf_counter() - t0
    return out


def group_timing(group: dict | None, key: str, base_key: str | None, warmup: int = 1) -> dict:
    """A row's timing columns from its group: ``median_step_s``, ``step_spread_pct`` (of its own timed
    steps), and -- with a baseline in the group -- ``speed_vs_separate`` (median over rounds of the
    paired ratio baseline step / row step) and ``speed_flag`` (``noisy`` when the middle half of those
    ratios spreads more than :data:`PAIRED_SPREAD_LIMIT_PCT`). Empty when the group has no timed
    steps of this row."""
    steps = ((group or {}).get("step_s") or {}).get(key) or []
    timed = steps[warmup:]
    if not timed or key in (group.get("errors") or {}):
        return {}
    median = statistics.median(timed)
    out = {"median_step_s": median, "step_spread_pct": 100.0 * (max(timed) - min(timed)) / median,
           "timing": f"interleaved x{len(timed)}"}
    if base_key is None or base_key == key:
        out.update(speed_vs_separate=1.0 if base_key == key else None, speed_flag="")
        return out
    base = (group["step_s"].get(base_key) or [])[warmup:]
    paired = [b / r for b, r in zip(base, timed) if r > 0]
    if not paired or base_key in (group.get("errors") or {}):
        return out
    ratio = statistics.median(paired)
    out["speed_vs_separate"] = ratio
    out["speed_flag"] = "noisy" if _iqr_pct(paired, ratio) > PAIRED_SPREAD_LIMIT_PCT else ""
    return out


def _iqr_pct(values: list[float], median: float) -> float:
    """100 * interquartile range / median (0 for fewer than two values)."""
    if len(values) < 2 or not median:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return 100.0 * (q3 - q1) / median
