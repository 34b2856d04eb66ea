"""refplan: plan, measure and budget the memory of preference training (DPO, IPO, KTO, ORPO, SimPO)
under every reference-model strategy.

The planner (``refplan.planner``) is pure arithmetic and imports only the standard library; the
harness (``refplan.harness``) imports torch, transformers, peft and trl inside its own modules.
"""

__version__ = "0.1.0"
