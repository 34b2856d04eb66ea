"""A planning question as one typed record, and its answer: what ``refplan estimate`` (and every
command that compares methods x strategies) asks the library.

An :class:`EstimateQuery` holds a model, the shared training settings and the methods / strategies
asked for; :func:`answer` validates it once (each refusal names its flag), expands it into one
:class:`~refplan.spec.TrainSpec` per applicable method x strategy, and estimates each with the
formula engine or the trace engine. Standard library only unless the trace engine is asked for, or
the model has no formula family (``ModelSpec.trace_only``): such a model is always traced, and the
answer carries a note saying so and how long it took.
"""

from __future__ import annotations

import time
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
    #: --dataset: the padded length each method's TRL path gives the examples (refplan.seqlen)
    seq_by_method: dict = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class EstimateAnswer:
    rows: tuple[Estimate, ...]
    #: KTO was left out because the batch is below TRL's minimum of 2
    skipped_kto: bool
    #: what the reader must know about how the rows were computed (the trace fallback and its time)
    notes: tuple[str, ...] = ()


#: token-embedding module names of transformers' causal LMs, as ``--lora-targets`` may name them
#: (``embed_tokens``: Llama and most; ``wte``: GPT-2, GPT-J, CodeGen; ``word_embeddings``: BLOOM, Falcon;
#: ``embed_in``: GPT-NeoX): PEFT wraps them in ``lora.Embedding``, which the formula engine has no term for
EMBEDDING_MODULES = ("embed_tokens", "wte", "word_embeddings", "embed_in")


def needs_trace(model: ModelSpec, train: TrainSpec) -> bool:
    """Only the trace engine plans this row: a model without a formula family, or a setting the formula
    engine has no term for -- DoRA's weight-norm path, modules PEFT trains in full (``modules_to_save``), a
    LoRA adapter on the LM head (ORPO/SimPO compute full logits through it; DPO/IPO/KTO refuse it) or on
    the token embeddings."""
    return model.trace_only or train.dora or bool(train.modules_to_save) or (
        train.finetune.peft and any(t in ("lm_head", *EMBEDDING_MODULES) for t in train.lora_targets))


def estimate_one(model: ModelSpec, train: TrainSpec, gpu=None) -> Estimate:
    """One row with the engine that plans it: the formula engine, or the trace engine where only it does
    (:func:`needs_trace`; what ``check`` and ``bench`` compare against)."""
    train.check_lm_head_adapter()
    if needs_trace(model, train):
        from refplan.trace import fallback_estimate

        est = fallback_estimate(model, train)
        if gpu is not None:
            est = replace(est, fits=est.peak_bytes <= gpu.memory_bytes, gpu=gpu.name, gpu_bytes=gpu.memory_bytes)
        return est
    from refplan.planner import estimate

    return estimate(model, train, gpu)


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
            specs.append(replace(base, method=meth, strategy=strat, seq=query.seq_by_method.get(meth, base.seq),
                                 ref_quant=base.ref_quant if keeps_quant else Quant.NONE))
    if not specs:
        raise PlanError("--strategy", "no applicable method x strategy for these flags")
    for spec in specs:
        spec.check_lm_head_adapter()
    return specs, (not methods or Method.KTO in methods) and base.batch < 2


def answer(query: EstimateQuery) -> EstimateAnswer:
    """Estimate every row of ``query`` with its engine."""
    specs, skipped_kto = train_specs(query)
    notes: tuple[str, ...] = ()
    if any(needs_trace(query.model, t) for t in specs):
        from refplan.trace import check_fallback, fallback_estimate

        for train in specs:
            check_fallback(query.model, train)  # refuse before any row is traced
        t0 = time.perf_counter()
        estimates = [fallback_estimate(query.model, train) for train in specs]
        notes = (trace_fallback_note(query.model, specs, time.perf_counter() - t0),)
    elif query.engine is Engine.TRACE:
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
    return EstimateAnswer(tuple(estimates), skipped_kto, notes)


def trace_fallback_note(model: ModelSpec, specs: list[TrainSpec], seconds: float) -> str:
    """The line that says a model was traced rather than computed, how, and in how long."""
    from refplan.trace import extrapolation_depths

    n1, n2, _ = extrapolation_depths(model)
    depth = (f"traced at {n1} and {n2} layers, extrapolated to {model.num_layers}" if model.num_layers > n2
             else f"traced at its {model.num_layers} layers")
    cuda = any(t.device == "cuda" for t in specs)
    why = f"model_type {model.family!r} has no formula family" if model.trace_only else untraced_setting(specs)
    return (f"{why}: estimated by the trace engine (TRL's training "
            f"step on fake tensors, {depth}) in {seconds:.1f} s for {len(specs)} row{'s' * (len(specs) != 1)}"
            + ("; CUDA figures are the CPU code path plus the CUDA context, workspace and allocator slack "
               "(unmeasured on a GPU)" if cuda else ""))


def untraced_setting(specs: list[TrainSpec]) -> str:
    """The flag that sent rows to the trace engine, and why, for the note."""
    t = next(t for t in specs if t.dora or t.modules_to_save or set(t.lora_targets) & {"lm_head", *EMBEDDING_MODULES})
    if t.dora:
        return "--dora: the formula engine has no term for DoRA's weight-norm path"
    if t.modules_to_save:
        return (f"--modules-to-save {','.join(t.modules_to_save)}: the formula engine has no term for PEFT's "
                "trained module copies")
    if "lm_head" in t.lora_targets:
        return "--lora-targets lm_head: the formula engine has no term for a LoRA adapter on the LM head"
    name = next(n for n in t.lora_targets if n in EMBEDDING_MODULES)
    return f"--lora-targets {name}: the formula engine has no term for a LoRA adapter on the token embeddings"
