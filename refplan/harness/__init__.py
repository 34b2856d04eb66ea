"""The measuring half of refplan: real TRL bursts, one scenario per process, memory by phase.

Imports torch, transformers, peft and trl inside its own modules only (``scenario`` and ``runner``
stay importable without them, so the CLI can expand a matrix cheaply).
"""
