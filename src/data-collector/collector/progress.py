"""The progress bar while collecting and the summary at the end."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from collector.collect import CollectResult


class _RateColumn(ProgressColumn):
    """Items per second, from Rich's moving average."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f}/s" if speed else "–/s", style="progress.data.speed")


class CollectProgress:
    """A Rich bar with counts (new, present, duplicate, failed) and a rate, on stderr."""

    def __init__(self, description: str, enabled: bool = True) -> None:
        self.counts = {"written": 0, "present": 0, "duplicate": 0, "failed": 0}
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TextColumn("[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/]"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task(description, total=None, ok=0, failed=0)

    def __enter__(self) -> CollectProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def set_total(self, total: int | None) -> None:
        self._progress.update(self._task, total=total)

    def advance(self, outcome: str) -> None:
        self.counts[outcome] += 1
        ok = self.counts["written"] + self.counts["present"] + self.counts["duplicate"]
        self._progress.update(self._task, advance=1, ok=ok, failed=self.counts["failed"])


def summary(result: CollectResult) -> list[str]:
    """The closing lines: the one-line summary first (the `mega` CLI shows it), then details."""
    lines = [
        f"collect: {result.total} items in {result.out} ({result.written} written, "
        f"{result.already_present} already present, {result.duplicates} duplicates, "
        f"{len(result.failed)} failed)"
    ]
    if result.requests:
        lines.append(f"  HTTP requests: {result.requests} (retries included)")
    if result.failed:
        reasons = result.failures_by_reason().most_common()
        lines.append("  failed by reason:")
        lines += [f"    {count:>6}  {reason}" for reason, count in reasons]
        lines.append(f"  every failure with its item: {result.report}")
    return lines
