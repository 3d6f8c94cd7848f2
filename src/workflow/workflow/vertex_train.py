"""`mega train --on vertex`: the training stage as a Vertex AI CustomJob.

Plan (`plan_training`): the job's display name, data and output URIs, image and labels,
from the project, params.yaml and the settings. Submit (`submit_training`): check the
bucket, stage the processed data (keyed by its version, uploaded once) and params.yaml
under MEGA_GCS_ROOT, create the job, then follow it to its end.
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

from common import storage
from common.settings import Settings
from workflow.images import image_tag
from workflow.project import Project
from workflow.vertex import (
    CloudConfigError,
    CloudTarget,
    TrainingRun,
    as_json,
    custom_job,
    job_name,
    label,
    training_image,
)
from workflow.vertex_jobs import (
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
    from google.cloud.aiplatform_v1 import JobServiceClient
    from rich.console import Console

UNKNOWN_DATA_VERSION = "<data version: run `mega process` first>"


def data_prefix(target: CloudTarget, dataset: str, version: str) -> str:
    """Where the processed data of `version` is staged: one prefix per data version."""
    return f"{target.gcs_root}/data/processed/{dataset}/{version}"


def source_tag(project: Project) -> str:
    """The image tag of the checked-out code, as `mega build` tags its images.

    Raises:
        CloudConfigError: the project is not a git checkout (no commit names the code).
    """
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
    project: Project, target: CloudTarget, *, data: str | None, tag: str | None
) -> TrainingRun:
    """The training run to submit: the local processed data staged, unless `data` is given.

    Raises:
        CloudConfigError: `data` is not a gs:// URI, or (outside a dry run) there is no
            local processed data to stage.
    """
    params = project.params
    if data is not None and not storage.is_gcs(data):
        raise CloudConfigError(f"--data {data}: give the processed data's gs:// URI")
    stats = project.data_stats()
    if data is None and stats is None and not target.missing:
        raise CloudConfigError(
            f"no processed data in {project.processed_dir.relative_to(project.root)} to "
            "upload; run `mega process` first, or pass --data gs://… (processed data)"
        )
    version = stats.data_hash[:12] if stats else UNKNOWN_DATA_VERSION
    name = job_name("train", params)
    tag = tag or source_tag(project)
    return TrainingRun(
        display_name=name,
        data_uri=data or data_prefix(target, params.dataset, version),
        output_dir=f"{target.gcs_root}/vertex/{name}",
        image=training_image(target, params.vertex, tag),
        labels={
            "mega-stage": "train",
            "dataset": label(params.dataset),
            "git-sha": label(tag),
            "data-version": label(data_version(data, version if stats else None)),
        },
    )


def dry_run(
    project: Project,
    settings: Settings,
    console: Console,
    errors: Console,
    data: str | None,
    tag: str | None,
) -> None:
    """Print the CustomJob body that would be created (stdout: JSON only)."""
    target = CloudTarget.from_settings(settings, dry_run=True)
    run = plan_training(project, target, data=data, tag=tag)
    job = custom_job(run, project.params.vertex, target, settings)
    print(as_json(job))
    if target.missing:
        errors.print(
            f"dry run: {', '.join(target.missing)} unset, shown as <MEGA_…> (docs/cloud.md)",
            highlight=False,
        )
    if data is None:
        local = project.processed_dir.relative_to(project.root)
        errors.print(f"dry run: {local} would be uploaded to {run.data_uri}", highlight=False)
    errors.print(
        f"dry run: nothing was sent; POST {target.parent}/customJobs creates it", highlight=False
    )


def submit_training(
    project: Project,
    settings: Settings,
    console: Console,
    *,
    data: str | None,
    tag: str | None,
    detach: bool,
) -> bool:
    """Stage the inputs, create the CustomJob and (unless `detach`) follow it.

    Returns whether the job succeeded (True when detached).

    Raises:
        CloudConfigError: a setting or parameter is missing or wrong (before any request).
        ServiceError: Vertex AI or Cloud Storage refused or did not answer.
    """
    target = CloudTarget.from_settings(settings)
    run = plan_training(project, target, data=data, tag=tag)
    body = custom_job(run, project.params.vertex, target, settings)  # checks the accelerator
    client = job_client(settings)
    if "-dirty" in run.image:
        console.print(
            f"[yellow]note[/yellow]: the working tree has changes: the job runs {run.image}, "
            "which `mega build --push` must have pushed from this tree"
        )
    check_bucket(target.gcs_root, target.region)
    if data is None:
        sent = stage_data(project.processed_dir, run.data_uri)
        console.print(f"data: {run.data_uri} ({sent} file(s) uploaded, the rest already there)")
    storage.write_bytes(run.params_uri, (project.root / "params.yaml").read_bytes())
    with vertex_errors(settings, target):
        created = client.create_custom_job(
            parent=target.parent, custom_job=body, **call_options(settings)
        )
    handle = JobHandle(
        name=created.name,
        kind="custom job",
        get=lambda: _get(client, created.name, settings, target),
        cancel=lambda: _cancel(client, created.name, settings, target),
        progress=lambda job: "",
    )
    console.print(f"Vertex AI custom job {created.name}")
    console.print(f"  console: {console_link(target, handle.id)}")
    console.print(f"  logs:    {logs_link(target, handle.id)}")
    if detach:
        console.print("detached: follow it with the console link above")
        return True
    final = follow(handle, console, settings.vertex_poll_seconds)
    if state_name(final) == "JOB_STATE_SUCCEEDED":
        console.print(f"trained: the candidate is in {run.model_dir}")
        return True
    error = final.error.message if final.error and final.error.message else "no message"
    print(f"mega: error: Vertex AI job {handle.id} {state_name(final)}: {error}", file=sys.stderr)
    return False


def _get(client: JobServiceClient, name: str, settings: Settings, target: CloudTarget) -> object:
    with vertex_errors(settings, target):
        return client.get_custom_job(name=name, **call_options(settings))


def _cancel(client: JobServiceClient, name: str, settings: Settings, target: CloudTarget) -> None:
    with vertex_errors(settings, target):
        client.cancel_custom_job(name=name, **call_options(settings))
