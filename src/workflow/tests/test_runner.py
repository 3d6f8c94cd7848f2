"""How `mega` follows dvc's output: what each stage did, and the progress it shows."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from workflow.runner import ReproResult, StageFollower

STAGES = 3


def follow(lines: list[str]) -> tuple[ReproResult, list[tuple[str, float]], str]:
    """Feed `lines`; the result, the task's (label, stages done) after each line, and
    what was printed."""
    out = io.StringIO()
    console = Console(file=out, width=200)
    result = ReproResult(returncode=1)
    with Progress(console=console, transient=True) as progress:
        follower = StageFollower(result, progress, STAGES, console)
        [task] = progress.tasks
        seen = []
        for line in lines:
            follower.feed(line)
            seen.append((task.description, task.completed))
        follower.finish(0)
        seen.append((task.description, task.completed))
    return result, seen, out.getvalue()


def test_a_run_with_nothing_to_do_says_each_stage_is_up_to_date() -> None:
    """Regression: the label stayed "starting dvc" while every stage was counted done."""
    lines = [f"Stage '{stage}' didn't change, skipping" for stage in ("a", "b", "c")]
    result, seen, _ = follow(lines)
    assert result.skipped == ["a", "b", "c"] and not result.ran
    assert seen == [
        ("a: up to date", 1),
        ("b: up to date", 2),
        ("c: up to date", 3),
        ("c: up to date", 3),
    ]


def test_running_restored_and_skipped_stages_each_count_once() -> None:
    lines = [
        "Running stage 'train':",
        "Epoch 1/2",
        "train: 2 epochs in 1.0s, val accuracy 0.9",
        "Stage 'evaluate' is cached - skipping run, checking out outputs",
        "Running stage 'optimize':",
        "optimize: error: the data has no test split",
    ]
    result, seen, printed = follow(lines)
    assert (result.ran, result.restored, result.skipped) == (
        ["train", "optimize"],
        ["evaluate"],
        [],
    )
    assert result.summaries == [lines[2]] and f"✓ {lines[2]}" in printed
    assert result.errors == [lines[5]]
    assert [label for label, _ in seen] == [
        "train: running",
        "train: epoch 1/2",
        "train: epoch 1/2",
        "evaluate: restored from the run cache",
        "optimize: running",
        "optimize: running",
        "optimize: running",
    ]
    # train is done once evaluate is restored; optimize once dvc exits 0.
    assert [done for _, done in seen] == [0, 0, 0, 2, 2, 2, 3]
