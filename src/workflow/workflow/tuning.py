"""Hyperparameter tuning: `mega tune` locally with Optuna, and the study as Vertex AI takes it.

A trial is one run of the trainer's own CLI, with the arguments a trial of Vertex AI's
HyperparameterTuningJob gets: `python -m trainer train --data … --out … --params …
--<dotted key>=<value>…`. The trainer reports `tune.metric` through cloudml-hypertune to
the file named by `CLOUD_ML_HP_METRIC_FILE`, set here per trial; the study reads it from
there. Optuna's ask-and-tell interface drives the loop: ask for a trial's values (seeded
TPE), run the trainer, tell the result.

Results: `tuning/best.yaml` (the best trial's dotted keys and values, `write_best`, shared
with `mega tune --on vertex`), `tuning/trials.json` (every trial) and one log per trial in
`tuning/logs/`. `tuning/` is git-ignored; `mega run --tuned` runs an experiment with
best.yaml.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from common import storage
from common.cli import ERROR_LINE, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, fail
from common.contracts import (
    STATS,
    TUNING_DEFAULT_METRIC_FILE,
    TUNING_METRIC_FILE_ENV,
    TUNING_TRIAL_ID_ENV,
)
from common.params import (
    ChoiceSpec,
    ParamsError,
    PipelineParams,
    RangeSpec,
    SearchSpec,
    TuneParams,
    apply_overrides,
)

if TYPE_CHECKING:
    import optuna
    from google.cloud import aiplatform_v1

    from workflow.project import Project

TUNING_DIR = "tuning"
BEST_FILE = "best.yaml"
TRIALS_FILE = "trials.json"
LOGS_DIR = "logs"

EPOCH = re.compile(r"^Epoch (?P<n>\d+)/(?P<total>\d+)")


def format_value(value: object) -> str:
    """A parameter value as a trial's command line carries it, read back as YAML by the
    trainer: `true`, `64`, `0.0031`, `small_cnn`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def trial_args(data: str, out: str, params_file: str, values: Mapping[str, object]) -> list[str]:
    """The trainer's arguments for one trial (after `python -m trainer`): what a Vertex AI
    trial runs (`workflow.vertex.TrainingRun.trainer_args`, its parameters appended as
    `--<dotted key>=<value>`), with `--out` for the model, which Vertex AI gives in
    AIP_MODEL_DIR instead. tests/test_tuning.py holds the two to the same shape."""
    overrides = [f"--{key}={format_value(value)}" for key, value in values.items()]
    return ["train", "--data", data, "--params", params_file, "--out", out, *overrides]


# --- the study as Vertex AI takes it ------------------------------------------------------


def vertex_parameters(tune: TuneParams) -> list[aiplatform_v1.StudySpec.ParameterSpec]:
    """`tune.space` as Vertex AI's parameter specs, in the space's order.

    A float range is a DOUBLE, an int range an INTEGER (both with a linear or log
    scale); a list of numbers is DISCRETE (sorted increasing, as Vertex AI requires);
    any other list is CATEGORICAL, its values written as the trainer reads them back
    (`format_value`).
    """
    from google.cloud import aiplatform_v1

    spec_type = aiplatform_v1.StudySpec.ParameterSpec
    scales = {
        "linear": spec_type.ScaleType.UNIT_LINEAR_SCALE,
        "log": spec_type.ScaleType.UNIT_LOG_SCALE,
    }
    specs = []
    for key, search in tune.space.items():
        if isinstance(search, RangeSpec) and search.type == "float":
            spec = spec_type(
                parameter_id=key,
                double_value_spec=spec_type.DoubleValueSpec(
                    min_value=search.min, max_value=search.max
                ),
                scale_type=scales[search.scale],
            )
        elif isinstance(search, RangeSpec):
            spec = spec_type(
                parameter_id=key,
                integer_value_spec=spec_type.IntegerValueSpec(
                    min_value=int(search.min), max_value=int(search.max)
                ),
                scale_type=scales[search.scale],
            )
        elif _numeric(search):
            spec = spec_type(
                parameter_id=key,
                discrete_value_spec=spec_type.DiscreteValueSpec(
                    values=sorted(float(v) for v in search.values)
                ),
            )
        else:
            spec = spec_type(
                parameter_id=key,
                categorical_value_spec=spec_type.CategoricalValueSpec(
                    values=[format_value(v) for v in search.values]
                ),
            )
        specs.append(spec)
    return specs


def _numeric(search: ChoiceSpec) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in search.values)


