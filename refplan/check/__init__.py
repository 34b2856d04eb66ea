"""Memory budgets that fail CI: load a budgets file, check each scenario's peak, keep a baseline.

A budgets file (TOML, ``bench/budgets.toml`` by default) holds one table per named scenario, plus an
optional ``[defaults]`` table whose keys every scenario inherits::

    [defaults]
    gpu = "H100-80GB"
    tolerance = "2%"

    [llama8b-dpo-lora]
    model = "meta-llama/Llama-3.1-8B"
    method = "dpo"
    strategy = "separate"
    finetune = "lora"
    batch = 4
    seq = 2048
    budget = "60 GiB"          # or "90%" / budget_fraction = 0.9 of the gpu's memory

A scenario's training keys are :class:`~refplan.spec.TrainSpec`'s fields (:mod:`.keys`). It is
checked in one of two modes (``mode``, default ``"estimate"``):

- ``estimate``: the planner's peak (pure arithmetic, standard library only, milliseconds);
- ``measured``: the peak of a real TRL burst (``refplan.harness``), either run here or read from a
  bench CSV. Its unset fields take the harness's defaults (``random:tiny``, fp32, CPU, batch 2,
  seq 128), not the planner's.

Each check compares the peak with the budget (``now > budget`` fails) and, when the scenario has a
``tolerance`` and the baseline (``reports/baseline.json``) has an entry of the same mode, with the
baseline (``now - baseline > tolerance`` fails). Sizes are integer bytes inside; GiB is 2^30.

One concern per module: :mod:`.sizes`, :mod:`.keys`, :mod:`.budgets`, :mod:`.measure`,
:mod:`.baseline`, :mod:`.verdicts`, :mod:`.junit`, :mod:`.report`. They import the standard library
and the planner's spec modules only; the harness is imported when a measured scenario is loaded or
run, rich when a table is rendered.
"""

from refplan.check.baseline import DEFAULT_BASELINE, BaselineEntry, read_baseline, updated_baseline, write_baseline
from refplan.check.budgets import DEFAULT_BUDGETS, DEFAULTS_TABLE, MODES, BudgetScenario, load_budgets, select
from refplan.check.junit import junit_xml, write_junit
from refplan.check.keys import ALL_KEYS, BENCH_ONLY_KEYS, CHECK_KEYS, NOT_BUDGET_KEYS, TRAIN_KEYS, train_kwargs
from refplan.check.measure import (
    UNMATCHED_FIELDS,
    Measurement,
    estimate_peak,
    match_rows,
    measure,
    measurements_from_csv,
    read_csv_rows,
)
from refplan.check.report import FORMATS, document, parse_format, render
from refplan.check.sizes import Tolerance, fmt_size, parse_size
from refplan.check.verdicts import CheckRow, check, exit_code, row_record

__all__ = [
    "ALL_KEYS", "BENCH_ONLY_KEYS", "CHECK_KEYS", "DEFAULTS_TABLE", "DEFAULT_BASELINE", "DEFAULT_BUDGETS", "FORMATS",
    "MODES", "NOT_BUDGET_KEYS", "TRAIN_KEYS", "UNMATCHED_FIELDS", "BaselineEntry", "BudgetScenario", "CheckRow",
    "Measurement", "Tolerance", "check", "document", "estimate_peak", "exit_code", "fmt_size", "junit_xml",
    "load_budgets", "match_rows", "measure", "measurements_from_csv", "parse_format", "parse_size", "read_baseline",
    "read_csv_rows", "render", "row_record", "select", "train_kwargs", "updated_baseline", "write_baseline",
    "write_junit",
]
