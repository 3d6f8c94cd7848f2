"""Submitting training to Vertex AI: `mega train --on vertex` and `mega tune --on vertex`.

Plan (`plan_training`): the job's display name, data and output URIs, image and labels,
from the project, params.yaml and the settings. Submit (`submit`): check the bucket,
stage the processed data (keyed by its version, uploaded once) and params.yaml under
MEGA_GCS_ROOT, create the job (a `JobKind`: a custom job, a tuning job), then follow it
to its end.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common import storage
from common.params import PipelineParams
from common.services import label_value
from common.settings import Settings
from workflow.images import GPU_TAG_SUFFIX, commit_label, image_tag, tag_problem
from workflow.project import Project
from workflow.vertex import (
    CloudConfigError,
    CloudTarget,
    TrainingRun,
    as_json,
    custom_job,
    job_name,
    training_image,
    tuning_job,
)
from workflow.vertex_jobs import (
    FINAL_STATES,
    JobHandle,
    call_options,
    check_bucket,
    console_link,
    follow,
    job_client,
    logs_link,
    stage_data,
    state_name,
    vertex_errors,
)

if TYPE_CHECKING:
    from rich.console import Console

UNKNOWN_DATA_VERSION = "<data version: run `mega process` first>"


def data_prefix(target: CloudTarget, dataset: str, version: str) -> str:
    """Where the processed data of `version` is staged: one prefix per data version."""
    return f"{target.gcs_root}/data/processed/{dataset}/{version}"


def source_tag(project: Project, given: str | None = None) -> str:
    """The image tag to run: `given` (`--image-tag`), else the checked-out code's, as
    `mega build` tags its images.

    Raises:
        CloudConfigError: `given` is not an image tag, or none is given and the project
            is not a git checkout (no commit names the code).
    """
    if given is not None:
        if problem := tag_problem(given):
            raise CloudConfigError(problem)
        return given
    try:
        return image_tag(project.root)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        raise CloudConfigError(
            f"{project.root} is not a git checkout, so no commit names the image: "
            "pass --image-tag (the tag `mega build` printed)"
        ) from exc


def data_version(data: str | None, local_version: str | None) -> str:
    """The data-version label: the local data's version, `external` for --data."""
    if data is not None:
        return "external"
    return local_version or "unknown"


def plan_training(
    project: Project,
    params: PipelineParams,
    target: CloudTarget,
    stage: str,
    *,
    data: str | None,
    tag: str | None,
    dry_run: bool = False,
) -> TrainingRun:
    """The training run to submit: the local processed data staged, unless `data` is given.

    Raises:
        CloudConfigError: `data` is not a gs:// URI, or (outside a dry run) there is no
            local processed data to stage.
    """
    if data is not None and not storage.is_gcs(data):
        raise CloudConfigError(f"--data {data}: give the processed data's gs:// URI")
    stats = project.data_stats()
    if data is None and stats is None and not dry_run:
        raise CloudConfigError(
            f"no processed data in {project.processed_dir.relative_to(project.root)} to "
            "upload; run `mega process` first, or pass --data gs://… (processed data)"
        )
    version = stats.data_hash[:12] if stats else UNKNOWN_DATA_VERSION
    name = job_name(stage, params)
    tag = source_tag(project, tag)
    return TrainingRun(
        display_name=name,
        data_uri=data or data_prefix(target, params.dataset, version),
        output_dir=f"{target.gcs_root}/vertex/{name}",
        image=training_image(target, params.vertex, tag),
        labels={
            "mega-stage": stage,
            "dataset": label_value(params.dataset),
            "git-sha": commit_label(project.root),
            "image-tag": label_value(tag),
            "data-version": label_value(data_version(data, version if stats else None)),
        },
    )


@dataclass(frozen=True)
class JobKind:
    """One kind of Vertex AI job `mega` submits: how to build its body and read it."""

    resource: str  # the API's resource in snake case: custom_job, hyperparameter_tuning_job
    collection: str  # its collection in the REST path: customJobs, hyperparameterTuningJobs
    words: str  # what the CLI calls it
    stage: str  # the `mega-stage` label and the job name's kind: train, tune
    build: Callable[[TrainingRun, PipelineParams, CloudTarget, Settings], Any]
    progress: Callable[[Any], str] = lambda job: ""
    # How many jobs' timeouts in a row it may take: trials run parallel_trials at a time.
    rounds: Callable[[PipelineParams], int] = lambda params: 1


CUSTOM_JOB = JobKind(
    resource="custom_job",
    collection="customJobs",
    words="custom job",
    stage="train",
    build=lambda run, params, target, settings: custom_job(run, params.vertex, target, settings),
)


def _trials_progress(job: Any) -> str:
    """`<finished>/<max> trials` of a tuning job."""
    done = sum(1 for trial in job.trials if trial.end_time)
    return f"{done}/{job.max_trial_count} trials finished" if job.max_trial_count else ""


def tuning_kind(trials: int | None = None) -> JobKind:
    """The tuning job of params.yaml's `tune:` study (`trials` in place of tune.trials)."""

    def build(run: TrainingRun, params: PipelineParams, target: CloudTarget, s: Settings) -> Any:
        if trials is not None:
            tune = params.tune.model_copy(
                update={
                    "trials": trials,
                    "parallel_trials": min(params.tune.parallel_trials, trials),
                }
            )
            params = params.model_copy(update={"tune": tune})
        return tuning_job(run, params, target, s)

    def rounds(params: PipelineParams) -> int:
        count = trials or params.tune.trials
        return math.ceil(count / min(params.tune.parallel_trials, count))

    return JobKind(
        rounds=rounds,
        resource="hyperparameter_tuning_job",
        collection="hyperparameterTuningJobs",
        words="tuning job",
        stage="tune",
        build=build,
        progress=_trials_progress,
    )


