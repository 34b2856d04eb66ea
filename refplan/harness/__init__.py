"""The measuring half of refplan: real TRL bursts, one scenario per process, memory by phase.

Imports torch, transformers, peft and trl inside its own modules only (``scenario``, ``suites``,
``rows`` and ``runner`` stay importable without them, so the CLI can expand a matrix cheaply).

Modules: ``suites`` (TOML suites -> scenarios), ``runner`` (the matrix loop), ``processes`` (fork
server, spawn), ``rows`` (the CSV and parity), ``display`` (live progress), ``report`` (summary,
charts); ``child``/``server``/``burst`` run inside the scenario's process.
"""
