"""`mega tune`: the study's plumbing, its files, Vertex AI's view of the space, a real run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from support import TinyPipeline, write_params
from typer.testing import CliRunner, Result

from common.cli import EXIT_INTERRUPTED
from common.contracts import LINEAGE
from common.params import ChoiceSpec, ParamsError, RangeSpec, TuneParams
from workflow import tuning
from workflow.cli import app
from workflow.tuning import (
    TrialResult,
    TrialSetup,
    read_metric,
    trial_args,
    vertex_metric,
    vertex_parameters,
    write_best,
)

runner = CliRunner()

# --- Vertex AI's study spec ---------------------------------------------------------------


def test_every_kind_of_search_becomes_its_vertex_parameter_spec() -> None:
    from google.cloud import aiplatform_v1

    spec_type = aiplatform_v1.StudySpec.ParameterSpec
    tune = TuneParams(
        space={
            "train.learning_rate": RangeSpec(min=0.0005, max=0.01, scale="log"),
            "train.augment.zoom": RangeSpec(min=0.0, max=0.3),
            "train.epochs": RangeSpec(min=2, max=16, type="int", scale="log"),
            "train.batch_size": ChoiceSpec(values=[128, 32, 64]),
            "train.model": ChoiceSpec(values=["small_cnn", "mobilenet_v3_small"]),
        }
    )
    rate, zoom, epochs, batch, model = vertex_parameters(tune)

    assert rate.parameter_id == "train.learning_rate"
    assert (rate.double_value_spec.min_value, rate.double_value_spec.max_value) == (0.0005, 0.01)
    assert rate.scale_type == spec_type.ScaleType.UNIT_LOG_SCALE
    assert zoom.parameter_id == "train.augment.zoom"
    assert (zoom.double_value_spec.min_value, zoom.double_value_spec.max_value) == (0.0, 0.3)
    assert zoom.scale_type == spec_type.ScaleType.UNIT_LINEAR_SCALE
    assert epochs.parameter_id == "train.epochs"
    assert (epochs.integer_value_spec.min_value, epochs.integer_value_spec.max_value) == (2, 16)
    assert epochs.scale_type == spec_type.ScaleType.UNIT_LOG_SCALE
    assert batch.parameter_id == "train.batch_size"
    assert list(batch.discrete_value_spec.values) == [32.0, 64.0, 128.0], "increasing"
    assert batch.scale_type == spec_type.ScaleType.SCALE_TYPE_UNSPECIFIED
    assert model.parameter_id == "train.model"
    assert list(model.categorical_value_spec.values) == ["small_cnn", "mobilenet_v3_small"]
    # Exactly one of the value specs is set in each.
    kinds = [
        spec._pb.WhichOneof("parameter_value_spec") for spec in (rate, zoom, epochs, batch, model)
    ]
    assert kinds == [
        "double_value_spec",
        "double_value_spec",
        "integer_value_spec",
        "discrete_value_spec",
        "categorical_value_spec",
    ]


def test_a_bool_choice_is_categorical_in_the_trainers_spelling() -> None:
    """Vertex AI's discrete values are numbers: true/false go as categories the trainer
    reads back as YAML booleans."""
    # No train.* key is a bool today: the spec is built from a space made without checks.
    tune = TuneParams.model_construct(space={"train.flag": ChoiceSpec(values=[True, False])})
    [flag] = vertex_parameters(tune)
    assert list(flag.categorical_value_spec.values) == ["true", "false"]


@pytest.mark.parametrize(
    ("metric", "goal"), [("val_accuracy", "MAXIMIZE"), ("val_loss", "MINIMIZE")]
)
def test_the_metric_spec_is_the_tag_the_trainer_reports(metric: str, goal: str) -> None:
    from google.cloud import aiplatform_v1

    tune = TuneParams(metric=metric, goal="maximize" if goal == "MAXIMIZE" else "minimize")
    spec = vertex_metric(tune)
    assert spec.metric_id == metric
    assert spec.goal == aiplatform_v1.StudySpec.MetricSpec.GoalType[goal]


def test_a_vertex_trial_writes_where_hypertune_and_vertex_ai_agree() -> None:
    import hypertune

    assert tuning.vertex_trial_env() == {
        "CLOUD_ML_HP_METRIC_FILE": hypertune.hypertune._DEFAULT_METRIC_PATH
    }


# --- the trial's command line and results -------------------------------------------------


def test_a_trial_runs_the_trainer_as_vertex_ai_would() -> None:
    """A local trial's command line is a Vertex AI trial's: the job's trainer arguments,
    then `--out` (Vertex AI passes AIP_MODEL_DIR instead), then the trial's values
    appended as Vertex AI appends them."""
    from workflow.vertex import TrainingRun

    run = TrainingRun(
        display_name="tune",
        data_uri="gs://b/data/processed/digits",
        output_dir="gs://b/jobs/tune-1",
        image="trainer:latest",
        labels={},
    )
    values = {"train.learning_rate": 0.0031, "train.batch_size": 64, "train.model": "small_cnn"}
    # What a HyperparameterTuningJob's trial adds to the job's arguments for these values.
    appended = ["--train.learning_rate=0.0031", "--train.batch_size=64", "--train.model=small_cnn"]

    args = trial_args(run.data_uri, "/tmp/c", run.params_uri, values)

    assert args == [*run.trainer_args(), "--out", "/tmp/c", *appended]


def test_the_metric_is_the_last_reported(tmp_path: Path) -> None:
    path = tmp_path / "metrics"
    rows = [{"val_accuracy": "0.5", "trial": "1"}, {"val_accuracy": "0.75", "trial": "1"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert read_metric(path, "val_accuracy") == 0.75
    with pytest.raises(ValueError, match="reported no val_loss"):
        read_metric(path, "val_loss")
    with pytest.raises(ValueError, match="no hypertune metric file"):
        read_metric(tmp_path / "missing", "val_accuracy")


def test_best_yaml_is_typed_by_the_schema_with_a_header(tmp_path: Path) -> None:
    path = write_best(
        tmp_path,
        {"train.learning_rate": 0.0031, "train.batch_size": 64.0},  # Vertex AI's doubles
        "mega tune (local), trial 2 of 8",
        metric="val_accuracy",
        value=0.9375,
    )
    assert path == tmp_path / "tuning" / "best.yaml"
    text = path.read_text()
    assert yaml.safe_load(text) == {"train.learning_rate": 0.0031, "train.batch_size": 64}
    assert "\ntrain.batch_size: 64\n" in text
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert "mega tune (local), trial 2 of 8" in header[0]
    assert "val_accuracy: 0.9375" in header[1]
    assert "mega run --tuned" in header[2]
    assert [p.name for p in path.parent.iterdir()] == ["best.yaml"], "no partial file left"


def test_best_yaml_refuses_what_the_schema_refuses(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"train\.batch_size=0"):
        write_best(tmp_path, {"train.batch_size": 0}, "test")
    with pytest.raises(ParamsError, match=r"train\.epochz: no such parameter"):
        write_best(tmp_path, {"train.epochz": 3}, "test")
    assert not (tmp_path / "tuning" / "best.yaml").exists()


# --- the study loop, with trials that do not train ----------------------------------------


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with params.yaml, dvc.yaml and a stats.json for its processed data."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    write_params(tmp_path, {"tune": {"trials": 4, "parallel_trials": 1}})
    processed = tmp_path / "data/processed/digits"
    processed.mkdir(parents=True)
    (processed / "stats.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fake_trials(monkeypatch: pytest.MonkeyPatch, outcomes: list[object]) -> list[dict]:
    """Replace the trainer run: trial N gets outcomes[N-1] (a value, an error line, or an
    exception to raise). Returns the values each trial was given."""
    given: list[dict] = []

    def run_trial(setup: TrialSetup, number: int, values: dict, progress: object) -> TrialResult:
        given.append(values)
        outcome = outcomes[number - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, str):
            return TrialResult(number, values, "failed", None, 1.0, f"log-{number}", outcome)
        assert isinstance(outcome, float)
        return TrialResult(number, values, "complete", outcome, 1.0, f"log-{number}")

    monkeypatch.setattr(tuning, "run_trial", run_trial)
    return given


def tune_cli(*args: str) -> Result:
    return runner.invoke(app, ["tune", *args], env={"COLUMNS": "300"})


def test_the_best_trial_is_written_and_every_trial_kept(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = fake_trials(monkeypatch, [0.5, "train: error: out of memory", 0.9, 0.7])
    result = tune_cli()
    assert result.exit_code == 0, result.output
    assert len(given) == 4, "tune.trials"
    best = yaml.safe_load((project / "tuning/best.yaml").read_text())
    assert best == {key: given[2][key] for key in ("train.learning_rate", "train.batch_size")}
    trials = json.loads((project / "tuning/trials.json").read_text())
    assert [t["state"] for t in trials["trials"]] == ["complete", "failed", "complete", "complete"]
    assert trials["trials"][1]["error"] == "train: error: out of memory"
    assert trials["interrupted"] is False
    assert "best: trial 3, val_accuracy 0.9000" in result.output
    assert "mega run --tuned" in result.output


def test_trials_option_overrides_the_count_and_sampling_is_seeded(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = fake_trials(monkeypatch, [0.5, 0.6])
    assert tune_cli("--trials", "2").exit_code == 0
    again = fake_trials(monkeypatch, [0.5, 0.6])
    assert tune_cli("--trials", "2").exit_code == 0
    assert len(first) == 2 and first == again, "tune.seed: the same study asks the same values"


def test_loss_is_minimized(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_params(project, {"tune": {"metric": "val_loss", "goal": "minimize", "trials": 3}})
    given = fake_trials(monkeypatch, [0.5, 0.2, 0.7])
    assert tune_cli().exit_code == 0
    assert yaml.safe_load((project / "tuning/best.yaml").read_text()) == given[1]


def test_every_trial_failing_exits_1_with_the_last_error(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_trials(monkeypatch, ["train: error: first", "train: error: second"])
    result = tune_cli("--trials", "2")
    assert result.exit_code == 1
    assert "mega: error: every trial failed; the last: train: error: second (log: log-2)" in (
        result.output
    )
    assert not (project / "tuning/best.yaml").exists()
    assert len(json.loads((project / "tuning/trials.json").read_text())["trials"]) == 2


def test_a_rerun_replaces_the_results_and_a_failed_one_keeps_the_best(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = project / "tuning/logs"
    logs.mkdir(parents=True)
    for number in (1, 2, 3, 4):
        (logs / f"trial-{number}.log").write_text("an earlier run")
    fake_trials(monkeypatch, [0.5, 0.6])
    assert tune_cli("--trials", "2").exit_code == 0
    assert sorted(p.name for p in logs.iterdir()) == ["trial-1.log", "trial-2.log"]
    best = (project / "tuning/best.yaml").read_text()

    fake_trials(monkeypatch, ["train: error: broken"])
    result = tune_cli("--trials", "1")
    assert result.exit_code == 1
    assert "tuning/best.yaml is left as an earlier run wrote it" in result.output
    assert (project / "tuning/best.yaml").read_text() == best
    assert len(json.loads((project / "tuning/trials.json").read_text())["trials"]) == 1


def test_ctrl_c_keeps_the_finished_trials(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    given = fake_trials(monkeypatch, [0.8, KeyboardInterrupt(), 0.9])
    result = tune_cli()
    assert result.exit_code == EXIT_INTERRUPTED
    assert yaml.safe_load((project / "tuning/best.yaml").read_text()) == given[0]
    trials = json.loads((project / "tuning/trials.json").read_text())
    assert trials["interrupted"] is True and len(trials["trials"]) == 1
    assert "interrupted" in result.output


def test_ctrl_c_before_any_trial_finished_writes_no_best(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_trials(monkeypatch, [KeyboardInterrupt()])
    result = tune_cli()
    assert result.exit_code == EXIT_INTERRUPTED
    assert "interrupted before any trial finished" in result.output
    assert not (project / "tuning/best.yaml").exists()
    assert not (project / "tuning/trials.json").exists()


def test_ctrl_c_after_failed_trials_only(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_trials(monkeypatch, ["train: error: broken", KeyboardInterrupt()])
    result = tune_cli()
    assert result.exit_code == EXIT_INTERRUPTED
    assert "every trial failed; the last: train: error: broken" in result.output
    assert len(json.loads((project / "tuning/trials.json").read_text())["trials"]) == 1


def test_without_processed_data_it_says_to_process_first(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.rmtree(project / "data")
    given = fake_trials(monkeypatch, [0.5])
    result = tune_cli()
    assert result.exit_code == 2
    assert "no processed data in data/processed/digits; run `mega process` first" in result.output
    assert not given


def test_a_bad_tune_section_fails_before_any_trial(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_params(project, {"tune": {"metric": "val_loss"}})
    given = fake_trials(monkeypatch, [0.5])
    result = tune_cli()
    assert result.exit_code == 2 and "set tune.goal: minimize" in result.output
    assert not given


# --- real trials ----------------------------------------------------------------------------


def _project_on(tiny: TinyPipeline, root: Path, processed: bool = True) -> None:
    (root / "dvc.yaml").write_text("stages: {}\n")
    space = {
        "train.learning_rate": {"min": 0.0005, "max": 0.01, "scale": "log", "type": "float"},
        "train.batch_size": {"values": [32, 64]},
    }
    write_params(
        root, {"train": {"epochs": 2}, "tune": {"trials": 2, "parallel_trials": 1, "space": space}}
    )
    target = root / "data/processed/digits"
    target.parent.mkdir(parents=True)
    if processed:
        shutil.copytree(tiny.processed, target)
    else:  # stats.json only: the trainer refuses the folder (no preprocess.json)
        target.mkdir()
        shutil.copy(tiny.processed / "stats.json", target)


@pytest.mark.slow
def test_two_real_trials_and_the_better_ones_values_in_best_yaml(
    tiny_pipeline: TinyPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _project_on(tiny_pipeline, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEGA_WANDB_MODE", "disabled")
    # A trial's candidate is removed once it ends: keep the train params it records.
    trained: dict[str, dict[str, object]] = {}
    remove = shutil.rmtree

    def keep_trained_params(path: str | Path, *args: object, **kwargs: object) -> None:
        lineage = Path(path) / LINEAGE
        if Path(path).name.startswith("candidate-") and lineage.is_file():
            trained[Path(path).name] = json.loads(lineage.read_text())["params"]["train"]
        remove(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tuning.shutil, "rmtree", keep_trained_params)
    result = tune_cli()
    assert result.exit_code == 0, result.output
    trials = json.loads((tmp_path / "tuning/trials.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["complete", "complete"], trials
    better = max(trials, key=lambda t: t["value"])
    assert yaml.safe_load((tmp_path / "tuning/best.yaml").read_text()) == better["params"]
    for trial in trials:
        log = (tmp_path / trial["log"]).read_text()
        batch, rate = trial["params"]["train.batch_size"], trial["params"]["train.learning_rate"]
        assert f"reported val_accuracy {trial['value']:.4f}" in log
        assert f"global batch {batch}" in log, "the trial trained with its own batch size"
        # The trainer trained with the trial's values, not params.yaml's.
        assert trained[f"candidate-{trial['number']}"]["learning_rate"] == rate
        assert trained[f"candidate-{trial['number']}"]["batch_size"] == batch
    assert not list(tmp_path.glob(".mega/runs/*")), "trials keep their backups in scratch"


@pytest.mark.slow
def test_real_trials_that_all_fail_exit_1_with_the_trainers_line(
    tiny_pipeline: TinyPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _project_on(tiny_pipeline, tmp_path, processed=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEGA_WANDB_MODE", "disabled")
    result = tune_cli()
    assert result.exit_code == 1, result.output
    assert "every trial failed; the last: train: error: " in result.output
    assert "preprocess.json: not found; re-run the process stage" in result.output
    assert "(log: tuning/logs/trial-2.log)" in result.output
