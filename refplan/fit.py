"""``refplan fit``: the answers users bisect for by hand -- largest batch, longest context, fewest GPUs,
which strategy -- as exact boundaries of :func:`refplan.planner.estimate`.

For every method x strategy row:

- ``max_batch``: the largest per-device batch that fits at the row's length (0 when 1 does not);
  the estimate at ``max_batch`` fits and at ``max_batch + 1`` does not;
- ``max_seq``: the longest padded length that fits at the row's batch, capped at the model's
  ``max_position_embeddings`` (then said so);
- ``min_gpus``: when the run does not fit on one GPU, the fewest GPUs and the sharding (ZeRO-2, ZeRO-3,
  FSDP, each with and without CPU offload of the optimizer state) that make it fit per rank, and
  one GPU fewer under that sharding does not;
- one recommendation per method: the strategy with the least compute overhead that fits, its cost,
  and what the next cheaper one would need.

Each boundary is found by a guess from two estimates (peaks grow about linearly in batch, about
quadratically at most in length, and shrink about as 1/N in GPUs), then walked to the exact step
with estimates; the planner's peak is monotonic in all three (tests/ property check).

A model without a formula family (``ModelSpec.trace_only``), or a setting only the trace engine plans
(DoRA, ``modules_to_save``, LoRA on the LM head: ``refplan.query.needs_trace``), is refused: its rows come from the trace
engine, seconds each, and the boundaries take dozens of estimates a row, sharded ones among them,
which the trace engine does not run. ``refplan estimate --batch N --seq N`` tries a size instead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from refplan.errors import PlanError
from refplan.methods import Strategy
from refplan.model import ModelSpec
from refplan.planner import estimate
from refplan.settings import Offload, Sharding
from refplan.spec import MAX_BATCH, MAX_GPUS, MAX_SEQ, TrainSpec

#: shardings tried for min_gpus, in the order preferred on a tie (no offload first: it is faster)
SHARDINGS = (
    (Sharding.ZERO2, Offload.NONE), (Sharding.FSDP, Offload.NONE), (Sharding.ZERO3, Offload.NONE),
    (Sharding.ZERO2, Offload.OPTIMIZER), (Sharding.ZERO3, Offload.OPTIMIZER),
)
#: strategies by the compute they add to training, least first (each one's cost is ``Strategy.caps.cost``)
ORDER = (Strategy.NONE, Strategy.PRECOMPUTE, Strategy.UNWRAP, Strategy.REF_ADAPTER, Strategy.SEPARATE, Strategy.SYNC)


@dataclass(frozen=True)
class FitRow:
    train: TrainSpec  # the row's setup at the asked batch and length
    peak_bytes: int  # its peak there
    fits: bool
    max_batch: int
    grad_accum: int | None  # for the requested effective batch (None: none requested)
    max_seq: int
    seq_capped: bool  # max_seq stopped at max_position_embeddings
    min_gpus: int | None  # None: fits on the GPUs given; 0: no number of GPUs reaches it
    sharding: str | None  # e.g. "zero3+offload optimizer"
    per_rank_bytes: int | None


@dataclass(frozen=True)
class FitAnswer:
    rows: tuple[FitRow, ...]
    capacity_bytes: int
    recommendations: dict  # method value -> sentence


def _fits(model: ModelSpec, train: TrainSpec, capacity: int) -> bool:
    return estimate(model, train).peak_bytes <= capacity


def _largest(ok, lo_known: int, guess: int, upper: int) -> int:
    """The largest n in [lo_known, upper] with ok(n) true, given ok(lo_known) (monotone: true then
    false). Starts from ``guess`` and gallops to a bracket, then bisects."""
    guess = min(max(guess, lo_known), upper)
    lo, hi = lo_known, None  # ok(lo) true; ok(hi) false
    step = 1
    if ok(guess):
        lo = guess
        while hi is None:
            n = min(lo + step, upper)
            if n == lo:
                return lo
            if ok(n):
                lo, step = n, step * 2
            else:
                hi = n
    else:
        hi = guess
        n = hi - 1
        while n > lo:
            if ok(n):
                lo = n
                break
            hi, step = n, step * 2
            n = max(lo, hi - step)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def max_batch(model: ModelSpec, train: TrainSpec, capacity: int) -> int:
    """The largest per-device batch at ``train.seq`` that fits (0: even the smallest does not)."""
    low = 2 if train.method.caps.kl_forward else 1  # KTO needs 2
    p1 = estimate(model, replace(train, batch=low)).peak_bytes
    if p1 > capacity:
        return 0
    p2 = estimate(model, replace(train, batch=low + 1)).peak_bytes
    slope = max(p2 - p1, 1)
    guess = low + (capacity - p1) // slope
    return _largest(lambda b: _fits(model, replace(train, batch=b), capacity), low, guess, MAX_BATCH)


def max_seq(model: ModelSpec, train: TrainSpec, capacity: int) -> tuple[int, bool]:
    """The longest padded length at ``train.batch`` that fits, and whether the model's
    ``max_position_embeddings`` capped it (0 when even 16 tokens do not fit)."""
    cap = model.config.get("max_position_embeddings") or model.config.get("n_positions")
    upper = min(int(cap), MAX_SEQ) if isinstance(cap, int) and cap > 0 else MAX_SEQ
    low = min(16, upper)
    if not _fits(model, replace(train, seq=low), capacity):
        return 0, False
    a, b = 1024, 2048
    pa, pb = (estimate(model, replace(train, seq=s)).peak_bytes for s in (a, b))
    slope = max((pb - pa) // (b - a), 1)
    guess = a + (capacity - pa) // slope if pa <= capacity else low
    n = _largest(lambda s: _fits(model, replace(train, seq=s), capacity), low, guess, upper)
    return n, n == upper and upper != MAX_SEQ


def min_gpus(model: ModelSpec, train: TrainSpec, capacity: int, max_gpus: int = 4096):
    """(fewest GPUs, sharding, per-rank peak) that fit; (0, None, None) when none fits on ``max_gpus``.

    Each sharding of :data:`SHARDINGS` gets its own fewest GPUs (the per-rank peak falls with the GPU
    count under each one); the fewest of all is reported, the first in :data:`SHARDINGS` order on a tie,
    so one GPU fewer fails under every sharding. No single sharding is the leanest at every count: under
    ZeRO-3 a policy keeps its gathered parameters from forward to backward
    (:func:`refplan.sharding_terms.zero3_gathered_bytes`), which can outweigh what it shards."""

    def at(n, s, o):
        return replace(train, gpus=n, sharding=s, offload=o)

    best = None
    for sharding, offload in SHARDINGS:
        upper = max_gpus if best is None else best[0]
        if not _fits(model, at(upper, sharding, offload), capacity):
            continue
        p2, p4 = estimate(model, at(2, sharding, offload)).peak_bytes, estimate(model, at(4, sharding, offload)).peak_bytes
        # peak ~ fixed + sharded/n: solve fixed + sharded/n = capacity from the two points
        sharded = max((p2 - p4) * 4, 1)
        fixed = p2 - sharded // 2
        guess = -(-sharded // max(capacity - fixed, 1)) if capacity > fixed else upper
        n = _smallest(lambda k: _fits(model, at(k, sharding, offload), capacity), max(1, min(guess, upper)), upper)
        if best is None or n < best[0]:
            label = sharding.value + ("+offload optimizer" if offload is not Offload.NONE else "")
            best = (n, label, estimate(model, at(n, sharding, offload)).peak_bytes)
    return best if best is not None else (0, None, None)


def _smallest(ok, guess: int, upper: int) -> int:
    """The smallest n in [1, upper] with ok(n) true (monotone: false then true; ok(upper) true): one
    more than the largest n that fails, n = 0 failing by convention."""
    return 1 + _largest(lambda n: n == 0 or not ok(n), 0, guess - 1, upper - 1)


def fit_row(model: ModelSpec, train: TrainSpec, capacity: int, effective_batch: int | None = None) -> FitRow:
    peak = estimate(model, train).peak_bytes
    fits = peak <= capacity
    mb = max_batch(model, train, capacity)
    accum = None
    if effective_batch is not None and mb > 0:
        accum = -(-effective_batch // (mb * train.gpus))
    ms, capped = max_seq(model, train, capacity)
    gpus = sharding = per_rank = None
    if not fits:
        gpus, sharding, per_rank = min_gpus(model, replace(train, gpus=1), capacity, min(MAX_GPUS, 4096))
    return FitRow(train, peak, fits, mb, accum, ms, capped, gpus, sharding, per_rank)


def recommend(rows: list[FitRow], capacity: int) -> dict:
    """One sentence per method: the least-overhead strategy that fits, its cost, and what the next
    cheaper one would need."""
    out = {}
    for method in dict.fromkeys(r.train.method for r in rows):
        mine = sorted((r for r in rows if r.train.method is method), key=lambda r: ORDER.index(r.train.strategy))
        fitting = [r for r in mine if r.fits]
        if not fitting:
            best = min((r for r in mine if r.min_gpus), key=lambda r: (r.min_gpus, ORDER.index(r.train.strategy)),
                       default=None)
            out[method.value] = (f"nothing fits on one GPU at batch {mine[0].train.batch} x {mine[0].train.seq} "
                                 "tokens" + (f"; fewest GPUs: {best.train.strategy.value} on {best.min_gpus} with "
                                             f"{best.sharding}" if best else "; no number of GPUs reaches it"))
            continue
        pick = fitting[0]
        text = f"{pick.train.strategy.value}: {pick.train.strategy.caps.cost}"
        cheaper = [r for r in mine if ORDER.index(r.train.strategy) < ORDER.index(pick.train.strategy)]
        if cheaper:
            nxt = cheaper[-1]
            over = (nxt.peak_bytes - capacity) / 2**30
            need = f"{over:.1f} GiB more"
            if nxt.max_batch:
                need += f", or batch <= {nxt.max_batch}"
            if nxt.min_gpus:
                need += f", or {nxt.min_gpus} GPUs ({nxt.sharding})"
            text += f". {nxt.train.strategy.value} would need {need}"
        out[method.value] = text
    return out


def fit(model: ModelSpec, trains: list[TrainSpec], capacity: int, effective_batch: int | None = None) -> FitAnswer:
    from refplan.query import needs_trace, untraced_setting

    if not model.trace_only and any(needs_trace(model, t) for t in trains):
        flag, why = untraced_setting(trains).split(": ", 1)
        raise PlanError(flag.split()[0], f"{why}, so only the trace engine plans it: fit's boundaries take dozens of "
                                         "estimates a row, sharded ones among them, which the trace engine does not "
                                         "run; try a size with `refplan estimate --batch N --seq N` (seconds a row)")
    if model.trace_only:
        raise PlanError("--model", f"model_type {model.family!r} has no formula family, so only the trace engine "
                                   "plans it: fit's boundaries take dozens of estimates a row, sharded ones among "
                                   "them, which the trace engine does not run; try a size with `refplan estimate "
                                   "--batch N --seq N` (seconds a row)")
    rows = [fit_row(model, t, capacity, effective_batch) for t in trains]
    return FitAnswer(tuple(rows), capacity, recommend(rows, capacity))
