"""Run `dvc repro` with a live stage-by-stage progress display and a log file."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from common.cli import ERROR_LINE

RUNNING = re.compile(r"^Running stage '(?P<stage>[\w-]+)'")
# Unchanged since dvc.lock: not re-run.
SKIPPED = re.compile(r"^Stage '(?P<stage>[\w-]+)' didn't change, skipping")
# Not re-run either, but its outputs replaced from DVC's run cache (the same inputs ran
# before), so what it made has changed.
RESTORED = re.compile(r"^Stage '(?P<stage>[\w-]+)' is cached - skipping run")
# dvc's report of a failed stage command, with the command's own exit status.
STAGE_FAILED = re.compile(r"^ERROR: failed to reproduce '[\w-]+': .*, exited with (?P<status>\d+)$")
EPOCH = re.compile(r"^Epoch (?P<n>\d+)/(?P<total>\d+)")
# The containers' one-line summaries, shown as they arrive.
SUMMARY = re.compile(r"^(collect|process|train|evaluate|optimize|register): (?!error:)")


@dataclass(frozen=True)
class ExperimentRun:
    """Run as a DVC experiment (`dvc exp run --temp`) instead of `dvc repro`."""

    name: str
    overrides: list[str]  # `KEY=VALUE`s for `-S`, checked beforehand
    env: dict[str, str]  # variables for the dvc process (workflow.experiments.experiment_env)


@dataclass
class ReproResult:
    returncode: int
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)  # from the run cache
    summaries: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    log_path: Path | None = None
    stage_status: int | None = None  # the failed stage command's exit status, if dvc said

    @property
    def exit_code(self) -> int:
        """What `mega` exits with: the failed stage's own status (69: a service is
        unavailable, 2: bad input), else 1."""
        return self.stage_status or 1


class StageFollower:
    """Reads dvc's output line by line into a `ReproResult` and one progress task.

    The task counts the stages done and its label says what dvc is doing: starting, a
    stage running (with its epoch), or the stage it just found up to date or restored.
    """

    def __init__(self, result: ReproResult, progress: Progress, stages: int, console: Console):
        self.result, self.progress, self.console = result, progress, console
        self.task = progress.add_task("starting dvc", total=stages)
        self.current: str | None = None  # the stage running

    def _label(self, text: str) -> None:
        self.progress.update(self.task, description=text)

    def _done(self) -> None:
        """The running stage, if any, is over."""
        if self.current is not None:
            self.progress.advance(self.task)
            self.current = None

    def feed(self, line: str) -> None:
        """Take one line of dvc's output (stripped)."""
        result = self.result
        if match := RUNNING.match(line):
            self._done()
            self.current = match["stage"]
            result.ran.append(self.current)
            self._label(f"{self.current}: running")
        elif match := SKIPPED.match(line):
            self._done()
            result.skipped.append(match["stage"])
            self.progress.advance(self.task)
            self._label(f"{match['stage']}: up to date")
        elif match := RESTORED.match(line):
            self._done()
            result.restored.append(match["stage"])
            self.progress.advance(self.task)
            self._label(f"{match['stage']}: restored from the run cache")
        elif (match := EPOCH.match(line)) and self.current:
            self._label(f"{self.current}: epoch {match['n']}/{match['total']}")
        elif ERROR_LINE.match(line):  # a stage's one-line error, shown on failure
            result.errors.append(line)
        elif match := STAGE_FAILED.match(line):
            result.stage_status = int(match["status"])
        elif SUMMARY.match(line):
            result.summaries.append(line)
            self.console.print(f"  [green]✓[/green] {line}")

    def finish(self, returncode: int) -> None:
        """dvc exited with `returncode`: a stage still running is done if it succeeded."""
        if returncode == 0:
            self._done()


def repro(
    root: Path,
    stages: list[str],
    targets: list[str],
    console: Console,
    force: bool = False,
    single: bool = False,
    experiment: ExperimentRun | None = None,
) -> ReproResult:
    """Run `dvc repro [targets]`, showing progress over `stages`; full output goes to a log.

    `single` re-runs just the targets, not the stages before them. With `experiment`,
    `dvc exp run --temp` runs them in a temporary copy (params.yaml and the workspace
    unchanged); `force` then also replaces an experiment of the same name.
    """
    log_dir = root / ".mega" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    # Microseconds and the pid: two runs started in the same second keep their own logs.
    kind = "exp" if experiment else "repro"
    log_path = log_dir / f"{kind}-{dt.datetime.now():%Y%m%d-%H%M%S-%f}-{os.getpid()}.log"
    flags = [*(["--force"] if force else []), *(["--single-item"] if single else [])]
    command = [sys.executable, "-m", "dvc", "repro", *flags, *targets]
    if experiment is not None:
        overrides = [arg for override in experiment.overrides for arg in ("-S", override)]
        command = [
            *command[:3],
            *("exp", "run", "--temp", "--name", experiment.name, *overrides),
            *flags,
            *targets,
        ]
    # Stage commands say `python`: make it this environment's, activated or not.
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        **(experiment.env if experiment else {}),
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",  # no TF C++ INFO/WARNING lines; ERROR ones (OOM) stay
    }
    result = ReproResult(returncode=1, log_path=log_path)
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} stages"),
        TimeElapsedColumn(),
    )
    with (
        log_path.open("w") as log,
        Progress(*columns, console=console, transient=True) as progress,
    ):
        follower = StageFollower(result, progress, len(stages), console)
        process = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert process.stdout is not None
        for raw_line in process.stdout:
            log.write(raw_line)
            follower.feed(raw_line.strip())
        result.returncode = process.wait()
        follower.finish(result.returncode)
    return result


def log_tail(path: Path, lines: int = 25) -> str:
    """The end of a log, for showing what went wrong."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
