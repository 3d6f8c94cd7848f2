"""`mega run -S` / `--tuned` / `--name` and `mega exp`: parsing, checks, environment, rows.

No experiment runs here (tests/e2e/test_experiments.py runs one): the checks must fail
before dvc starts, and the dvc command and environment are captured instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import write_params
from typer.testing import CliRunner

from common.settings import Settings
from workflow import runner as runner_module
from workflow.cli import app
from workflow.experiments import (
    ExperimentError,
    baseline_commit,
    check_overrides,
    differing_params,
    experiment_env,
    experiment_name,
    hydra_value,
    parse_overrides,
    read_show,
    tuned_overrides,
)

cli = CliRunner()
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]


def texts(values: list[str]) -> list[str]:
    return [o.text for o in parse_overrides(values)]


def test_plain_changes_are_taken_with_or_without_the_file_prefix() -> None:
    assert texts(["train.epochs=2", "params.yaml:train.learning_rate=0.01"]) == [
        "train.epochs=2",
        "train.learning_rate=0.01",
    ]
    # A value with a colon is not a file prefix (dvc splits on ':' only before '=').
    assert texts(["collect.uri=gs://bucket/raw"]) == ["collect.uri=gs://bucket/raw"]
    assert [o.key for o in parse_overrides(["optimize.pruning.epochs=3"])] == [
        "optimize.pruning.epochs"
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("epochs", "-S epochs: expected KEY=VALUE with a dotted params.yaml key"),
        ("=5", "-S =5: the key is missing"),
        ("train.epochs=[1", "-S train.epochs=[1: not a KEY=VALUE dvc can read (no viable"),
        ("+train.extra=1", "only KEY=VALUE changes a key; add or remove keys by editing"),
        ("++train.epochs=1", "only KEY=VALUE changes a key"),
        ("~train.epochs", "expected KEY=VALUE"),
        ("~train.epochs=2", "only KEY=VALUE changes a key"),
        ("train.epochs=choice(1,2)", "sweeps are not run by `mega run`"),
        ("train.epochs=range(1,3)", "sweeps are not run by `mega run`"),
        ("train.model=glob(*)", "sweeps are not run by `mega run`"),
        ("other.yaml:a=1", "only keys of params.yaml can be set, not of other.yaml"),
    ],
)
def test_malformed_or_unsupported_overrides_fail_in_one_line(value: str, message: str) -> None:
    with pytest.raises(ExperimentError) as caught:
        parse_overrides([value])
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.fixture
def params(tmp_path: Path) -> Path:
    return write_params(tmp_path)


def check(params: Path, *values: str) -> Any:
    return check_overrides(params, parse_overrides(list(values)))


def test_valid_overrides_give_the_params_dvc_will_run(params: Path) -> None:
    before = params.read_bytes()
    result = check(params, "train.epochs=2", "train.learning_rate=1e-4", "train.augment.flip=none")
    assert result.train.epochs == 2
    assert result.train.learning_rate == pytest.approx(1e-4)
    assert params.read_bytes() == before  # checked on a copy


@pytest.mark.parametrize(
    ("value", "message"),
    [
        # unknown keys, with the closest key when there is one
        (
            "train.epoch=2",
            "-S train.epoch=2: unknown parameter 'train.epoch'; did you mean train.epochs?",
        ),
        ("trian.epochs=2", "did you mean train.epochs?"),
        ("zzz=1", "unknown parameter 'zzz'; params.yaml lists every key"),
        ("train.epochs.x=1", "unknown parameter 'train.epochs.x'"),
        # bad values, named by key and the schema's reason
        ("train.epochs=zero", "train.epochs: Input should be a valid integer"),
        ("train.epochs=2.5", "train.epochs: Input should be a valid integer"),
        ("train.epochs=0", "train.epochs: Input should be greater than or equal to 1"),
        ("train.model=resnet", "train.model: Input should be"),
        ("train.augment=5", "train.augment: Input should be a valid dictionary"),
        # a value valid alone but not with the rest of params.yaml
        ("collect.source=folder", "source 'folder' needs collect.uri"),
        ("process.split.train=0.9", "split ratios must sum to 1"),
    ],
)
def test_unknown_keys_and_bad_values_fail_before_dvc_starts(
    params: Path, value: str, message: str
) -> None:
    with pytest.raises(ExperimentError) as caught:
        check(params, value)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_schema_key_missing_from_params_yaml_is_explained(tmp_path: Path) -> None:
    # dvc (Hydra in struct mode) only changes keys the file has.
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 3}}))
    with pytest.raises(ExperimentError, match=r"train\.seed is not written in params\.yaml"):
        check(path, "train.seed=1")


@pytest.mark.parametrize(
    "value", [3, 0.0031, 1e-05, -2.5, True, False, None, "none", "it's", "a b", [16, 32], []]
)
def test_values_are_written_so_that_dvc_reads_them_back(value: object) -> None:
    from dvc.utils.hydra import to_hydra_overrides

    (read,) = to_hydra_overrides([f"k={hydra_value(value)}"])
    assert read.value() == value
    assert type(read.value()) is type(value)


def test_a_mapping_cannot_be_a_value() -> None:
    with pytest.raises(ExperimentError, match="a value of type dict cannot be set"):
        hydra_value({"a": 1})


def test_tuned_reads_best_yaml_as_overrides(tmp_path: Path) -> None:
    params = write_params(tmp_path)
    (tmp_path / "tuning").mkdir()
    best = {"train.learning_rate": 0.0031, "train.batch_size": 32, "train.augment.flip": "none"}
    (tmp_path / "tuning/best.yaml").write_text("# best of 8 trials\n" + yaml.safe_dump(best))
    overrides = tuned_overrides(tmp_path)
    result = check_overrides(params, parse_overrides(overrides, origin="tuning/best.yaml"))
    assert result.train.learning_rate == pytest.approx(0.0031)
    assert result.train.batch_size == 32


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "tuning/best.yaml not found: run `mega tune` first"),
        ("a: [", "tuning/best.yaml: not valid YAML"),
        ("- 1\n", "tuning/best.yaml: expected dotted params keys with values"),
        ("", "tuning/best.yaml: expected dotted params keys with values"),
        ("train.augment: {flip: none}\n", "tuning/best.yaml: a value of type dict"),
    ],
)
def test_a_missing_or_broken_best_yaml_is_one_line(
    tmp_path: Path, content: str | None, message: str
) -> None:
    if content is not None:
        (tmp_path / "tuning").mkdir()
        (tmp_path / "tuning/best.yaml").write_text(content)
    with pytest.raises(ExperimentError) as caught:
        tuned_overrides(tmp_path)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_the_environment_points_into_the_workspace_and_names_the_wandb_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # .env is git-ignored, so DVC's temporary copy has none: its settings are passed on.
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("MEGA_WANDB_PROJECT=from-dotenv\nMEGA_TRAIN_RUN_DIR=runs\n")
    monkeypatch.setenv("MEGA_GCP_PROJECT", "p")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "keys/sa.json")
    env = experiment_env(tmp_path, Settings(), "brave-owl")
    assert env["WANDB_RUN_GROUP"] == "brave-owl"
    assert env["WANDB_NAME"] == "brave-owl"
    assert env["MEGA_WANDB_PROJECT"] == "from-dotenv"
    assert env["MEGA_GCP_PROJECT"] == "p"
    # Relative paths would land in the copy DVC deletes: they are the workspace's.
    assert env["MEGA_WANDB_DIR"] == str(tmp_path / ".wandb")
    assert env["MEGA_TRAIN_RUN_DIR"] == str(tmp_path / "runs")
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == str(tmp_path / "keys/sa.json")
    # Unset settings keep their defaults in the stages; an absolute or gs:// one is kept.
    assert "MEGA_MODELS_ROOT" not in env
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/keys/sa.json")
    absolute = Settings(wandb_dir="/w", train_run_dir="gs://b/runs")
    kept = experiment_env(tmp_path, absolute, "x")
    assert (kept["MEGA_WANDB_DIR"], kept["MEGA_TRAIN_RUN_DIR"]) == ("/w", "gs://b/runs")
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in kept  # inherited as it is


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    return tmp_path


def commit(repo: Path) -> str:
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", "c"], cwd=repo, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_an_experiment_needs_a_commit(repo: Path) -> None:
    with pytest.raises(ExperimentError, match="this repository has none; commit the project"):
        baseline_commit(repo)
    head = commit(repo)
    assert baseline_commit(repo) == head


def test_names_are_checked_and_an_existing_one_is_not_overwritten(repo: Path) -> None:
    head = commit(repo)
    assert experiment_name(repo, head, "lr-0.01", replace=False) == "lr-0.01"
    for bad in ("a b", "a/b", "a..b", "x~1", "x:y", "end."):
        with pytest.raises(ExperimentError, match="is not a valid experiment name"):
            experiment_name(repo, head, bad, replace=False)
    ref = f"refs/exps/{head[:2]}/{head[2:]}/taken"
    subprocess.run(["git", "update-ref", ref, head], cwd=repo, check=True)
    with pytest.raises(ExperimentError, match=r"'taken' already exists on commit \w+; .* --force"):
        experiment_name(repo, head, "taken", replace=False)
    assert experiment_name(repo, head, "taken", replace=True) == "taken"
    drawn = experiment_name(repo, head, None, replace=False)
    assert drawn and drawn != "taken" and "-" in drawn


SHOW = [
    {
        "rev": "workspace",
        "name": None,
        "data": {
            "rev": "workspace",
            "timestamp": None,
            "params": {"params.yaml": {"data": {"train": {"epochs": 20, "seed": 1}}}},
            "metrics": {"reports/metrics.json": {"error": {"type": "FileNotFoundError"}}},
        },
        "error": None,
        "experiments": None,
    },
    {
        "rev": "a" * 40,
        "name": "main",
        "data": {
            "timestamp": "2026-12-01T02:53:12",
            "params": {"params.yaml": {"data": {"train": {"epochs": 20, "seed": 1}}}},
            "metrics": {
                "reports/metrics.json": {"data": {"test": {"accuracy": 0.99, "examples": 176}}}
            },
        },
        "error": None,
        "experiments": [
            {
                "revs": [
                    {
                        "rev": "b" * 40,
                        "name": "quick",
                        "data": {
                            "timestamp": "2026-12-01T03:00:00",
                            "params": {
                                "params.yaml": {"data": {"train": {"epochs": 2, "seed": 1}}}
                            },
                            "metrics": {
                                "reports/metrics.json": {
                                    "data": {"test": {"accuracy": 0.9, "macro_f1": 0.89}}
                                }
                            },
                        },
                        "error": None,
                        "experiments": None,
                    }
                ],
                "executor": None,
                "name": "quick",
            },
            {
                "revs": [
                    {"rev": "c" * 40, "name": "broken", "data": {}, "error": {"msg": "failed"}}
                ],
                "name": "broken",
            },
        ],
    },
]


def test_exp_show_rows_hold_each_experiments_params_and_metrics() -> None:
    rows = read_show(SHOW, "reports/metrics.json")
    assert [(r.name, r.is_experiment) for r in rows] == [
        ("workspace", False),
        ("main", False),
        ("quick", True),
        ("broken", True),
    ]
    quick = rows[2]
    assert quick.baseline == "a" * 40
    assert quick.params["train.epochs"] == 2
    assert quick.metrics == {"test.accuracy": 0.9, "test.macro_f1": 0.89}
    assert rows[0].metrics == {}  # the file's error is not a metric
    assert rows[3].error == "failed"
    assert differing_params(rows) == ["train.epochs"]


def project_at(repo: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (repo / "dvc.yaml").write_text(
        "stages: {collect: {cmd: 'true'}, train: {cmd: 'true'}, register: {cmd: 'true'}}\n"
    )
    write_params(repo)
    commit(repo)
    monkeypatch.chdir(repo)
    return repo


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-S", "train.epoch=2"], "mega: error: -S train.epoch=2: unknown parameter"),
        (["-S", "train.epochs=zero"], "train.epochs: Input should be a valid integer"),
        (["-S", "epochs"], "mega: error: -S epochs: expected KEY=VALUE"),
        (["--tuned"], "mega: error: tuning/best.yaml not found: run `mega tune` first"),
        (["--name", "a b"], "is not a valid experiment name"),
    ],
)
def test_mega_run_refuses_bad_input_before_dvc_starts(
    repo: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    project_at(repo, monkeypatch)
    started = fake_dvc(monkeypatch)
    result = cli.invoke(app, ["run", *args], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not started, "dvc was started"


class FakeDvc:
    """Stands in for the `dvc exp run` / `dvc repro` process the runner starts."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.command = command
        self.env = env
        self.stdout = iter(["Running stage 'collect':\n", "Running stage 'train':\n"])

    def wait(self) -> int:
        return 0


