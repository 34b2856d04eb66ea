"""The live view of a bench run (rich, on stderr): scenarios done with an ETA, the current step."""

from __future__ import annotations

from refplan.harness.scenario import Scenario


class Display:
    """rich progress: overall scenarios (with ETA), the current scenario's step and elapsed time."""

    def __init__(self, total: int, done: int, enabled: bool = True):
        self.enabled = enabled
        self.total, self.done = total, done

    def __enter__(self):
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=self.console, transient=False)
        self.progress.__enter__()
        self.overall = self.progress.add_task("scenarios", total=self.total, completed=self.done)
        self.current = self.progress.add_task("", total=1, visible=False)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.__exit__(*exc)
        return False

    def note(self, text: str) -> None:
        if self.enabled:
            self.progress.console.print(f"[dim]{text}[/dim]")

    def start(self, sc: Scenario) -> None:
        if self.enabled:
            t = sc.train
            ref = f" ref {t.ref_dtype.value}" if t.ref_dtype else ""
            ref += f" ref {t.ref_quant.value}" if t.ref_quant.value != "none" else ""
            self.progress.reset(self.current, total=sc.steps, completed=0, visible=True,
                                description=f"  {t.method.value} {t.strategy.value}{ref} {t.finetune.value}: step")

    def step(self, prog: tuple[int, int] | None, elapsed: float) -> None:
        if self.enabled and prog is not None:
            self.progress.update(self.current, completed=prog[0], total=max(prog[1], 1))

    def finished(self, row: dict) -> None:
        if not self.enabled:
            return
        self.progress.advance(self.overall)
        status = row.get("status")
        colour = {"ok": "green", "unsupported": "yellow"}.get(status, "red")
        peak = row.get("peak_bytes")
        peak_txt = f"{int(float(peak)) / 2**20:8.1f} MiB" if peak not in (None, "") else " " * 12
        self.progress.console.print(f"[{colour}]{status:>11}[/{colour}] {peak_txt}  {row['key']}")
        if status != "ok":
            self.progress.console.print(f"            [dim]{row.get('error', '')}[/dim]")
