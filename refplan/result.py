"""Typed result records: every output format (table, JSON, CSV) is rendered from these fields."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    """Live bytes at the high point of one phase of a step, by component."""

    name: str  # "precompute", "reference forward", "policy forward", "backward", "optimizer step"
    components: tuple[tuple[str, int], ...]  # (component name, bytes), all integers

    @property
    def total_bytes(self) -> int:
        return sum(b for _, b in self.components)


@dataclass(frozen=True)
class Estimate:
    """The planner's answer for one (model, TrainSpec): the peak over a timeline of phases."""

    method: str
    strategy: str
    finetune: str
    phases: tuple[Phase, ...]
    fits: bool | None = None  # None when no --gpu was named
    gpu: str | None = None
    gpu_bytes: int | None = None

    @property
    def peak_phase(self) -> Phase:
        return max(self.phases, key=lambda p: p.total_bytes)

    @property
    def peak_bytes(self) -> int:
        return self.peak_phase.total_bytes

    @property
    def components(self) -> dict[str, int]:
        """Component breakdown at the peak phase."""
        return dict(self.peak_phase.components)

    @property
    def headroom_bytes(self) -> int | None:
        return None if self.gpu_bytes is None else self.gpu_bytes - self.peak_bytes