def fake_dvc(monkeypatch: pytest.MonkeyPatch) -> list[FakeDvc]:
    """Record each dvc process the runner starts instead of starting it (git still runs:
    the runner and the checks share the subprocess module)."""
    started: list[FakeDvc] = []
    real = subprocess.Popen

    def popen(command: list[str], *args: Any, **kwargs: Any) -> Any:
        if command[1:3] != ["-m", "dvc"]:
            return real(command, *args, **kwargs)
        started.append(FakeDvc(command, kwargs["env"]))
        return started[-1]

    monkeypatch.setattr(runner_module.subprocess, "Popen", popen)
    return started


def test_mega_run_s_runs_dvc_exp_run_temp_without_register(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project_at(repo, monkeypatch)
    (root / "tuning").mkdir()
    (root / "tuning/best.yaml").write_text("train.learning_rate: 0.0031\ntrain.epochs: 9\n")
    started = fake_dvc(monkeypatch)
    summaries: list[tuple[str, str]] = []
    monkeypatch.setattr(
        "workflow.cli._experiment_summary", lambda p, name, base: summaries.append((name, base))
    )
    params = (root / "params.yaml").read_bytes()
    args = ["run", "--tuned", "-S", "train.epochs=2", "--name", "quick"]
    result = cli.invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    [dvc] = started
    command, env = dvc.command, dvc.env
    assert command[:3] == [sys.executable, "-m", "dvc"]
    assert command[3:] == [
        "exp", "run", "--temp", "--name", "quick",
        "-S", "train.learning_rate=0.0031", "-S", "train.epochs=9", "-S", "train.epochs=2",
        "collect", "train",
    ]  # fmt: skip
    assert env["WANDB_RUN_GROUP"] == env["WANDB_NAME"] == "quick"
    assert env["MEGA_WANDB_DIR"] == str(root / ".wandb")
    assert "ran: collect, train" in result.output
    assert summaries == [("quick", baseline_commit(root))]
    assert (root / "params.yaml").read_bytes() == params
    assert list((root / ".mega/logs").glob("exp-*.log"))


def test_plain_mega_run_still_runs_dvc_repro(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project_at(repo, monkeypatch)
    started = fake_dvc(monkeypatch)
    outdated: list[bool] = []
    monkeypatch.setattr(
        "workflow.cli._summary",
        lambda project, metrics_outdated: outdated.append(metrics_outdated),
    )
    asked: list[tuple[str, ...]] = []
    monkeypatch.setattr(
        "workflow.project.Project.stale_stages", lambda self, *stages: asked.append(stages) or {}
    )
    result = cli.invoke(app, ["run"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    # The whole pipeline brings evaluate up to date: its metrics are current, unasked.
    assert outdated == [False] and asked == []
    [dvc] = started
    assert dvc.command[3:] == ["repro"]
    assert dvc.env.get("WANDB_NAME") == os.environ.get("WANDB_NAME")  # nothing added


def test_exp_diff_of_an_unknown_experiment_is_one_line(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project_at(repo, monkeypatch)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    result = cli.invoke(app, ["exp", "diff", "nope"], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert result.output.startswith("mega: error: ")
    assert "'nope'" in result.output and "`mega exp show` lists the experiments" in result.output


def test_exp_show_outside_a_dvc_repository_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    result = cli.invoke(app, ["exp", "show"], env={"COLUMNS": "300"})
    assert result.exit_code == 1, result.output
    assert result.output.startswith("mega: error: dvc exp show failed: you are not inside")
    assert len(result.output.strip().splitlines()) == 1


def test_a_bad_tuned_value_names_best_yaml(tmp_path: Path) -> None:
    params = write_params(tmp_path)
    (tmp_path / "tuning").mkdir()
    (tmp_path / "tuning/best.yaml").write_text("train.learning_rate: -1.0\n")
    origin = "tuning/best.yaml"
    with pytest.raises(ExperimentError) as caught:
        check_overrides(params, parse_overrides(tuned_overrides(tmp_path), origin), origin)
    assert str(caught.value).startswith(
        "params.yaml with tuning/best.yaml's train.learning_rate=-1.0: invalid parameters: "
        "train.learning_rate: Input should be greater than 0"
    )


def test_tuned_runs_what_mega_tune_writes(tmp_path: Path) -> None:
    """The contract between the parts: workflow.tuning.write_best → mega run --tuned."""
    from workflow.experiments import TUNED
    from workflow.tuning import write_best

    params = write_params(tmp_path)
    best = {"train.learning_rate": 0.0031, "train.batch_size": 128, "train.augment.flip": "none"}
    path = write_best(
        tmp_path, best, "mega tune (local), trial 3 of 8", metric="val_accuracy", value=0.98
    )
    assert path == tmp_path / TUNED
    overrides = parse_overrides(tuned_overrides(tmp_path), origin=str(TUNED))
    result = check_overrides(params, overrides, origin=str(TUNED))
    assert result.train.learning_rate == pytest.approx(0.0031)
    assert result.train.batch_size == 128
    assert result.train.augment.flip == "none"
