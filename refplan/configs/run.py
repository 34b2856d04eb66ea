"""What a config file resolves to: the run it describes, every setting with its origin."""

from __future__ import annotations

from dataclasses import dataclass, field

from refplan.configs.source import Origin, Source
from refplan.methods import Method, Strategy


@dataclass
class Resolution:
    """Builder the importers fill: TrainSpec settings, their sources, and warnings."""

    settings: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    def set(self, key: str, value, source: Source) -> None:
        self.settings[key] = value
        self.provenance[key] = source

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)


@dataclass(frozen=True)
class ImportedRun:
    """A training run read from a user's config: what refplan estimates when given ``--config``.

    ``methods`` are the methods the file configures (a TRL config alone does not name its trainer,
    so it may be several); ``strategy`` is the reference strategy the framework ends up with for the
    methods that need one (reference-free methods get ``none``).
    """

    path: str
    framework: str  # "trl" | "axolotl" | "llamafactory"
    model: str | None
    methods: tuple[Method, ...]
    strategy: Strategy | None
    settings: dict
    provenance: dict
    warnings: tuple[str, ...] = ()
    #: TrainSpec keys whose value the user's file (or a file it names) fixed
    notes: tuple[str, ...] = ()
    #: what shapes a padded sequence, beside ``seq``: max_length, truncation_mode, pad_to_multiple_of ->
    #: (value, Source) (refplan.seqlen replays them on a dataset)
    padding: dict = field(default_factory=dict)

    def strategy_for(self, method: Method) -> Strategy:
        return self.strategy if (method.caps.needs_reference and self.strategy is not None) else Strategy.NONE

    def configured(self, method: Method, strategy: Strategy) -> bool:
        """True for the method x strategy row the file itself configures."""
        return method in self.methods and strategy is self.strategy_for(method)


def framework_default(framework: str, where: str) -> Source:
    return Source(Origin.FRAMEWORK, f"{framework} {where}")


def derived(detail: str) -> Source:
    return Source(Origin.DERIVED, detail)
