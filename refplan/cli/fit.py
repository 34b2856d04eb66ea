"""`refplan fit`: largest batch, longest context, fewest GPUs and the strategy to pick, per method x
strategy -- exact boundaries of `refplan estimate`. Standard library only (matplotlib for --plot)."""

from __future__ import annotations

from refplan.cli.common import add_train_flags


def register(sub) -> None:
    p = sub.add_parser("fit", help="largest batch, longest context, fewest GPUs, the strategy to pick",
                       description="Answer what fits on a GPU: per method x strategy the largest per-device batch "
                                   "at your length, the longest length at your batch, and -- when it does not fit -- "
                                   "the fewest GPUs and the sharding that make it fit; one recommendation per method.")
    add_train_flags(p)
    p.add_argument("--gpu", default=None, help="GPU name from the catalog (e.g. A100-40GB, H100-80GB, L4)")
    p.add_argument("--gpu-memory", default=None, help="memory of a GPU the catalog lacks, e.g. 80GiB or 24GB")
    p.add_argument("--effective-batch", type=int, default=None,
                   help="the batch you want per optimizer step over all GPUs: fit says the gradient accumulation")
    p.add_argument("--format", default="table", help="table | json | csv")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="peak against batch (or --seq's length) per "
                                                                  "strategy, with the capacity and the fit points")
    p.add_argument("--html", default=None, metavar="FILE.html", help="one self-contained page: table, pictures, "
                                                                   "settings and their origins")
    p.set_defaults(run=run)


def run(args) -> int:
    import sys

    from refplan.cli.common import gather_inputs
    from refplan.errors import PlanError
    from refplan.fit import fit
    from refplan.gpus import capacity_from_args
    from refplan.output import emit, parse_format
    from refplan.query import EstimateQuery, train_specs
    from refplan.render_fit import fit_output

    parse_format(args.format)
    if args.batch is not None and args.seq is not None:
        raise PlanError("--batch/--seq", "give one: --seq N asks for the largest batch at N tokens, --batch N for "
                                         "the longest length at batch N")
    if args.effective_batch is not None and args.effective_batch < 1:
        raise PlanError("--effective-batch", f"must be positive (got {args.effective_batch})")
    if args.batch is not None and args.dataset is not None:
        raise PlanError("--batch/--dataset", "give one: --dataset fixes the length and asks for the largest batch, "
                                             "--batch N for the longest length at batch N")
    gpu = capacity_from_args(args.gpu, args.gpu_memory)
    inputs = gather_inputs(args)
    for w in inputs.warnings:
        sys.stderr.write(f"refplan: warning: {w}\n")
    specs, skipped_kto = train_specs(EstimateQuery(inputs.model, inputs.settings, inputs.methods, inputs.strategies,
                                                   seq_by_method=inputs.seq_by_method))
    answer = fit(inputs.model, specs, gpu.memory_bytes, args.effective_batch)
    vary = "seq" if args.batch is not None else "batch"
    emit(fit_output(inputs, answer, gpu, skipped_kto, vary), args.format)
    if args.plot or args.html:
        from refplan import pictures

        if args.plot:
            pictures.fit_plot(inputs.model, answer, gpu, vary, args.plot)
        if args.html:
            pictures.fit_page(inputs, answer, gpu, vary, args.html)
    return 0
