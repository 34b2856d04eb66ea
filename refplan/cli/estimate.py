"""`refplan estimate`: the planner's face. Imports the standard library only (rich for tables)."""

from __future__ import annotations

from refplan.cli.common import add_train_flags


def register(sub) -> None:
    p = sub.add_parser("estimate", help="peak memory per method x strategy for a model (pure arithmetic)",
                       description="Estimate the per-device peak memory of preference training.")
    add_train_flags(p)
    p.add_argument("--gpu", default=None, help="GPU name for fits / does-not-fit (e.g. H100-80GB, A10G)")
    p.add_argument("--format", default="table", help="table | json | csv")
    p.add_argument("--engine", default="formula",
                   help="formula (pure arithmetic, default) | trace (one real training step on fake tensors, "
                        "CPU code paths; imports torch, seconds per row)")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="stacked bars of the components at each row's "
                                                                  "peak, with the GPU's capacity")
    p.add_argument("--timeline", default=None, metavar="FILE.png", help="memory over the moments of one step for "
                                                                      "the rows compared")
    p.add_argument("--html", default=None, metavar="FILE.html", help="one self-contained page: table, pictures, "
                                                                   "settings and their origins")
    p.set_defaults(run=run)


def run(args) -> int:
    import sys
    from dataclasses import replace

    from refplan.cli.common import gather_inputs
    from refplan.gpus import get_gpu
    from refplan.output import emit, parse_format
    from refplan.query import Engine, EstimateQuery, answer, needs_trace, train_specs
    from refplan.render import estimate_output

    parse_format(args.format)
    engine = Engine.parse(args.engine, "--engine")
    gpu = get_gpu(args.gpu) if args.gpu else None
    inputs = gather_inputs(args)
    query = EstimateQuery(inputs.model, inputs.settings, inputs.methods, inputs.strategies, gpu, engine,
                          seq_by_method=inputs.seq_by_method)
    if any(needs_trace(inputs.model, t) for t in train_specs(query)[0]):
        from refplan.errors import PlanError

        if args.timeline:
            raise PlanError("--timeline", "the step timeline is the formula engine's, and only the trace engine "
                                          "plans these rows; use --plot")
        query = replace(query, engine=Engine.TRACE)  # the only engine that plans them (a note says so)
        engine = Engine.TRACE
    for w in inputs.warnings:
        sys.stderr.write(f"refplan: warning: {w}\n")
    result = answer(query)
    emit(estimate_output(inputs, list(result.rows), engine.value, gpu, skipped_kto=result.skipped_kto,
                         notes=result.notes), args.format)
    if args.plot or args.timeline or args.html:
        from refplan import pictures

        if args.plot:
            pictures.estimate_plot(inputs.model, list(result.rows), gpu, args.plot)
        if args.timeline:
            pictures.timeline_plot(inputs.model, train_specs(query)[0], gpu, args.timeline)
        if args.html:
            pictures.estimate_page(inputs, list(result.rows), gpu, args.html)
    return 0
