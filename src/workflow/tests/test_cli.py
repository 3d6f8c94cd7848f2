import json
import subprocess
import sys
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console
from typer.testing import CliRunner

from common.contracts import Metrics, SplitMetrics
from workflow.cli import _summary, app
from workflow.project import Project, RegisteredModel
from workflow.runner import (
    EPOCH,
    RESTORED,
    RUNNING,
    SKIPPED,
    STAGE_FAILED,
    SUMMARY,
    ReproResult,
)

runner = CliRunner()


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for command in (
        "run",
        "collect",
        "process",
        "train",
        "evaluate",
        "optimize",
        "register",
        "status",
        "serve",
        "build",
    ):
        assert command in result.output


def test_dvc_output_patterns() -> None:
    assert RUNNING.match("Running stage 'train':")["stage"] == "train"
    assert SKIPPED.match("Stage 'collect' didn't change, skipping")["stage"] == "collect"
    # Regression: a stage restored from DVC's run cache was in neither `ran` nor `skipped`;
    # then it was called up to date, though its outputs had just changed.
    cached = "Stage 'train' is cached - skipping run, checking out outputs"
    assert RESTORED.match(cached)["stage"] == "train"
    assert not SKIPPED.match(cached)
    failed = "ERROR: failed to reproduce 'train': failed to run: python -m trainer, exited with 69"
    assert STAGE_FAILED.match(failed)["status"] == "69"
    assert EPOCH.match("Epoch 3/15")["n"] == "3"
    assert SUMMARY.match("evaluate: test accuracy 0.98")
    assert SUMMARY.match("optimize: 7 variants measured in LiteRT; eligible to serve: int8")
    assert not SUMMARY.match("evaluated: nothing")
    # Regression: a stage's error line was shown with a green check mark.
    assert not SUMMARY.match("process: error: class(es) with fewer than min_per_class")


# dvc's output → the reason shown after `mega: error:`, for every command that reads it.
DVC_OUTPUTS = {
    "one error": ("Collecting\nERROR: unexpected error - boom\n", "unexpected error - boom"),
    "the last error wins": ("ERROR: first\nWARNING: w\nERROR: second\n", "second"),
    "no error line": ("Traceback (most recent call last):\n  ...\n", None),
    "an empty error": ("ERROR: \n", None),
    "no output": ("", None),
}


@pytest.mark.parametrize(("output", "reason"), DVC_OUTPUTS.values(), ids=DVC_OUTPUTS)
def test_dvc_errors_are_read_one_way(output: str, reason: str | None) -> None:
    from workflow.cli import _pull_failure
    from workflow.project import dvc_error

    assert dvc_error(output, "the default") == (reason or "the default")
    # Regression: `mega data checkout` repeated dvc's "ERROR:" inside its own error line.
    assert _pull_failure(output) == (reason or "dvc pull failed")


@pytest.mark.parametrize(
    "line", ["train: error: epochs must be > 0", "data-collector: error: x", "mega: error: y"]
)
def test_a_stage_error_line_is_one_pattern(line: str) -> None:
    from common.cli import ERROR_LINE

    assert ERROR_LINE.match(line)
    assert not ERROR_LINE.match(f"  {line}") and not ERROR_LINE.match("train: 3 epochs")


def test_outside_a_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["status"], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "mega: error: no dvc.yaml" in result.output


def test_invalid_params_fail_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("train: {epochs: 0}\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run"], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert result.output.startswith("mega: error: ")
    assert "params.yaml: invalid parameters: train.epochs" in result.output


def test_unknown_stage_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {collect: {cmd: 'true'}}\n")
    (tmp_path / "params.yaml").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train"], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "mega: error: unknown stage 'train'" in result.output


LOCK = """schema: '2.0'
stages:
  process:
    cmd: 'true'
    outs:
    - path: data/processed/digits
      hash: md5
      md5: {md5}.dir
      size: 1
      nfiles: 1
"""


