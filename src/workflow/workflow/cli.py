"""`mega`: the one command for the whole pipeline."""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from common import storage
from common.cli import (
    EXIT_FAILURE,
    EXIT_USAGE,
    App,
    console_for,
    fail,
    failures_as,
    from_setting,
    version_option,
)
from common.params import ParamsError
from common.settings import get_settings
from workflow.project import Project, ProjectError, RegisteredModel, dvc_error
from workflow.runner import ReproResult, log_tail, repro

# Only for type checking: the Vertex AI client takes seconds to import.
if TYPE_CHECKING:
    from workflow.experiments import ExperimentRecord
    from workflow.vertex_submit import JobKind, Submitted

app = App(
    prog="mega",
    no_args_is_help=True,
    help="Mega Pipeline: collect → process → train → evaluate → optimize → register → serve.",
)
# Off a terminal (piped, or in .mega/logs) these never wrap or cut a line.
console = console_for()
errors = console_for(stderr=True)


@app.callback()
def _options(version: Annotated[bool, version_option("mega-workflow")] = False) -> None:
    """Mega Pipeline: collect → process → train → evaluate → optimize → register → serve."""


def _project() -> Project:
    try:
        project = Project.here(get_settings())
        _ = project.params  # validate early: a bad params.yaml fails before any work
    except (ProjectError, ParamsError) as exc:
        fail(exc, EXIT_USAGE)
    return project


def _run_stages(targets: list[str], force: bool = False) -> None:
    project = _project()
    stages = project.stages()
    if targets:
        unknown = [t for t in targets if t not in stages]
        if unknown:
            fail(f"unknown stage {unknown[0]!r}; stages: {', '.join(stages)}", EXIT_USAGE)
        # dvc runs a target's upstream stages too; count just those for the bar.
        stages = stages[: max(stages.index(t) for t in targets) + 1]
    result = repro(project.root, stages, targets, console, force=force)
    _exit_if_failed(project, result)
    if "register" in stages and "register" in result.skipped and not project.registry().versions():
        # The registry is not a DVC output: if it was deleted or MEGA_MODELS_ROOT now
        # points elsewhere, DVC still thinks `register` is done. Publish again.
        console.print("the registry holds no version of this model: registering the candidate")
        again = repro(project.root, ["register"], ["register"], console, force=True, single=True)
        _exit_if_failed(project, again)
        result.skipped.remove("register")
        result.ran.append("register")
    _print_outcome(result)
    _summary(project, metrics_outdated=bool(targets) and _evaluation_outdated(project, result))


def _print_outcome(result: ReproResult) -> None:
    """Which stages ran, which were up to date, which DVC restored from its run cache."""
    for heading, stages in (
        ("ran", result.ran),
        ("up to date, skipped", result.skipped),
        ("restored from DVC's run cache (the same inputs ran before)", result.restored),
    ):
        if stages:
            console.print(f"{heading}: {', '.join(stages)}")


def _evaluation_outdated(project: Project, result: ReproResult) -> bool:
    """Whether reports/metrics.json is of an older candidate or data than the current ones.

    A target short of evaluate (train, process) or beside it (optimize) does not run it,
    and may have changed its inputs, in this run or an earlier one: dvc knows.
    """
    if "evaluate" in result.ran:
        return False
    try:
        return bool(project.stale_stages("evaluate"))
    except ProjectError:
        return False  # unknown: the row keeps its usual label


