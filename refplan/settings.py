"""Parse CLI-style string settings into a typed :class:`~refplan.spec.TrainSpec`, once."""

from __future__ import annotations

from refplan.methods import Finetune, Method, Strategy, parse_enum
from refplan.spec import TrainSpec


def train_spec_from_strings(method: str, strategy: str, finetune: str = "full", **kw) -> TrainSpec:
    return TrainSpec(method=parse_enum(Method, method, "--method"),
                     strategy=parse_enum(Strategy, strategy, "--strategy"),
                     finetune=parse_enum(Finetune, finetune, "--finetune"), **kw)