def vertex_metric(tune: TuneParams) -> aiplatform_v1.StudySpec.MetricSpec:
    """`tune.metric` and `tune.goal` as Vertex AI's metric spec; its metric_id is the tag the
    trainer reports through cloudml-hypertune."""
    from google.cloud import aiplatform_v1

    metric_type = aiplatform_v1.StudySpec.MetricSpec
    goal = (
        metric_type.GoalType.MAXIMIZE if tune.goal == "maximize" else metric_type.GoalType.MINIMIZE
    )
    return metric_type(metric_id=tune.metric, goal=goal)


def vertex_trial_env() -> dict[str, str]:
    """Environment for a HyperparameterTuningJob's trial spec: names hypertune's default
    metric file, so the trainer knows it is a trial (trainer.tuning.in_tuning_trial) even
    where Vertex AI sets neither CLOUD_ML_TRIAL_ID nor a trial in CLUSTER_SPEC."""
    return {TUNING_METRIC_FILE_ENV: TUNING_DEFAULT_METRIC_FILE}


def vertex_best(job: Any, tune: TuneParams) -> tuple[str, dict[str, object], float] | None:
    """The best succeeded trial of a finished HyperparameterTuningJob: its id, its values
    (dotted key → value, as Vertex AI gives them) and its final `tune.metric`; None when
    no trial succeeded with that metric."""
    scored = []
    for trial in job.trials:
        if trial.state.name != "SUCCEEDED":
            continue
        values = [m.value for m in trial.final_measurement.metrics if m.metric_id == tune.metric]
        if values:
            params = {p.parameter_id: p.value for p in trial.parameters}
            scored.append((values[0], str(trial.id), params))
    if not scored:
        return None
    pick = max if tune.goal == "maximize" else min
    value, trial_id, params = pick(scored, key=lambda row: row[0])
    return trial_id, params, value


# --- results ------------------------------------------------------------------------------


def typed_values(values: Mapping[str, object]) -> dict[str, object]:
    """`values` (dotted key → value, as a study returns them: Vertex AI gives 64.0 for a
    batch size) validated by the params schema and given its types (64).

    Raises ParamsError naming an unknown key or a value the schema refuses.
    """
    overrides = {key: format_value(value) for key, value in values.items()}
    checked = apply_overrides(PipelineParams(), overrides).model_dump()
    typed: dict[str, object] = {}
    for key in values:
        node: Any = checked
        for part in key.split("."):
            node = node[part]
        typed[key] = node
    return typed


def write_best(
    root: Path,
    params: Mapping[str, object],
    source: str,
    *,
    metric: str | None = None,
    value: float | None = None,
) -> Path:
    """Write the best trial's `params` (dotted key → value) to `<root>/tuning/best.yaml`,
    atomically, and return its path.

    Values are checked and typed by the params schema (`typed_values`: ParamsError when
    one is refused). A comment header says where they come from (`source`, e.g. "mega
    tune (local), trial 3 of 8"), the `metric` and its `value` when given, and the date;
    `mega run --tuned` reads the keys.
    """
    typed = typed_values(params)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = [f"# The best trial's parameters: {source}, {stamp}."]
    if metric is not None and value is not None:
        header.append(f"# {metric}: {value:.6g}")
    header.append("# `mega run --tuned` runs an experiment with them (params.yaml is unchanged).")
    body = yaml.safe_dump(typed, sort_keys=False, default_flow_style=False)
    path = root / TUNING_DIR / BEST_FILE
    storage.atomic_write_bytes(path, ("\n".join(header) + "\n" + body).encode())
    return path


@dataclass
class TrialResult:
    """One trial: its 1-based number, values, outcome and log (relative to the root)."""

    number: int
    params: dict[str, object]
    state: Literal["complete", "failed"]
    value: float | None
    seconds: float
    log: str
    error: str | None = None


@dataclass
class StudyResult:
    trials: list[TrialResult] = field(default_factory=list)
    interrupted: bool = False

    def best(self, goal: str) -> TrialResult | None:
        """The best complete trial (the first of equals), or None."""
        done = [t for t in self.trials if t.state == "complete" and t.value is not None]
        if not done:
            return None
        pick = max if goal == "maximize" else min
        return pick(done, key=lambda t: t.value or 0.0)