def _exit_if_failed(project: Project, result: ReproResult) -> None:
    if result.returncode == 0:
        return
    if result.errors and result.log_path:
        # A stage said what went wrong in one line: that line, not dvc's wrapping.
        log = result.log_path.relative_to(project.root)
        for line in result.errors:
            errors.print(f"{line} (full log: {log})", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(result.exit_code)
    where = ""
    if result.log_path:
        errors.print(log_tail(result.log_path), markup=False, highlight=False)
        log = result.log_path.relative_to(project.root)
        where = f"; its last lines are above, the full log is {log}"
    fail(f"the pipeline failed (dvc exit code {result.returncode}){where}", result.exit_code)


def _test_accuracy(model: RegisteredModel) -> str:
    """The version's test accuracy as "test accuracy 0.9943", from its metrics.json; ""
    for a version without one (only a version published by hand lacks it)."""
    metrics = model.metrics
    return f"test accuracy {metrics.test.accuracy:.4f}" if metrics else ""


def _summary(project: Project, metrics_outdated: bool = False) -> None:
    table = Table(title="Mega Pipeline", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    stats = project.data_stats()
    if stats:
        table.add_row(
            "data",
            f"{project.processed_dir.relative_to(project.root)} · "
            f"version {stats.data_hash[:12]} · {stats.split_sizes(' / ')}",
        )
    metrics = project.metrics()
    production = project.production()
    if metrics:
        test = metrics.test
        source = project.metrics_path.relative_to(project.root).as_posix()
        # The metrics are the last evaluated candidate's; once the gate kept production
        # on another version, saying so stops them being read as production's.
        label = "test metrics"
        if metrics_outdated:
            label = "last evaluation"
            source += ", out of date"
        elif production and production.metrics != metrics:
            label = "candidate metrics"
        table.add_row(
            label,
            f"accuracy {test.accuracy:.4f} · macro F1 {test.macro_f1:.4f} "
            f"· {test.examples} examples ({source})",
        )
    if production:
        name = f"{production.name} version {production.version}"
        parts = [name, _test_accuracy(production), production.uri]
        table.add_row("production model", " · ".join(filter(None, parts)))
    else:
        table.add_row("production model", "none yet (no candidate passed the gate)")
    settings = project.settings
    if metrics_outdated:
        table.add_row("next", "mega run  →  the stages out of date, through register")
    else:
        table.add_row("next", f"make serve  →  http://{settings.serve_host}:{settings.serve_port}")
    console.print(table)


class Where(StrEnum):
    local = "local"
    vertex = "vertex"


DryRunOption = Annotated[
    bool, typer.Option(help="Vertex: print the job body as JSON and send nothing.")
]
DetachOption = Annotated[
    bool, typer.Option(help="Vertex: return once the job is created, do not follow it.")
]
DataOption = Annotated[
    str | None,
    typer.Option(
        show_default="the local processed data, uploaded under MEGA_GCS_ROOT",
        help="Vertex: the processed data's gs:// URI.",
    ),
]
ImageTagOption = Annotated[
    str | None,
    typer.Option(show_default="the git sha, as `mega build` tags", help="Vertex: the image tag."),
]


@app.command()
def run(
    force: Annotated[
        bool,
        typer.Option(
            help="Re-run every stage even if nothing changed (an experiment: also replace "
            "one of the same --name)."
        ),
    ] = False,
    set_param: Annotated[
        list[str] | None,
        typer.Option(
            "-S",
            "--set-param",
            metavar="KEY=VALUE",
            show_default="none",
            help="Run a DVC experiment with this params.yaml value, e.g. -S train.epochs=5 "
            "(repeatable); params.yaml and the workspace are left unchanged.",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            "-n",
            show_default="a random one",
            help="Run as a DVC experiment with this name (its W&B runs' name and group).",
        ),
    ] = None,
    tuned: Annotated[
        bool,
        typer.Option(
            help="Run a DVC experiment with the best parameters `mega tune` found "
            "(tuning/best.yaml); -S values win over them."
        ),
    ] = False,
    on: Annotated[
        Where,
        typer.Option(help="local: DVC here; vertex: the kfp pipeline on Vertex AI Pipelines."),
    ] = Where.local,
    dry_run: DryRunOption = False,
    detach: DetachOption = False,
    image_tag: ImageTagOption = None,
) -> None:
    """Run the whole pipeline locally with DVC; stages whose inputs are unchanged are skipped.

    With -S, --tuned or --name it runs a DVC experiment instead (`dvc exp run --temp`):
    every stage but register, in a temporary copy; compare with `mega exp show`.

    With --on vertex the same stages run in their containers as a pipeline on Vertex AI
    Pipelines, gated on the evaluation (docs/cloud.md); --force turns its cache off.
    """
    if on is Where.vertex:
        if set_param or tuned or name is not None:
            fail(
                "-S, --name and --tuned run DVC experiments, which run here: drop --on vertex "
                "(or edit params.yaml, then mega run --on vertex)",
                EXIT_USAGE,
            )
        _run_on_vertex(_project(), dry_run, detach, image_tag, caching=not force)
        return
    _local_only(dry_run, detach, None, image_tag)
    if set_param or tuned or name is not None:
        _run_experiment(set_param or [], name, tuned, force)
    else:
        _run_stages([], force=force)


def _run_on_vertex(
    project: Project, dry_run: bool, detach: bool, image_tag: str | None, caching: bool
) -> None:
    """`mega run --on vertex`: print, or submit and follow, the PipelineJob."""
    from workflow import pipeline_submit as pipelines
    from workflow.stages import StageDefinitionError
    from workflow.vertex import CloudConfigError

    settings = get_settings()
    with failures_as(EXIT_USAGE, CloudConfigError, StageDefinitionError):
        if dry_run:
            pipelines.dry_run(project, settings, errors, image_tag, caching=caching)
            return
        submitted = pipelines.submit(
            project, settings, console, image_tag, detach=detach, caching=caching
        )
    if not submitted.succeeded:
        raise typer.Exit(EXIT_FAILURE)


def _experiment_overrides(project: Project, given: list[str], tuned: bool) -> list[str]:
    """The checked `KEY=VALUE`s: tuning/best.yaml's (with --tuned), then -S's."""
    from workflow.experiments import TUNED, check_overrides, parse_overrides, tuned_overrides

    params = project.root / "params.yaml"
    overrides = []
    if tuned:
        best = parse_overrides(tuned_overrides(project.root), origin=str(TUNED))
        check_overrides(params, best, origin=str(TUNED))
        overrides += best
    from_cli = parse_overrides(given)
    check_overrides(params, [*overrides, *from_cli])
    return [o.text for o in [*overrides, *from_cli]]


def _run_experiment(given: list[str], name: str | None, tuned: bool, force: bool) -> None:
    from workflow.experiments import (
        NOT_IN_EXPERIMENTS,
        ExperimentError,
        baseline_commit,
        experiment_env,
        experiment_name,
    )
    from workflow.runner import ExperimentRun

    project = _project()
    try:
        overrides = _experiment_overrides(project, given, tuned)
        baseline = baseline_commit(project.root)
        name = experiment_name(project.root, baseline, name, replace=force)
    except ExperimentError as exc:
        fail(exc, EXIT_USAGE)
    stages = [s for s in project.stages() if s not in NOT_IN_EXPERIMENTS]
    console.print(f"experiment {name}: {' '.join(overrides) or 'params.yaml as it is'}")
    env = experiment_env(project.root, project.settings, name)
    experiment = ExperimentRun(name=name, overrides=overrides, env=env)
    result = repro(project.root, stages, stages, console, force=force, experiment=experiment)
    _exit_if_failed(project, result)
    _print_outcome(result)
    _experiment_summary(project, name, baseline)


def _test_metrics(metrics: dict[str, object]) -> str:
    """`accuracy 0.9943 · macro F1 0.9941 · 176 examples` from flattened test metrics."""
    parts = [
        f"{label} {value:.4f}" if isinstance(value, float) else f"{label} {value}"
        for label, key in (("accuracy", "test.accuracy"), ("macro F1", "test.macro_f1"))
        if (value := metrics.get(key)) is not None
    ]
    if metrics.get("test.examples") is not None:
        parts.append(f"{metrics['test.examples']} examples")
    return " · ".join(parts)


def _experiments(project: Project, all_commits: bool = False) -> list[ExperimentRecord]:
    from workflow.experiments import ExperimentError, load_experiments

    metrics_file = project.metrics_path.relative_to(project.root).as_posix()
    try:
        return load_experiments(project.root, metrics_file, all_commits=all_commits)
    except ExperimentError as exc:
        fail(exc)


def _experiment_summary(project: Project, name: str, baseline: str) -> None:
    """The experiment's own params changes and metrics (from `dvc exp show`)."""
    from workflow.experiments import differing_params

    records = _experiments(project)
    base = next((r for r in records if r.rev == baseline and not r.is_experiment), None)
    this = next(
        (r for r in records if r.is_experiment and r.name == name and r.baseline == baseline),
        None,
    )
    if this is None:
        fail(f"dvc ran experiment {name} but `dvc exp show` does not list it; see `dvc exp list`")
    table = Table(title=f"Experiment {name}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("experiment", f"{name} · commit {this.rev[:7]} · from {baseline[:7]}")
    changed = differing_params([base, this]) if base else []
    table.add_row(
        "params changed",
        ", ".join(f"{k} {base.params.get(k)} → {this.params.get(k)}" for k in changed if base)
        or "none (params.yaml as it is)",
    )
    metrics_file = project.metrics_path.relative_to(project.root).as_posix()
    table.add_row(
        "test metrics", f"{_test_metrics(this.metrics) or 'none'} (the experiment's {metrics_file})"
    )
    if this.params.get("train.tracking") == "wandb":
        where = Path(project.settings.wandb_dir)
        table.add_row("W&B", f"runs named {name}, group {name} ({where})")
    table.add_row(
        "next",
        "mega exp show  ·  keep it: dvc exp apply " + name + ", then mega run (registers it)",
    )
    console.print(table)


def _stage_command(stage: str, doc: str) -> None:
    def command(
        force: Annotated[
            bool,
            typer.Option(
                help="Re-run this stage and the stages before it even if nothing changed."
            ),
        ] = False,
    ) -> None:
        _run_stages([stage], force=force)

    command.__doc__ = doc
    app.command(name=stage)(command)


_stage_command("collect", "Collect the raw data set (stage 1).")
_stage_command("process", "Process raw data into TFRecord shards (stage 2, after its inputs).")


def _local_only(dry_run: bool, detach: bool, data: str | None, image_tag: str | None) -> None:
    """Exit 2 naming each Vertex AI option given to a local run."""
    given = [
        name
        for name, value in (
            ("--dry-run", dry_run),
            ("--detach", detach),
            ("--data", data),
            ("--image-tag", image_tag),
        )
        if value
    ]
    if given:
        verb = "needs" if len(given) == 1 else "need"
        fail(f"{' and '.join(given)} {verb} --on vertex", EXIT_USAGE)


def _on_vertex(
    project: Project,
    kind: JobKind,
    dry_run: bool,
    detach: bool,
    data: str | None,
    image_tag: str | None,
) -> Submitted | None:
    """Print (`dry_run`) or submit and follow the job of `kind`; exit 1 when it failed."""
    from workflow import vertex_submit as vertex
    from workflow.vertex import CloudConfigError

    settings = get_settings()
    with failures_as(EXIT_USAGE, CloudConfigError):
        if dry_run:
            vertex.dry_run(project, settings, errors, kind, data=data, tag=image_tag)
            return None
        submitted = vertex.submit(
            project, settings, console, kind, data=data, tag=image_tag, detach=detach
        )
    if not submitted.succeeded:
        raise typer.Exit(EXIT_FAILURE)
    return submitted


@app.command()
def train(
    on: Annotated[
        Where, typer.Option(help="local: the DVC stage; vertex: a Vertex AI custom job.")
    ] = Where.local,
    force: Annotated[
        bool,
        typer.Option(help="Local: re-run this stage and the ones before it even if unchanged."),
    ] = False,
    dry_run: DryRunOption = False,
    detach: DetachOption = False,
    data: DataOption = None,
    image_tag: ImageTagOption = None,
) -> None:
    """Train the candidate model (stage 3, after its inputs), here or on Vertex AI.

    On Vertex AI the training image runs `python -m trainer train` with params.yaml's
    `vertex:` machines, GPUs and workers; docs/cloud.md sets up the project.
    """
    if on is Where.local:
        _local_only(dry_run, detach, data, image_tag)
        _run_stages(["train"], force=force)
        return
    if force:
        fail("--force re-runs local stages; a Vertex AI job always trains", EXIT_USAGE)
    from workflow import vertex_submit as vertex

    submitted = _on_vertex(_project(), vertex.CUSTOM_JOB, dry_run, detach, data, image_tag)
    if submitted is not None and submitted.final is not None:
        console.print(f"trained: the candidate is in {submitted.run.model_dir}")


_stage_command("evaluate", "Evaluate the candidate on the test split (stage 4, after its inputs).")
_stage_command(
    "optimize",
    "Quantize, prune and distill the candidate; measure each variant in LiteRT and pick the "
    "one to serve (stage 5, after its inputs).",
)
_stage_command("register", "Publish the candidate and promote it if it passes the gate (stage 6).")


@app.command()
def status() -> None:
    """Show the data version, stale stages, the production model and a newer candidate."""
    project = _project()
    stats = project.data_stats()
    console.print(
        f"[bold]data[/bold]: version {stats.data_hash[:12]}, {stats.examples} "
        f"examples in {project.processed_dir.relative_to(project.root)}"
        if stats
        else "[bold]data[/bold]: not processed yet (run `mega run`)"
    )
    try:
        stale = project.stale_stages()
    except ProjectError as exc:
        fail(exc)
    for stage in project.stages():
        state = "[yellow]changed[/yellow]" if stage in stale else "[green]up to date[/green]"
        console.print(f"  {stage:<10} {state}")
    production, candidate = project.production(), project.candidate()
    if production is not None:
        console.print(f"[bold]production model[/bold]: {_status_line(production)}")
    elif candidate is not None:
        console.print("[bold]production model[/bold]: none (the gate promoted no version)")
    else:
        console.print("[bold]production model[/bold]: none (run `mega run`)")
    if candidate is not None:
        console.print(
            f"[bold]candidate model[/bold]: {_status_line(candidate)}; the last version "
            "the gate kept out of production"
        )


def _status_line(model: RegisteredModel) -> str:
    accuracy = _test_accuracy(model) or "test accuracy unknown (no metrics.json)"
    return f"{model.name} version {model.version} ({model.uri}), {accuracy}"


@app.command()
def tune(
    trials: Annotated[
        int | None,
        typer.Option(min=1, show_default="tune.trials", help="How many trials to run."),
    ] = None,
    on: Annotated[
        Where,
        typer.Option(help="local: trials one by one here; vertex: a Vertex AI tuning job."),
    ] = Where.local,
    dry_run: DryRunOption = False,
    detach: DetachOption = False,
    data: DataOption = None,
    image_tag: ImageTagOption = None,
) -> None:
    """Tune the training's hyperparameters (params.yaml tune:), here with Optuna or on Vertex AI.

    Each trial trains on the processed data (`mega process` first) with its values given
    as the trainer's --<key>=<value> arguments; the best trial's values go to
    tuning/best.yaml (locally every trial also to tuning/trials.json), which
    `mega run --tuned` runs. Ctrl-C keeps finished trials.
    """
    if on is Where.local:
        _local_only(dry_run, detach, data, image_tag)
        from workflow.tuning import run_local

        run_local(_project(), trials, console)
        return
    from workflow import vertex_submit as vertex
    from workflow.tuning import vertex_best, write_best

    project = _project()
    submitted = _on_vertex(project, vertex.tuning_kind(trials), dry_run, detach, data, image_tag)
    if submitted is None or submitted.final is None:
        return
    tune_params = project.params.tune
    best = vertex_best(submitted.final, tune_params)
    if best is None:
        fail(f"no trial of {submitted.name} reported {tune_params.metric}; see its logs")
    trial_id, values, value = best
    job_id = submitted.name.rsplit("/", 1)[-1]
    with failures_as(EXIT_FAILURE, ParamsError):
        path = write_best(
            project.root,
            values,
            f"Vertex AI tuning job {job_id}, trial {trial_id}",
            metric=tune_params.metric,
            value=value,
        )
    console.print(
        f"best: trial {trial_id}, {tune_params.metric} {value:.4f}; in "
        f"{path.relative_to(project.root)}. `mega run --tuned` runs an experiment with them."
    )


data_app = App(prog="mega", no_args_is_help=True, help="Version, share and restore the data (DVC).")
app.add_typer(data_app, name="data")


def _dvc_passthrough(project: Project, *args: str) -> None:
    """Run a dvc command, showing its output; fail with a hint on error."""
    result = project.dvc(*args)
    output = (result.stdout + result.stderr).strip()
    if output:
        console.print(output, markup=False, highlight=False)
    if result.returncode != 0:
        hint = ""
        if "no remote specified" in output.lower() or "no default remote" in output.lower():
            hint = "; `make setup` configures a local default remote; see docs/data.md"
        elif "missing cache files" in output.lower():
            hint = "; that version was never pushed from the clone that made it"
        fail(f"dvc {args[0]} failed (its output is above){hint}", result.returncode)


DATA_STAGES = ["collect", "process"]
RemoteOption = Annotated[
    str | None,
    typer.Option("-r", "--remote", show_default="DVC's default remote", help="DVC remote name."),
]
AllOption = Annotated[
    bool,
    typer.Option(
        "--all", show_default="off", help="Every DVC output (also the candidate), not just data."
    ),
]


def _data_targets(project: Project, everything: bool) -> list[str]:
    """The recorded data stages (or every recorded stage), failing if none is recorded."""
    locked = project.locked_stages()
    targets = locked if everything else [s for s in DATA_STAGES if s in locked]
    if not targets:
        fail("dvc.lock records no data yet; run `mega run` first")
    return targets


@data_app.command("push")
def data_push(remote: RemoteOption = None, everything: AllOption = False) -> None:
    """Upload the raw and processed data that dvc.lock records to the remote."""
    project = _project()
    targets = _data_targets(project, everything)
    project.check_remote(remote)
    _dvc_passthrough(project, "push", *(["-r", remote] if remote else []), *targets)


@data_app.command("pull")
def data_pull(remote: RemoteOption = None, everything: AllOption = False) -> None:
    """Download and check out the data that dvc.lock records (e.g. after a fresh clone)."""
    project = _project()
    targets = _data_targets(project, everything)
    project.check_remote(remote)
    _dvc_passthrough(project, "pull", *(["-r", remote] if remote else []), *targets)


@data_app.command("versions")
def data_versions() -> None:
    """List each version of the processed data in git history, with its hash and counts."""
    from workflow.versions import list_versions

    project = _project()
    # An unreachable gs:// remote fails here in seconds, not after gcsfs's retries per version.
    project.check_remote()
    processed = project.processed_dir.relative_to(project.root).as_posix()
    try:
        versions = list_versions(project.root, processed)
    except ValueError as exc:
        fail(exc)
    if not versions:
        console.print(f"no commit records {processed} in dvc.lock yet; commit dvc.lock after a run")
        return
    table = Table(title=f"versions of {processed}", title_justify="left")
    for column in ("commit", "date", "DVC hash", "data hash", "examples", "message"):
        table.add_column(column)
    for version in versions:
        table.add_row(
            version.rev[:10],
            version.date,
            (version.dvc_md5 or "?")[:12],
            version.stats.data_hash[:12] if version.stats else "?",
            version.counts,
            version.subject,
        )
    console.print(table)
    if any(version.stats is None for version in versions):
        where = (
            "the default DVC remote (made in another clone and never pushed)"
            if project.remote_url()
            else "any remote: no DVC remote is configured (`make setup` adds a local one)"
        )
        console.print(
            f"? : that version's data is in neither this clone's DVC cache nor {where}; "
            "its dvc.lock entry is still listed"
        )


def _pull_failure(output: str) -> str:
    """Why `dvc pull` failed, in words, from its output."""
    text = output.lower()
    if "no remote specified" in text or "no default remote" in text:
        return "no DVC remote is configured (`make setup` adds a local one; see docs/data.md)"
    if "missing cache files" in text or "checkout failed" in text:
        return (
            "it is in neither this clone's DVC cache nor the remote "
            "(it was never pushed from the clone that made it)"
        )
    return dvc_error(output, "dvc pull failed")


def _put_back_lock(project: Project, previous: bytes | None) -> str:
    """Restore the dvc.lock of before a failed checkout, and the data it records.

    Returns what the user should be told about the state left behind.
    """
    lock = project.root / "dvc.lock"
    if previous is None:
        lock.unlink(missing_ok=True)
        return "dvc.lock and the data are unchanged"
    storage.atomic_write_bytes(lock, previous)
    # A failed `dvc checkout` has already removed the data it could not restore.
    restored = project.dvc("checkout", *_data_targets(project, everything=False))
    if restored.returncode != 0:
        return (
            "dvc.lock is back as it was, but its data is not in this clone's DVC cache "
            "(`mega data pull` fetches it)"
        )
    return "dvc.lock and the data are unchanged"


@data_app.command("checkout")
def data_checkout(
    rev: Annotated[str, typer.Argument(help="A commit, tag or branch (see `mega data versions`).")],
) -> None:
    """Restore the raw and processed data as commit REV recorded them."""
    from workflow.versions import resolve_rev, restore_lock

    project = _project()
    processed = project.processed_dir.relative_to(project.root).as_posix()
    lock = project.root / "dvc.lock"
    previous = lock.read_bytes() if lock.is_file() else None
    try:
        commit = resolve_rev(project.root, rev)
        restore_lock(project.root, commit, processed)
    except ValueError as exc:
        fail(exc, EXIT_USAGE)
    targets = _data_targets(project, everything=False)
    if project.dvc("checkout", *targets).returncode != 0:
        # Not in the local cache: fetch it from the remote.
        pulled = project.dvc("pull", *targets)
        if pulled.returncode != 0:
            left = _put_back_lock(project, previous)
            fail(
                f"cannot restore the data of {commit[:10]}: "
                f"{_pull_failure(pulled.stdout + pulled.stderr)}; {left}"
            )
    stats = project.data_stats()
    console.print(
        f"restored {processed} of {commit[:10]}: data version "
        f"{stats.data_hash[:12] if stats else '?'}. dvc.lock now records that commit's stages, "
        "so `mega status` shows later stages as changed; `mega run` trains on this data, and "
        "`git checkout HEAD -- dvc.lock && dvc checkout` returns to the latest."
    )


@app.command()
def serve(
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, show_default=from_setting("serve_port"), help="Port."),
    ] = None,
    host: Annotated[
        str | None, typer.Option(show_default=from_setting("serve_host"), help="Bind address.")
    ] = None,
) -> None:
    """Serve the production model's API and the web page on one port."""
    project = _project()
    settings = get_settings()
    static = project.root / "src" / "frontend" / "public"
    bind_host = host if host is not None else settings.serve_host
    bind_port = port if port is not None else settings.serve_port
    command = [
        sys.executable,
        "-m",
        "api_service",
        "--host",
        bind_host,
        "--port",
        str(bind_port),
        "--model-name",
        project.params.registry.model_name,
        "--static-dir",
        str(static),
    ]
    # Before the server checks the port: it says why it cannot serve, if it cannot.
    console.print(f"starting the API and the page on http://{bind_host}:{bind_port}")
    sys.stdout.flush()
    os.execv(sys.executable, command)


pipeline_app = App(
    prog="mega",
    no_args_is_help=True,
    help="Compile the kfp pipeline that Vertex AI Pipelines runs.",
)
app.add_typer(pipeline_app, name="pipeline")


@pipeline_app.command("compile")
def pipeline_compile(
    out: Annotated[Path, typer.Option(help="Where to write the pipeline YAML (kfp's IR).")] = Path(
        ".mega/pipeline.yaml"
    ),
    image_tag: ImageTagOption = None,
) -> None:
    """Compile the pipeline that `mega run --on vertex` runs, to a kfp YAML file.

    dvc.yaml's stages run in their images, gated on the evaluation. Unset settings are
    shown as <MEGA_…>.
    """
    from workflow import pipeline_submit as pipelines
    from workflow.stages import StageDefinitionError
    from workflow.vertex import CloudConfigError, CloudTarget

    project = _project()
    settings = get_settings()
    with failures_as(EXIT_USAGE, CloudConfigError, StageDefinitionError):
        target = CloudTarget.from_settings(settings, dry_run=True)
        tag = pipelines.source_tag(project, image_tag)
        plan = pipelines.plan_pipeline(project, settings, target, tag)
        written = pipelines.compile_pipeline(plan, out)
    if target.missing:
        errors.print(
            f"note: {', '.join(target.missing)} unset, shown as <MEGA_…>: set them to compile "
            "a pipeline that runs (docs/cloud.md)",
            highlight=False,
        )
    console.print(
        f"compiled: {written} (images at tag {tag}); `mega run --on vertex` compiles the "
        "same pipeline, stages params.yaml and submits it"
    )


exp_app = App(
    prog="mega", no_args_is_help=True, help="Compare DVC experiments (`mega run -S KEY=VALUE`)."
)
app.add_typer(exp_app, name="exp")


@exp_app.command("show")
def exp_show(
    all_commits: Annotated[
        bool,
        typer.Option(
            "--all-commits", "-A", show_default="off", help="Experiments of every commit."
        ),
    ] = False,
) -> None:
    """List the workspace, its commit and their experiments, with their test metrics.

    Shows the params that differ between them.
    """
    from workflow.experiments import differing_params

    project = _project()
    records = _experiments(project, all_commits)
    changed = differing_params(records)
    table = Table(title="experiments", title_justify="left")
    for column in ("experiment", "commit", "created", *changed, "test metrics"):
        table.add_column(column)
    for record in records:
        label = f"  {record.name}" if record.is_experiment else record.name
        created = (record.created or "")[:16].replace("T", " ")
        values = [str(record.params.get(key, "")) for key in changed]
        outcome = f"failed: {record.error}" if record.error else _test_metrics(record.metrics)
        rev = "" if record.rev == "workspace" else record.rev[:7]
        table.add_row(label, rev, created, *values, outcome or "-")
    console.print(table, soft_wrap=True)
    if not any(record.is_experiment for record in records):
        console.print("no experiments yet: `mega run -S train.epochs=5` runs one")


def _value(value: object, sign: bool = False) -> str:
    """A params or metrics value for a table: '-' for none, floats to 6 digits."""
    if value is None:
        return "-"
    if isinstance(value, float | int) and not isinstance(value, bool):
        return f"{value:+.6g}" if sign else f"{value:.6g}"
    return str(value)


@exp_app.command("diff")
def exp_diff(
    old: Annotated[
        str | None,
        typer.Argument(
            show_default="HEAD",
            help="An experiment or git revision: with NEW, the one compared from; alone, the "
            "one HEAD is compared with (HEAD → OLD).",
        ),
    ] = None,
    new: Annotated[
        str | None,
        typer.Argument(
            show_default="the workspace, when OLD is not given either",
            help="The experiment or revision OLD is compared with (OLD → NEW).",
        ),
    ] = None,
) -> None:
    """Show the params and metrics that differ between two experiments or revisions.

    `mega exp diff NAME`: HEAD → NAME. `mega exp diff A B`: A → B. No argument: HEAD →
    the workspace.
    """
    project = _project()
    revs = [rev for rev in (old, new) if rev is not None]
    if len(revs) == 1:
        revs = ["HEAD", revs[0]]
    result = project.dvc("exp", "diff", "--json", *revs)
    if result.returncode != 0:
        reason = dvc_error(result.stderr, "dvc exp diff failed")
        hint = "; `mega exp show` lists the experiments" if "unknown" in reason else ""
        fail(f"{reason}{hint}", EXIT_USAGE)
    diff = json.loads(result.stdout or "{}")
    table = Table(title=f"{revs[0] if revs else 'HEAD'} → {revs[1] if revs else 'workspace'}")
    for column in ("", "file", "key", "old", "new", "change"):
        table.add_column(column)
    for kind in ("params", "metrics"):
        for path, keys in sorted((diff.get(kind) or {}).items()):
            for key, change in sorted(keys.items()):
                step = change.get("diff")
                table.add_row(
                    kind[:-1],
                    path,
                    key,
                    _value(change.get("old")),
                    _value(change.get("new")),
                    "" if step is None else _value(step, sign=True),
                )
    if table.row_count:
        console.print(table, soft_wrap=True)
    else:
        console.print("no params or metrics differ")


@app.command()
def build(
    push: Annotated[
        bool,
        typer.Option(
            help="Then tag each image (but the cloud-sim profile's) for MEGA_IMAGE_REPOSITORY "
            "and push it to Artifact Registry."
        ),
    ] = False,
    gpu: Annotated[
        bool,
        typer.Option(
            help="Also build the training image for GPUs (ACCELERATOR=gpu), tagged <tag>-gpu."
        ),
    ] = False,
    allow_dirty: Annotated[
        bool,
        typer.Option(
            help="Push even when what the images are built from (src/, requirements/, "
            "docker-compose.yml, .dockerignore) has changes (tag <sha>-dirty)."
        ),
    ] = False,
) -> None:
    """Build every image of docker-compose.yml (docker, else podman), tagged with the git sha.

    Prints each image's size and build time.
    """
    from workflow.images import build_all, table

    def say(message: str) -> None:
        errors.print(f"build: {message}", markup=False, highlight=False)

    # "" (unset) rather than None: build_all then refuses it, naming the setting.
    repository = (get_settings().image_repository or "") if push else None
    result = build_all(Path.cwd(), say, gpu=gpu, repository=repository, allow_dirty=allow_dirty)
    console.print(f"\n{table(result.built)}", markup=False, highlight=False)
    if result.pushed:
        console.print("\npushed:\n" + "\n".join(result.pushed), markup=False, highlight=False)
    console.print(
        f"\nrun them: MEGA_IMAGE_TAG={result.tag} docker compose up (or podman-compose)",
        markup=False,
        highlight=False,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
