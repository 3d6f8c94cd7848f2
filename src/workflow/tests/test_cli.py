from pathlib import Path

import pytest
from typer.testing import CliRunner

from workflow.cli import app
from workflow.runner import EPOCH, RUNNING, SKIPPED, SUMMARY

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
        "register",
        "status",
        "serve",
    ):
        assert command in result.output


def test_dvc_output_patterns() -> None:
    assert RUNNING.match("Running stage 'train':")["stage"] == "train"
    assert SKIPPED.match("Stage 'collect' didn't change, skipping")["stage"] == "collect"
    assert EPOCH.match("Epoch 3/15")["n"] == "3"
    assert SUMMARY.match("evaluate: test accuracy 0.98")
    assert not SUMMARY.match("evaluated: nothing")
    # Regression: a stage's error line was shown with a green check mark.
    assert not SUMMARY.match("process: error: class(es) with fewer than min_per_class")


def test_outside_a_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["status"], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "no dvc.yaml" in result.output


def test_invalid_params_fail_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("train: {epochs: 0}\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run"], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "train.epochs" in result.output


def test_unknown_stage_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {collect: {cmd: 'true'}}\n")
    (tmp_path / "params.yaml").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train"], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "unknown stage 'train'" in result.output
