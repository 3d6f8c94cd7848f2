"""Submitting jobs to Vertex AI and following them: clients, staging, errors, progress.

Every call is bounded by the settings' service budget, and every failure is one line
(`ServiceError`) naming Vertex AI or Cloud Storage, what went wrong and the fix: no
credentials, a missing bucket, a permission or an API not enabled.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from common import storage
from common.cli import EXIT_INTERRUPTED
from common.services import (
    ServiceBudget,
    ServiceError,
    google_call_options,
    vertex_client,
)
from common.services import vertex_errors as common_vertex_errors
from common.settings import Settings
from workflow.vertex import CloudTarget

if TYPE_CHECKING:
    from google.cloud import aiplatform_v1
    from rich.console import Console

FINAL_STATES = {
    f"{kind}_STATE_{end}"
    for kind in ("JOB", "PIPELINE")
    for end in ("SUCCEEDED", "FAILED", "CANCELLED")
}


def job_client(settings: Settings) -> aiplatform_v1.JobServiceClient:
    """A JobServiceClient for the region (or MEGA_VERTEX_ENDPOINT), over REST."""
    from google.cloud import aiplatform_v1

    return vertex_client(aiplatform_v1.JobServiceClient, settings)


def call_options(settings: Settings, *, retry: bool = True) -> dict[str, Any]:
    """`timeout` and `retry` for one API call, from the service budget."""
    return google_call_options(ServiceBudget.from_settings(settings), retry=retry)


JOB_REFUSED_FIX = "check the vertex: section of params.yaml (machine type, accelerator, workers)"


def vertex_errors(
    settings: Settings, refused_fix: str = JOB_REFUSED_FIX
) -> contextlib.AbstractContextManager[None]:
    """Turn Vertex AI's refusals and silences, for a job or run `mega` submits, into
    one-line `ServiceError`s (`common.services.vertex_errors`); `refused_fix` follows a
    request Vertex AI found invalid."""
    return common_vertex_errors(
        settings,
        denied_fix="grant your account roles/aiplatform.user (and roles/iam.serviceAccountUser "
        "on MEGA_VERTEX_SERVICE_ACCOUNT); docs/cloud.md lists the roles",
        refused="refused",
        refused_fix=refused_fix,
    )


def check_bucket(gcs_root: str, region: str) -> None:
    """Fail in seconds, as one line, when MEGA_GCS_ROOT's bucket does not exist."""
    from google.api_core.exceptions import NotFound

    from common.gcs import probe, split_gcs

    bucket, _ = split_gcs(gcs_root)
    try:
        probe(gcs_root)
    except NotFound as exc:
        raise ServiceError(
            f"Cloud Storage (gs://{bucket})",
            f"bucket {bucket} does not exist",
            f"create it (gcloud storage buckets create gs://{bucket} --location {region}) "
            "or fix MEGA_GCS_ROOT",
        ) from exc


def stage_data(local: Path, remote: str) -> int:
    """Upload the files of `local` missing under the `remote` prefix; returns how many.

    The prefix is keyed by the data version, so files already there are the same
    bytes: a re-run, or one after an interrupted upload, sends only what is missing.
    """
    have = {uri.removeprefix(remote.rstrip("/") + "/") for uri in storage.list_files(remote)}
    return storage.upload_tree(local, remote, skip=lambda relative: relative in have)


def console_link(target: CloudTarget, job_id: str) -> str:
    """The job's page in the Google Cloud console."""
    return (
        f"https://console.cloud.google.com/agent-platform/locations/{target.region}"
        f"/training/{job_id}?project={target.project}"
    )


def logs_link(target: CloudTarget, job_id: str) -> str:
    """The job's logs in Cloud Logging."""
    query = quote(f'resource.type="ml_job" resource.labels.job_id="{job_id}"', safe="")
    return f"https://console.cloud.google.com/logs/query;query={query}?project={target.project}"


@dataclass(frozen=True)
class JobHandle:
    """How to read and cancel one job, whatever its kind."""

    name: str  # projects/…/locations/…/<kind>/<id>
    kind: str  # what the CLI calls it: `custom job`, `tuning job`
    get: Callable[[], Any]
    cancel: Callable[[], None]
    progress: Callable[[Any], str]  # a few words on a job's progress (trials done…)
    # Lines to print for a read: what changed inside the job since the last read (a
    # pipeline run's steps).
    events: Callable[[Any], list[str]] = lambda job: []
    # How a user cancels it later, by hand.
    cancel_hint: str = (
        "the console link above or `gcloud ai custom-jobs cancel` / "
        "`gcloud ai hp-tuning-jobs cancel`"
    )

    @property
    def id(self) -> str:
        return self.name.rsplit("/", 1)[-1]


def state_name(job: Any) -> str:
    """A job's state as Vertex AI names it (`JOB_STATE_RUNNING`)."""
    return str(job.state.name)


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def follow(handle: JobHandle, console: Console, poll_seconds: float, limit_seconds: float) -> Any:
    """Poll the job until it ends, printing each change of state; returns the last read.

    After `limit_seconds` (well past the job's own timeout) it stops following and
    returns the job as it stands, not ended. A failed read ends the command (the job goes
    on running, as the error says). Ctrl-C asks whether to cancel the job (on a terminal;
    elsewhere it is left running), then exits with 130, the shell's code for an
    interrupted command.
    """
    started = time.monotonic()
    last = ""
    try:
        with console.status(f"{handle.kind} {handle.id}: submitted") as status:
            while True:
                job = _read(handle)
                state = state_name(job)
                extra = handle.progress(job)
                elapsed = time.monotonic() - started
                # What changed inside first: a run's last steps end before the run does.
                for line in handle.events(job):
                    console.print(f"{_elapsed(elapsed):>12}    {line}", highlight=False)
                if state != last:
                    console.print(f"{_elapsed(elapsed):>12}  {state}  {extra}")
                    last = state
                if state in FINAL_STATES or elapsed >= limit_seconds:
                    return job
                status.update(f"{handle.kind} {handle.id}: {state} {extra} ({_elapsed(elapsed)})")
                time.sleep(poll_seconds)
    except KeyboardInterrupt:
        return _interrupted(handle, console)


def _read(handle: JobHandle) -> Any:
    """The job now; a ServiceError says that the job itself goes on."""
    try:
        return handle.get()
    except ServiceError as exc:
        raise ServiceError(
            exc.service,
            exc.problem,
            f"{exc.fix}; {handle.kind} {handle.id} goes on running on Vertex AI (its console "
            "link is above)",
            denied=exc.denied,
        ) from exc


def _interrupted(handle: JobHandle, console: Console) -> Any:
    """Ctrl-C while following: cancel the job if the user says so."""
    import typer

    if sys.stdin.isatty() and typer.confirm(
        f"\nCancel {handle.kind} {handle.id} on Vertex AI?", default=False
    ):
        handle.cancel()
        console.print(f"cancellation of {handle.id} requested; Vertex AI stops it shortly")
    else:
        console.print(
            f"\n{handle.kind} {handle.id} goes on running; cancel it with {handle.cancel_hint}"
        )
    raise SystemExit(EXIT_INTERRUPTED)