@pytest.fixture
def history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose git history records two data versions that no cache or remote holds."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    (tmp_path / "dvc.yaml").write_text(
        "stages: {process: {cmd: 'true', outs: [data/processed/digits]}}\n"
    )
    (tmp_path / "params.yaml").write_text("{}\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    for n, md5 in enumerate(("a" * 32, "b" * 32)):
        (tmp_path / "dvc.lock").write_text(LOCK.format(md5=md5))
        subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
        subprocess.run([*git, "commit", "-qm", f"data v{n + 1}"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_versions_whose_data_is_nowhere_are_listed_with_a_note(history: Path) -> None:
    # Regression: a fresh clone's `mega data versions` ended in DataIndexDirError.
    result = runner.invoke(app, ["data", "versions"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "data v1" in result.output and "data v2" in result.output
    assert "? (data not here)" in result.output
    # The note says why: no remote at all, or a remote that never got the data.
    assert "no DVC remote is configured" in result.output
    remote = ["remote", "add", "--local", "--default", "r", str(history / "remote")]
    subprocess.run([sys.executable, "-m", "dvc", *remote], cwd=history, check=True)
    result = runner.invoke(app, ["data", "versions"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "nor the default DVC remote (made in another clone and never pushed)" in result.output


def test_checkout_of_data_that_is_nowhere_changes_nothing(history: Path) -> None:
    lock = (history / "dvc.lock").read_bytes()
    result = runner.invoke(app, ["data", "checkout", "HEAD~1"], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    assert "mega: error: cannot restore the data of " in result.output
    assert "no DVC remote is configured" in result.output  # the first reason it fails
    remote = ["remote", "add", "--local", "--default", "r", str(history / "remote")]
    subprocess.run([sys.executable, "-m", "dvc", *remote], cwd=history, check=True)
    result = runner.invoke(app, ["data", "checkout", "HEAD~1"], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    assert "neither this clone's DVC cache nor the remote" in result.output
    # HEAD's own data is nowhere either: the line must not claim the data is unchanged.
    assert "dvc.lock is back as it was, but its data is not in this clone's DVC" in result.output
    assert (history / "dvc.lock").read_bytes() == lock
    status = subprocess.run(["git", "status", "--porcelain"], cwd=history, capture_output=True)
    assert status.stdout == b""


def test_a_broken_lock_in_history_is_no_version() -> None:
    from workflow.versions import processed_out

    assert processed_out("<<<<<<< HEAD\nstages: {\n", "data/processed/digits") is None
    assert processed_out("just text\n", "data/processed/digits") is None
    entry = processed_out(LOCK.format(md5="c" * 32), "data/processed/digits")
    assert entry is not None and entry["md5"] == "c" * 32 + ".dir"


def test_pull_without_a_remote_says_how_to_get_one(history: Path) -> None:
    result = runner.invoke(app, ["data", "pull"], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    assert "mega: error: dvc pull failed" in result.output
    assert "`make setup` configures a local default remote" in result.output


def test_a_failing_stage_without_an_error_line_shows_its_log_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage that dies without `<stage>: error:` (a crash): its log's end, then one line."""
    (tmp_path / "dvc.yaml").write_text("stages: {collect: {cmd: 'echo boom && exit 3'}}\n")
    (tmp_path / "params.yaml").write_text("{}\n")
    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True
    )
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run"], env={"COLUMNS": "300"})
    assert result.exit_code == 3  # the stage's own status
    assert "boom" in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("mega: error: the pipeline failed (dvc exit code "), last
    assert "the full log is .mega/logs/repro-" in last


def test_a_corrupt_stats_json_in_history_names_the_file_and_revision(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`mega data versions` reads each version's stats.json: a bad one is a ContractError."""
    import dvc.api

    from common.contracts import ContractError
    from workflow.versions import read_stats

    monkeypatch.setattr(dvc.api, "read", lambda *args, **kwargs: '{"dataset": 1}')
    with pytest.raises(ContractError, match=r"^data/processed/x/stats.json at abcdef12: "):
        read_stats(tmp_path, "data/processed/x", "abcdef1234567890")


def _split(accuracy: float) -> SplitMetrics:
    return SplitMetrics(accuracy=accuracy, macro_f1=accuracy, examples=176)


STAGES = ["collect", "process", "train", "evaluate", "optimize", "register"]
NO_PRODUCTION = -1.0  # no version holds the production alias


def _fake_project(
    root: Path, production_accuracy: float | None, evaluate_stale: bool = False
) -> SimpleNamespace:
    """A project as the summary and `status` read it: a candidate evaluated at 0.9943, a
    production version at `production_accuracy` (None: without metrics.json), and
    `dvc status` saying whether evaluate's own inputs changed since it ran."""
    stale = {"evaluate": [{"changed deps": {"models/candidate": "modified"}}]}
    candidate = Metrics(test=_split(0.9943))
    production = (
        None
        if production_accuracy == NO_PRODUCTION
        else RegisteredModel(
            "digits-cnn",
            "1",
            "models/digits-cnn/1",
            None if production_accuracy is None else Metrics(test=_split(production_accuracy)),
        )
    )
    return SimpleNamespace(
        root=root,
        metrics_path=root / "reports" / "metrics.json",
        stages=lambda: STAGES,
        stale_stages=lambda *stages: stale if evaluate_stale else {},
        data_stats=lambda: None,
        metrics=lambda: candidate,
        production=lambda: production,
        candidate=lambda: None,
        settings=SimpleNamespace(serve_host="127.0.0.1", serve_port=8000),
    )


def _rows(output: str) -> dict[str, str]:
    """The summary table's rows: label → value."""
    cells = [line.split("│") for line in output.splitlines() if line.startswith("│")]
    return {cell[1].strip(): cell[2].strip() for cell in cells}


@pytest.mark.parametrize(
    ("production_accuracy", "metrics_label"),
    [
        (0.9943, "test metrics"),
        (0.9990, "candidate metrics"),
        (None, "candidate metrics"),  # a production version published without metrics.json
        (NO_PRODUCTION, "test metrics"),
    ],
)
def test_summary_tells_the_candidate_from_production(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    production_accuracy: float | None,
    metrics_label: str,
) -> None:
    """A candidate the gate did not promote is not shown as if it were production's."""
    out = StringIO()
    monkeypatch.setattr("workflow.cli.console", Console(file=out, width=200))
    _summary(_fake_project(tmp_path, production_accuracy))  # type: ignore[arg-type]
    rows = _rows(out.getvalue())
    assert rows[metrics_label].startswith("accuracy 0.9943 · macro F1 0.9943 · 176 examples")
    production = rows["production model"]
    if production_accuracy == NO_PRODUCTION:
        assert production.startswith("none yet")
    elif production_accuracy is None:
        assert production == "digits-cnn version 1 · models/digits-cnn/1"
    else:
        expected = f"digits-cnn version 1 · test accuracy {production_accuracy:.4f} · models/"
        assert production.startswith(expected)


@pytest.mark.parametrize(
    ("command", "ran", "evaluate_stale", "metrics_label"),
    [
        ("train", ["train"], True, "last evaluation"),
        # optimize needs the candidate, not its evaluation: dvc retrains without evaluating
        ("optimize", ["train", "optimize"], True, "last evaluation"),
        # nothing ran, but an earlier `mega train` (or a run-cache restore) left it stale
        ("train", [], True, "last evaluation"),
        ("collect", ["collect"], False, "test metrics"),  # processed data unchanged
        ("evaluate", ["train", "evaluate"], True, "test metrics"),  # dvc ran it
    ],
)
def test_the_summary_says_when_the_metrics_are_of_an_older_candidate(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    ran: list[str],
    evaluate_stale: bool,
    metrics_label: str,
) -> None:
    """After `mega train` the metrics row is the previous candidate's, and says so."""
    project = _fake_project(tmp_path, 0.9943, evaluate_stale)
    monkeypatch.setattr("workflow.cli._project", lambda: project)
    reached = STAGES[: STAGES.index(command) + 1]
    skipped = [stage for stage in reached if stage not in ran]
    monkeypatch.setattr(
        "workflow.cli.repro", lambda *args, **kwargs: ReproResult(0, list(ran), skipped)
    )
    result = runner.invoke(app, [command], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    assert rows[metrics_label].startswith("accuracy 0.9943")
    outdated = metrics_label == "last evaluation"
    assert rows[metrics_label].endswith("(reports/metrics.json, out of date)") == outdated
    assert rows["next"].startswith("mega run" if outdated else "make serve")


@pytest.mark.parametrize(
    ("production_accuracy", "shown"),
    [(0.9943, "test accuracy 0.9943"), (None, "test accuracy unknown (no metrics.json)")],
)
def test_status_gives_production_accuracy_only_when_known(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    production_accuracy: float | None,
    shown: str,
) -> None:
    """A production version without metrics.json is not shown with an accuracy of nan."""
    monkeypatch.setattr(
        "workflow.cli._project", lambda: _fake_project(tmp_path, production_accuracy)
    )
    result = runner.invoke(app, ["status"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"digits-cnn version 1 (models/digits-cnn/1), {shown}" in result.output
    assert "nan" not in result.output


def test_status_shows_a_candidate_newer_than_production(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _fake_project(tmp_path, 0.9943)
    kept = RegisteredModel("digits-cnn", "3", "models/digits-cnn/3", Metrics(test=_split(0.93)))
    project.candidate = lambda: kept
    monkeypatch.setattr("workflow.cli._project", lambda: project)
    result = runner.invoke(app, ["status"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-2:] == [
        "production model: digits-cnn version 1 (models/digits-cnn/1), test accuracy 0.9943",
        "candidate model: digits-cnn version 3 (models/digits-cnn/3), test accuracy 0.9300; "
        "the last version the gate kept out of production",
    ]


def test_the_candidate_is_the_kept_version_newer_than_production(tmp_path: Path) -> None:
    from support import write_params

    from common.settings import Settings

    write_params(tmp_path)
    project = Project(tmp_path, Settings(models_root=str(tmp_path / "models")))
    registry = project.registry()
    assert project.candidate() is None  # an empty registry

    def publish(tag: str) -> str:
        folder = tmp_path / tag
        folder.mkdir()
        (folder / "model.tflite").write_text(tag)
        return registry.publish(folder, content_hash=tag)

    first, second, third = publish("a"), publish("b"), publish("c")
    registry.set_alias("candidate", first)
    assert project.production() is None
    assert project.candidate().version == first  # no production: any candidate is news
    registry.set_alias("production", second)
    assert project.candidate() is None  # registered before production
    Path(registry.base, "aliases.json").write_text(
        json.dumps({"production": second, "candidate": "by-hand"})
    )
    assert project.candidate() is None  # a hand-edited alias that names no version
    registry.set_alias("candidate", third)
    kept = project.candidate()
    assert kept is not None and (kept.name, kept.version, kept.metrics) == (
        registry.name,
        third,
        None,
    )


def test_a_stage_restored_from_the_run_cache_is_not_called_up_to_date(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DVC replaced train's outputs with an earlier run's: the model changed, not re-run."""
    monkeypatch.setattr("workflow.cli._project", lambda: _fake_project(tmp_path, 0.9943, True))
    restored = ReproResult(0, [], ["collect", "process"], restored=["train"])
    monkeypatch.setattr("workflow.cli.repro", lambda *args, **kwargs: restored)
    result = runner.invoke(app, ["train"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "up to date, skipped: collect, process" in lines
    assert "restored from DVC's run cache (the same inputs ran before): train" in lines