def cloud_notes(target: CloudTarget, runs: str, tag: str, gpu: bool) -> list[str]:
    """What a user should know before a job or pipeline run starts: `runs` (what runs
    which images), how to push them at `tag`, and that W&B is off without a secret."""
    flag = " --gpu" if gpu else ""
    notes = [f"{runs}: `mega build --push{flag}` pushes them"]
    if tag.endswith("-dirty"):
        notes.append(
            "src/ or requirements/ has changes, so that tag needs `mega build --push"
            f"{flag} --allow-dirty`; or commit, push and submit again"
        )
    if not target.wandb_secret:
        notes.append("W&B is off in the cloud: set MEGA_WANDB_SECRET to track it (docs/cloud.md)")
    return notes


def job_notes(run: TrainingRun, target: CloudTarget) -> list[str]:
    """`cloud_notes` of a training job."""
    gpu = run.image.endswith(GPU_TAG_SUFFIX)
    tag = run.image.rsplit(":", 1)[-1].removesuffix(GPU_TAG_SUFFIX)
    return cloud_notes(target, f"the job runs the image {run.image}", tag, gpu)


def dry_run(
    project: Project,
    settings: Settings,
    errors: Console,
    kind: JobKind,
    *,
    data: str | None,
    tag: str | None,
) -> None:
    """Print the body of the job that would be created (stdout: JSON only; notes: stderr)."""
    target = CloudTarget.from_settings(settings, dry_run=True)
    params = project.params
    run = plan_training(project, params, target, kind.stage, data=data, tag=tag, dry_run=True)
    print(as_json(kind.build(run, params, target, settings)))
    if target.missing:
        errors.print(
            f"dry run: {', '.join(target.missing)} unset, shown as <MEGA_…> (docs/cloud.md)",
            highlight=False,
        )
    if data is None:
        local = project.processed_dir.relative_to(project.root)
        errors.print(f"dry run: {local} would be uploaded to {run.data_uri}", highlight=False)
    for note in job_notes(run, target):
        errors.print(f"dry run: {note}", highlight=False)
    errors.print(
        f"dry run: nothing was sent; POST {target.parent}/{kind.collection} creates it",
        highlight=False,
    )


@dataclass(frozen=True)
class Submitted:
    """A job `submit` created: its run, and its last state read (None when detached)."""

    run: TrainingRun
    name: str
    final: Any | None

    @property
    def succeeded(self) -> bool:
        return self.final is None or state_name(self.final) == "JOB_STATE_SUCCEEDED"


def submit(
    project: Project,
    settings: Settings,
    console: Console,
    kind: JobKind,
    *,
    data: str | None,
    tag: str | None,
    detach: bool,
) -> Submitted:
    """Stage the inputs, create the job and (unless `detach`) follow it to its end.

    A job that did not succeed is reported on stderr as one line with its error.

    Raises:
        CloudConfigError: a setting or parameter is missing or wrong (before any request).
        ServiceError: Vertex AI or Cloud Storage refused or did not answer.
    """
    target = CloudTarget.from_settings(settings)
    params = project.params  # read once for the plan, the body and the follow limit
    run = plan_training(project, params, target, kind.stage, data=data, tag=tag)
    body = kind.build(run, params, target, settings)  # checks the accelerator
    client = job_client(settings)
    for note in job_notes(run, target):
        console.print(f"[yellow]note[/yellow]: {note}", highlight=False)

    def call(verb: str, **fields: Any) -> Any:
        # A create is never retried: a request that timed out may have made the job.
        with vertex_errors(settings):
            method = getattr(client, f"{verb}_{kind.resource}")
            return method(**fields, **call_options(settings, retry=verb != "create"))

    # One cheap request first: a disabled API or a missing permission is said in seconds,
    # before the data is uploaded.
    with vertex_errors(settings):
        client.list_custom_jobs(
            request={"parent": target.parent, "page_size": 1}, **call_options(settings)
        )
    check_bucket(target.gcs_root, target.region)
    if data is None:
        sent = stage_data(project.processed_dir, run.data_uri)
        console.print(f"data: {run.data_uri} ({sent} file(s) uploaded, the rest already there)")
    storage.write_bytes(run.params_uri, (project.root / "params.yaml").read_bytes())
    created = call("create", parent=target.parent, **{kind.resource: body})
    handle = JobHandle(
        name=created.name,
        kind=kind.words,
        get=lambda: call("get", name=created.name),
        cancel=lambda: call("cancel", name=created.name),
        progress=kind.progress,
    )
    console.print(f"Vertex AI {kind.words} {created.name}")
    console.print(f"  console: {console_link(target, handle.id)}")
    console.print(f"  logs:    {logs_link(target, handle.id)}")
    if detach:
        console.print("detached: follow it with the console link above")
        return Submitted(run=run, name=created.name, final=None)
    # Half as long again as the job's own limit: time queued for machines does not count.
    limit = 1.5 * 3600 * params.vertex.timeout_hours * kind.rounds(params)
    final = follow(handle, console, settings.vertex_poll_seconds, limit)
    submitted = Submitted(run=run, name=created.name, final=final)
    if state_name(final) not in FINAL_STATES:
        print(
            f"mega: error: stopped following {kind.words} {handle.id}, still "
            f"{state_name(final)} after {limit / 3600:g} h; it goes on running on Vertex AI "
            "(console link above)",
            file=sys.stderr,
        )
    elif not submitted.succeeded:
        error = final.error.message if final.error and final.error.message else "no message"
        print(
            f"mega: error: Vertex AI {kind.words} {handle.id} {state_name(final)}: {error}",
            file=sys.stderr,
        )
    return submitted