def read_metric(path: Path, metric: str) -> float:
    """The last value of `metric` in a cloudml-hypertune metric file (one JSON object per
    line). Raises ValueError when the file or the metric is missing."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError as exc:
        raise ValueError(f"the trial reported no {metric} (no hypertune metric file)") from exc
    for line in reversed(lines):
        if line.strip() and metric in (row := json.loads(line)):
            return float(row[metric])
    raise ValueError(f"the trial reported no {metric} in {path.name}")


# --- running a study locally --------------------------------------------------------------


def suggest(trial: optuna.Trial, space: Mapping[str, SearchSpec]) -> dict[str, object]:
    """Ask Optuna's `trial` for a value of each key of `space`."""
    values: dict[str, object] = {}
    for key, search in space.items():
        if isinstance(search, ChoiceSpec):
            values[key] = trial.suggest_categorical(key, search.values)
        elif search.type == "int":
            log = search.scale == "log"
            values[key] = trial.suggest_int(key, int(search.min), int(search.max), log=log)
        else:
            log = search.scale == "log"
            values[key] = trial.suggest_float(key, search.min, search.max, log=log)
    return values


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a study shares."""

    root: Path
    data: str  # relative to root, as the DVC stage passes it
    params_file: str
    tune: TuneParams
    work: Path  # scratch: candidates, metric files, run folders
    group: str  # the W&B group of the study's runs


def run_trial(
    setup: TrialSetup, number: int, values: dict[str, object], progress: Progress
) -> TrialResult:
    """Train once with `values` (a subprocess, its output in tuning/logs/trial-N.log) and
    read the metric it reported."""
    log = setup.root / TUNING_DIR / LOGS_DIR / f"trial-{number}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    out = setup.work / f"candidate-{number}"
    metric_file = setup.work / f"trial-{number}.metrics"
    env = {
        **os.environ,
        TUNING_METRIC_FILE_ENV: str(metric_file),
        TUNING_TRIAL_ID_ENV: str(number),
        # Its own backup folder: a trial never resumes, or cleans up, another run's backup.
        "MEGA_TRAIN_RUN_DIR": str(setup.work / f"run-{number}"),
        "WANDB_RUN_GROUP": setup.group,
        "WANDB_NAME": f"{setup.group}-trial-{number}",
    }
    command = [
        sys.executable,
        "-m",
        "trainer",
        *trial_args(setup.data, str(out), setup.params_file, values),
    ]
    task = progress.add_task(f"trial {number}", total=None)
    started = time.monotonic()
    last_error = last_line = ""
    with (
        log.open("w") as handle,
        subprocess.Popen(
            command,
            cwd=setup.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as process,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            handle.write(line)
            text = line.strip()
            if epoch := EPOCH.match(text):
                progress.update(task, completed=int(epoch["n"]) - 1, total=int(epoch["total"]))
            elif ERROR_LINE.match(text):
                last_error = text
            if text:
                last_line = text
    progress.remove_task(task)
    seconds = time.monotonic() - started
    shutil.rmtree(out, ignore_errors=True)  # a trial's model is not kept: its values are
    relative = str(log.relative_to(setup.root))
    if process.returncode != 0:
        error = last_error or last_line or f"the trainer exited with {process.returncode}"
        return TrialResult(number, values, "failed", None, seconds, relative, error)
    try:
        value = read_metric(metric_file, setup.tune.metric)
    except ValueError as exc:
        return TrialResult(number, values, "failed", None, seconds, relative, str(exc))
    if not math.isfinite(value):
        error = f"{setup.tune.metric} is {value} (the training diverged)"
        return TrialResult(number, values, "failed", None, seconds, relative, error)
    return TrialResult(number, values, "complete", value, seconds, relative)


def run_study(setup: TrialSetup, trials: int, console: Console) -> StudyResult:
    """Run `trials` trials one after another, Optuna's seeded TPE choosing each one's values
    from the ones before. Ctrl-C stops it, keeping the trials that finished."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction=setup.tune.goal, sampler=optuna.samplers.TPESampler(seed=setup.tune.seed)
    )
    result = StudyResult()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("epoch {task.completed:.0f}/{task.total}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            for number in range(1, trials + 1):
                trial = study.ask()
                values = suggest(trial, setup.tune.space)
                done = run_trial(setup, number, values, progress)
                if done.state == "complete":
                    study.tell(trial, done.value)
                else:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                result.trials.append(done)
                progress.console.print(
                    _trial_line(done, trials, setup.tune.metric), highlight=False
                )
    except KeyboardInterrupt:
        result.interrupted = True
    return result


def _values_text(values: Mapping[str, object]) -> str:
    return " ".join(f"{key}={_short(value)}" for key, value in values.items())


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else format_value(value)


def _trial_line(trial: TrialResult, total: int, metric: str) -> str:
    outcome = (
        f"{metric} {trial.value:.4f}"
        if trial.state == "complete" and trial.value is not None
        else f"failed: {trial.error} (log: {trial.log})"
    )
    values = _values_text(trial.params)
    return f"trial {trial.number}/{total}: {values} → {outcome} ({trial.seconds:.0f}s)"


def trials_table(result: StudyResult, tune: TuneParams) -> Table:
    """Every trial: its values, the metric (or why it failed) and its time; best marked."""
    best = result.best(tune.goal)
    table = Table(title=f"tuning: {tune.metric} ({tune.goal})", title_justify="left")
    table.add_column("trial", justify="right")
    for key in tune.space:
        table.add_column(key)
    table.add_column(tune.metric, justify="right")
    table.add_column("time", justify="right")
    for trial in result.trials:
        shown = f"{trial.value:.4f}" if trial.value is not None else f"failed ({trial.log})"
        mark = " ★" if trial is best else ""
        table.add_row(
            f"{trial.number}{mark}",
            *(_short(trial.params.get(key)) for key in tune.space),
            shown,
            f"{trial.seconds:.0f}s",
        )
    return table


def write_trials(root: Path, result: StudyResult, tune: TuneParams, started: str) -> Path:
    """Every trial of the study, with the settings it ran under, to tuning/trials.json."""
    path = root / TUNING_DIR / TRIALS_FILE
    storage.write_json(
        path,
        {
            "started": started,
            "interrupted": result.interrupted,
            "tune": tune.model_dump(),
            "trials": [asdict(trial) for trial in result.trials],
        },
    )
    return path


def _drop_stale_logs(root: Path, trials: int) -> None:
    """Remove the logs of trials past `trials` that an earlier, longer run left."""
    for log in (root / TUNING_DIR / LOGS_DIR).glob("trial-*.log"):
        number = log.stem.removeprefix("trial-")
        if number.isdigit() and int(number) > trials:
            log.unlink(missing_ok=True)


def run_local(project: Project, trials: int | None, console: Console) -> None:
    """`mega tune`: run params.yaml's tune: study on this machine and write its results.

    Needs the processed data (`mega process`); fails in one line otherwise, when every
    trial fails (the last one's error; exit 1) or when interrupted before any trial
    finished (exit 130). A re-run replaces the results of the one before.
    """
    tune = project.params.tune
    count = trials or tune.trials
    processed = project.processed_dir
    data = processed.relative_to(project.root).as_posix()
    if not (processed / STATS).is_file():
        fail(
            f"no processed data in {data}; run `mega process` first (trials train on it)",
            EXIT_USAGE,
        )
    started = dt.datetime.now(dt.UTC)
    console.print(
        f"tuning: {count} trial(s) on {data}, {tune.metric} to {tune.goal} over "
        f"{', '.join(tune.space)}; logs in {TUNING_DIR}/{LOGS_DIR}/"
    )
    with tempfile.TemporaryDirectory(prefix="mega-tune-") as work:
        setup = TrialSetup(
            root=project.root,
            data=data,
            params_file="params.yaml",
            tune=tune,
            work=Path(work),
            group=f"tune-{started.strftime('%Y%m%d-%H%M%S')}",
        )
        result = run_study(setup, count, console)
    if result.trials:
        write_trials(project.root, result, tune, started.isoformat(timespec="seconds"))
        _drop_stale_logs(project.root, len(result.trials))
        console.print(trials_table(result, tune))
    best = result.best(tune.goal)
    if best is None:
        if not result.trials:
            fail("interrupted before any trial finished; no results written", EXIT_INTERRUPTED)
        last = result.trials[-1]
        kept = (
            f"; {TUNING_DIR}/{BEST_FILE} is left as an earlier run wrote it"
            if (project.root / TUNING_DIR / BEST_FILE).exists()
            else ""
        )
        fail(
            f"every trial failed; the last: {last.error} (log: {last.log}){kept}",
            EXIT_INTERRUPTED if result.interrupted else EXIT_FAILURE,
        )
    assert best.value is not None
    try:
        path = write_best(
            project.root,
            best.params,
            f"mega tune (local), trial {best.number} of {len(result.trials)}",
            metric=tune.metric,
            value=best.value,
        )
    except ParamsError as exc:  # the space is checked against the schema: a bug if seen
        fail(exc)
    stopped = " (interrupted: the finished trials count)" if result.interrupted else ""
    console.print(
        f"best: trial {best.number}, {tune.metric} {best.value:.4f} with "
        f"{_values_text(best.params)}{stopped}; in {path.relative_to(project.root)} "
        f"(all trials: {TUNING_DIR}/{TRIALS_FILE}). `mega run --tuned` runs an experiment "
        "with them."
    )
    if result.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
