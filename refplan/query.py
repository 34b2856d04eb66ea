"""A planning question as one typed record, and its answer: what ``refplan estimate`` (and every
command that compares methods x strategies) asks the library.

An :class:`EstimateQuery` holds a model, the shared training settings and the methods / strategies
asked for; :func:`answer` validates it once (each refusal names its flag), expands it into one
:class:`~refplan.spec.TrainSpec` per applicable method x strategy, and estimates each with the
formula engine or the trace engine. Standard library only unless the trace engine is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from refplan.errors import PlanError
from refplan.methods import Finetune, Method, Strategy, applicable_strategies, check_combination
from refplan.model import ModelSpec
from refplan.result import Estimate
from refplan.settings import Quant, _Choice
from refplan.spec import TrainSpec


class Engine(_Choice):
    FORMULA = "formula"  # pure arithmetic (refplan.planner)
    TRACE = "trace"  # one real training step on fake tensors, CPU code paths (refplan.trace; imports torch)


@dataclass(frozen=True)
class EstimateQuery:
    model: ModelSpec
    #: TrainSpec keyword arguments shared by every row (CLI spellings accepted: ``zero`` / ``fsdp``)
    settings: dict = field(hash=False)
    methods: tuple[Method, ...] | None = None  # None: every method
    strategies: tuple[Strategy, ...] | None = None  # None: every applicable strategy
    gpu: object | None = None  # refplan.gpus.GPU
    engine: Engine = Engine.FORMULA


@dataclass(frozen=True)
class EstimateAnswer:
    rows: tuple[Estimate, ...]
    #: KTO was left out because the batch is below TRL's minimum of 2
    skipped_kto: bool


def base_spec(settings: dict) -> TrainSpec:
    """The shared settings validated once, on the one combination every fine-tune mode allows
    (DPO with precompute); each row replaces method and strategy."""
    return TrainSpec.parse(method=Method.DPO, strategy=Strategy.PRECOMPUTE, **settings)


def train_specs(query: EstimateQuery) -> tuple[list[TrainSpec], bool]:
    """One TrainSpec per applicable method x strategy, and whether KTO was skipped for its batch."""
    base = base_spec(query.settings)
    ft: Finetune = base.finetune
    methods, strategies = query.methods, query.strategies
    if methods and strategies and not any(s in applicable_strategies(m, ft) for m in methods for s in strategies):
        check_combination(methods[0], strategies[0], ft, base.ref_quant)  # refuse with the reason
    if methods and Method.KTO in methods and base.batch < 2:
        raise PlanError("--batch", "KTO needs a per-device batch of at least 2")
    specs = []
    for meth in methods or list(Method):
        if meth is Method.KTO and base.batch < 2:
            continue
        for strat in applicable_strategies(meth, ft):
            if strategies and strat not in strategies:
                continue
            keeps_quant = strat in (Strategy.SEPARATE, Strategy.PRECOMPUTE)
            specs.append(replace(base, method=meth, strategy=strat,
                                 ref_quant=base.ref_quant if keeps_quant else Quant.NONE))
    if not specs:
        raise PlanError("--strategy", "no applicable method x strategy for these flags")
    return specs, (not methods or Method.KTO in methods) and base.batch < 2


def answer(query: EstimateQuery) -> EstimateAnswer:
    """Estimate every row of ``query`` with its engine."""
    specs, skipped_kto = train_specs(query)
    if query.engine is Engine.TRACE:
        from refplan.trace import check_traceable, trace_estimate

        for train in specs:
            check_traceable(train)
        estimates = [trace_estimate(query.model, train) for train in specs]
    else:
        from refplan.planner import estimate

        estimates = [estimate(query.model, train) for train in specs]
    gpu = query.gpu
    if gpu is not None:
        estimates = [replace(e, fits=e.peak_bytes <= gpu.memory_bytes, gpu=gpu.name, gpu_bytes=gpu.memory_bytes)
                     for e in estimates]
    return EstimateAnswer(tuple(estimates), skipped_kto)
