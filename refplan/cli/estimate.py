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

    from refplan.cli.common import gather_inputs
    from refplan.gpus import get_gpu
    from refplan.output import emit, parse_format
    from refplan.query import Engine, EstimateQuery, answer
    from refplan.render import estimate_output

    parse_format(args.format)
    engine = Engine.parse(args.engine, "--engine")
    gpu = get_gpu(args.gpu) if args.gpu else None
    inputs = gather_inputs(args)
    if inputs.model.trace_only:
        from refplan.errors import PlanError

        if args.timeline:
            raise PlanError("--timeline", f"the step timeline is the formula engine's, and model_type "
                                          f"{inputs.model.family!r} has no formula family; use --plot")
        engine = Engine.TRACE  # the only engine that plans it (a note says so)
    for w in inputs.warnings:
        sys.stderr.write(f"refplan: warning: {w}\n")
    query = EstimateQuery(inputs.model, inputs.settings, inputs.methods, inputs.strategies, gpu, engine)
    result = answer(query)
    emit(estimate_output(inputs, list(result.rows), engine.value, gpu, skipped_kto=result.skipped_kto,
                         notes=result.notes), args.format)
    if args.plot or args.timeline or args.html:
        from refplan import pictures
        from refplan.query import train_specs

        if args.plot:
            pictures.estimate_plot(inputs.model, list(result.rows), gpu, args.plot)
        if args.timeline:
            pictures.timeline_plot(inputs.model, train_specs(query)[0], gpu, args.timeline)
        if args.html:
            pictures.estimate_page(inputs, list(result.rows), gpu, args.html)
    return 0
