"""The trainer as a tuning trial: `--<key>=<value>` overrides in, the hypertune metric out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import TinyPipeline, run_cli, write_params

from common.contracts import TUNING_METRIC_FILE_ENV, TUNING_TRIAL_ID_ENV
from common.params import TuneParams
from trainer.tuning import in_tuning_trial, parse_overrides, report_metric

# --- overrides on the command line --------------------------------------------------------


def test_overrides_are_parsed_in_order_the_last_one_winning() -> None:
    args = ["--train.epochs=2", "--train.learning_rate=3.1e-03", "--train.epochs=3", "--x.y="]
    assert parse_overrides(args) == {
        "train.epochs": "3",
        "train.learning_rate": "3.1e-03",
        "x.y": "",
    }


def test_a_value_may_follow_its_key_as_vertex_ai_passes_it() -> None:
    args = ["--train.learning_rate", "0.0031", "--train.batch_size=64", "--train.epochs", "-1"]
    assert parse_overrides(args) == {
        "train.learning_rate": "0.0031",
        "train.batch_size": "64",
        "train.epochs": "-1",
    }


TRAINER = [sys.executable, "-X", "importtime", "-m", "trainer", "train"]
BAD_ARGS = {
    "unknown key": (["--train.epochz=3"], "train.epochz: no such parameter in params.yaml"),
    "bad value": (["--train.epochs=two"], "train.epochs=two: train.epochs: Input should be"),
    "out of range": (["--train.batch_size=0"], "train.batch_size=0: train.batch_size: Input"),
    "not a choice": (["--train.model=resnet"], "train.model=resnet: train.model: Input"),
    "no value": (["--train.epochs"], "--train.epochs: give a value"),
    "no value before the next": (
        ["--train.epochs", "--train.batch_size=8"],
        "--train.epochs: give a value",
    ),
    "bad value, given apart": (["--train.epochs", "two"], "train.epochs=two: train.epochs"),
    "a mistyped option": (["--dat", "x"], "no such option: --dat"),
    "a section": (["--train=3"], "no such option: --train"),
    "a short option": (["-e", "3"], "no such option: -e"),
    "a stray argument": (["extra"], "no such option: extra"),
    "a broken tune section": (["--tune.goal=minimize"], "set tune.goal: maximize"),
}


@pytest.mark.parametrize("case", BAD_ARGS)
def test_a_bad_override_exits_2_in_one_line_before_tensorflow(case: str, tmp_path: Path) -> None:
    args, says = BAD_ARGS[case]
    write_params(tmp_path)
    result = subprocess.run(
        [*TRAINER, "--data", "nowhere", "--out", "candidate", *args],
        cwd=tmp_path,
        env={**os.environ, "MEGA_WANDB_MODE": "disabled", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 2, result
    assert len(lines) == 1 and lines[0].startswith("train: error: "), lines
    assert says in lines[0], lines[0]
    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()
    }
    assert not imported & {"tensorflow", "keras"}, "checked before TensorFlow is imported"


# --- when the metric is reported ----------------------------------------------------------

TRIALS = {
    "local trial": ({TUNING_METRIC_FILE_ENV: "/x/metrics", TUNING_TRIAL_ID_ENV: "3"}, True),
    "metric file only": ({TUNING_METRIC_FILE_ENV: "/x/metrics"}, True),
    "trial id only": ({TUNING_TRIAL_ID_ENV: "7"}, True),
    "Vertex AI trial": (
        {
            "CLUSTER_SPEC": json.dumps(
                {"cluster": {}, "task": {"type": "workerpool0", "trial": "2"}}
            )
        },
        True,
    ),
    "Vertex AI custom job": (
        {"CLUSTER_SPEC": json.dumps({"cluster": {}, "task": {"type": "workerpool0", "index": 0}})},
        False,
    ),
    "broken CLUSTER_SPEC": ({"CLUSTER_SPEC": "{"}, False),
    "CLUSTER_SPEC not an object": ({"CLUSTER_SPEC": "[1]"}, False),
    "empty variables": ({TUNING_METRIC_FILE_ENV: "", TUNING_TRIAL_ID_ENV: ""}, False),
    "a local run": ({}, False),
}


@pytest.mark.parametrize("case", TRIALS)
def test_a_tuning_trial_is_told_by_its_environment(case: str) -> None:
    environ, expected = TRIALS[case]
    assert in_tuning_trial(environ) is expected


def test_outside_a_trial_nothing_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    import hypertune

    def refuse(self: object) -> None:
        raise AssertionError("HyperTune() creates the metric file's folder: not outside a trial")

    monkeypatch.setattr(hypertune.HyperTune, "__init__", refuse)
    assert report_metric(TuneParams(), {"val_accuracy": 0.9}, 3, environ={}) is None


def test_a_trial_reports_the_metric_in_hypertunes_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metric_file = tmp_path / "hp" / "output.metrics"
    monkeypatch.setenv(TUNING_METRIC_FILE_ENV, str(metric_file))
    monkeypatch.setenv(TUNING_TRIAL_ID_ENV, "5")
    final = {"val_accuracy": 0.875, "val_loss": 0.4}
    assert report_metric(TuneParams(metric="val_loss", goal="minimize"), final, 6) == 0.4
    [line] = metric_file.read_text().splitlines()
    body = json.loads(line)
    assert (body["val_loss"], body["trial"], body["global_step"]) == ("0.4", "5", "6")


def test_a_fit_without_the_metric_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"process\.split\.val above 0"):
        report_metric(
            TuneParams(), {"loss": 0.3, "accuracy": 0.9}, 3, environ={"CLOUD_ML_TRIAL_ID": "1"}
        )


# --- a whole trial ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_trial_trains_with_its_overrides_and_reports_the_last_epoch(
    tiny_pipeline: TinyPipeline, tmp_path: Path
) -> None:
    write_params(tmp_path, {"train": {"epochs": 6, "learning_rate": 0.003}})
    train = [sys.executable, "-m", "trainer", "train", "--data"]
    metric_file = tmp_path / "trial" / "metrics"
    overrides = ["--train.epochs=2", "--train.learning_rate=0.004"]
    result = run_cli(
        [*train, str(tiny_pipeline.processed), "--out", "candidate", *overrides],
        tmp_path,
        env={
            "MEGA_WANDB_MODE": "disabled",
            TUNING_METRIC_FILE_ENV: str(metric_file),
            TUNING_TRIAL_ID_ENV: "1",
        },
    )
    history = json.loads((tmp_path / "candidate/history.json").read_text())
    assert len(history["val_accuracy"]) == 2, "--train.epochs=2 overrides params.yaml's 6"
    lineage = json.loads((tmp_path / "candidate/lineage.json").read_text())
    assert "0.004" in json.dumps(lineage), "the candidate records the overridden learning rate"
    [line] = metric_file.read_text().splitlines()
    reported = json.loads(line)
    assert float(reported["val_accuracy"]) == pytest.approx(history["val_accuracy"][-1])
    assert (reported["trial"], reported["global_step"]) == ("1", "2")
    assert f"reported val_accuracy {history['val_accuracy'][-1]:.4f}" in result.stdout
