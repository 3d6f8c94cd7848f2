"""`mega pipeline compile` and `mega run --on vertex`: the kfp pipeline on Vertex AI Pipelines.

Plan (`plan_pipeline`): dvc.yaml's stages, each step's image at the commit's tag, the
steps' environment, the params digests. Submit (`submit`): compile, stage params.yaml
once per stage digest under MEGA_GCS_ROOT, create the PipelineJob (pipeline root on GCS,
service account, caching, labels) and follow it step by step to its end.
"""

from __future__ import annotations

import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import yaml

from common import storage
from common.params import RegistryParams
from common.services import VERTEX_MODEL_ID, label_value, vertex_client
from common.settings import Settings
from workflow.images import (
    DIRTY_SUFFIX,
    GPU_TAG_SUFFIX,
    commit_label,
    compose_services,
    remote_image,
    service_container,
)
from workflow.pipeline import PIPELINE_NAME, STAGES, PipelinePlan, compile_pipeline
from workflow.project import Project
from workflow.stages import params_digest, read_stages
from workflow.vertex import (
    CloudConfigError,
    CloudTarget,
    accelerator,
    as_json,
    job_env,
    job_name,
    training_image,
)
from workflow.vertex_jobs import (
    JobHandle,
    call_options,
    check_bucket,
    follow,
    state_name,
    vertex_errors,
)
from workflow.vertex_submit import cloud_notes, source_tag

if TYPE_CHECKING:
    from google.cloud import aiplatform_v1
    from rich.console import Console

PIPELINE_REFUSED_FIX = (
    "read the pipeline (`mega pipeline compile`) and params.yaml's vertex: section "
    "(machine type, accelerator)"
)
API_IMAGE = "api-service"  # the container the Vertex AI Model Registry records as the server
# What a step's state means, where Vertex AI's name says little.
STATE_NOTES = {
    "SKIPPED": " (cached: the outputs of an earlier run with the same inputs)",
    "NOT_TRIGGERED": " (behind the gate, which stayed closed)",
}
PIPELINE_STATES = {
    "PIPELINE_STATE_SUCCEEDED",
    "PIPELINE_STATE_FAILED",
    "PIPELINE_STATE_CANCELLED",
}


def pipeline_root(target: CloudTarget) -> str:
    """Where Vertex AI Pipelines writes the steps' artifacts."""
    return f"{target.gcs_root}/pipeline-root"


def params_root(target: CloudTarget) -> str:
    """Where params.yaml is staged, once per stage and digest."""
    return f"{target.gcs_root}/pipeline/params"


def step_images(root: Path, target: CloudTarget, plan_vertex: Any, tag: str) -> dict[str, str]:
    """Stage → the image its step runs: compose's service of the same name, pushed at
    `tag`; the training step's GPU build when params.yaml asks for GPUs."""
    services = compose_services(root)
    images = {}
    for stage in STAGES:
        container = service_container(stage, services.get(stage, {}))
        images[stage] = remote_image(target.image_repository, container, tag)
    images["train"] = training_image(target, plan_vertex, tag)
    return images


def plan_pipeline(
    project: Project, settings: Settings, target: CloudTarget, tag: str, caching: bool = True
) -> PipelinePlan:
    """The pipeline of the checked-out project for `target`, its images at `tag`; with
    `caching` off every step runs again.

    Raises:
        StageDefinitionError: dvc.yaml defines a stage the pipeline cannot run.
    """
    params = project.params
    if params.vertex.accelerator_count:
        accelerator(params.vertex)  # an unknown name: CloudConfigError, with the valid ones
    if not VERTEX_MODEL_ID.fullmatch(params.registry.model_name):
        # Said now, not by register at the end of a paid run.
        raise CloudConfigError(
            f"params.yaml registry.model_name {params.registry.model_name!r} is not a Vertex AI "
            "model ID (a letter first, then at most 62 of a-z, 0-9, - and _): rename it"
        )
    raw = yaml.safe_load((project.root / "params.yaml").read_text())
    stages = read_stages(project.root, params.dataset)
    env = {**job_env(target, settings), "MEGA_GCP_REGION": target.region}
    return PipelinePlan(
        stages=stages,
        images=step_images(project.root, target, params.vertex, tag),
        env=env,
        digests={name: params_digest(stage, raw) for name, stage in stages.items()},
        vertex=params.vertex,
        registry=params.registry,
        serving_image=remote_image(target.image_repository, API_IMAGE, tag),
        params_root=params_root(target),
        models_root=f"{target.gcs_root}/models",
        # A `-dirty` tag names whatever was pushed last under it: never reuse its results.
        caching=caching and not tag.endswith(DIRTY_SUFFIX),
    )


def pipeline_labels(project: Project, plan: PipelinePlan, tag: str) -> dict[str, str]:
    """The PipelineJob's labels: the commit, the image tag, and `data-params`, the digests
    of collect's and process's params (the run makes its own data, so its version is
    known only once process ran: the registered model's `data-version` label has it)."""
    return {
        "mega-stage": "pipeline",
        "dataset": label_value(project.params.dataset),
        "git-sha": commit_label(project.root),
        "image-tag": label_value(tag),
        "data-params": f"{plan.digests['collect']}-{plan.digests['process']}",
    }


def pipeline_job_id(name: str) -> str:
    """`name` as a PipelineJob ID (`[a-z][-a-z0-9]*`, at most 128): a dataset named
    `my_data` would be refused."""
    return re.sub(r"[^-a-z0-9]+", "-", name.lower())[:128]


def pipeline_notes(plan: PipelinePlan, target: CloudTarget, tag: str) -> list[str]:
    """What a user should know before the run: the images it needs, W&B off."""
    gpu = plan.images["train"].endswith(GPU_TAG_SUFFIX)
    notes = cloud_notes(target, f"the steps run the images at tag {tag}", tag, gpu)
    if tag.endswith(DIRTY_SUFFIX):
        notes.append("the cache is off: a -dirty tag may name other code at every push")
    return notes


def pipeline_job(
    spec: dict[str, Any], target: CloudTarget, name: str, labels: dict[str, str]
) -> aiplatform_v1.PipelineJob:
    """The PipelineJob body: the compiled spec, the pipeline root, caching as compiled
    (on for every step), the labels, and the service account the steps run as."""
    from google.cloud import aiplatform_v1

    job = aiplatform_v1.PipelineJob(
        display_name=name,
        pipeline_spec=spec,
        runtime_config=aiplatform_v1.PipelineJob.RuntimeConfig(
            gcs_output_directory=pipeline_root(target)
        ),
        labels=labels,
    )
    if target.service_account:
        job.service_account = target.service_account
    return job


def compiled_spec(plan: PipelinePlan) -> dict[str, Any]:
    """The pipeline's IR as a dict (compiled into a temporary file)."""
    with tempfile.TemporaryDirectory(prefix="mega-pipeline-") as tmp:
        out = compile_pipeline(plan, Path(tmp) / f"{PIPELINE_NAME}.yaml")
        spec: dict[str, Any] = yaml.safe_load(out.read_text())
    return spec


def console_link(target: CloudTarget, job_id: str) -> str:
    """The pipeline run's page in the Google Cloud console (its graph, step by step)."""
    return (
        f"https://console.cloud.google.com/vertex-ai/locations/{target.region}"
        f"/pipelines/runs/{job_id}?project={target.project}"
    )


def logs_link(target: CloudTarget, job_id: str) -> str:
    """The run's logs in Cloud Logging (every step's)."""
    query = quote(
        f'resource.type="aiplatform.googleapis.com/PipelineJob" '
        f'resource.labels.pipeline_job_id="{job_id}"',
        safe="",
    )
    return f"https://console.cloud.google.com/logs/query;query={query}?project={target.project}"


def step_progress() -> Any:
    """A reader of a PipelineJob's steps: each call returns the steps whose state changed
    since the last call, as `step: STATE` lines (the run's own DAG task left out)."""
    seen: dict[str, str] = {}

    def changes(job: Any) -> list[str]:
        lines = []
        # In the order the steps run; the root DAG and the gate's conditions left out.
        states = step_states(job)
        for stage in sorted(states, key=STAGES.index):
            if seen.get(stage) != states[stage]:
                seen[stage] = states[stage]
                lines.append(f"{stage}: {states[stage]}{STATE_NOTES.get(states[stage], '')}")
        return lines

    return changes


def pipeline_client(settings: Settings) -> aiplatform_v1.PipelineServiceClient:
    """A PipelineServiceClient for the region (or MEGA_VERTEX_ENDPOINT), over REST."""
    from google.cloud import aiplatform_v1

    return vertex_client(aiplatform_v1.PipelineServiceClient, settings)


def dry_run(
    project: Project, settings: Settings, errors: Console, tag: str | None, caching: bool = True
) -> None:
    """Print the PipelineJob that would be created (stdout: JSON only; notes: stderr)."""
    target = CloudTarget.from_settings(settings, dry_run=True)
    tag = source_tag(project, tag)
    plan = plan_pipeline(project, settings, target, tag, caching)
    name = pipeline_job_id(job_name("pipeline", project.params))
    print(
        as_json(
            pipeline_job(compiled_spec(plan), target, name, pipeline_labels(project, plan, tag))
        )
    )

    def say(text: str) -> None:
        errors.print(f"dry run: {text}", highlight=False)

    if target.missing:
        say(f"{', '.join(target.missing)} unset, shown as <MEGA_…> (docs/cloud.md)")
    say(f"params.yaml would be staged under {plan.params_root}/ (one file per stage)")
    for note in pipeline_notes(plan, target, tag):
        say(note)
    say(f"nothing was sent; POST {target.parent}/pipelineJobs creates it")


@dataclass(frozen=True)
class SubmittedPipeline:
    """A PipelineJob `submit` created, and its last state read (None when detached)."""

    name: str
    final: Any | None

    @property
    def succeeded(self) -> bool:
        return self.final is None or state_name(self.final) == "PIPELINE_STATE_SUCCEEDED"


def stage_params(project: Project, plan: PipelinePlan) -> int:
    """Upload params.yaml as `<params_root>/<stage>-<digest>.yaml` for each stage that
    reads params, unless that file already holds it; returns how many were uploaded.

    The name changes when the stage's declared params change, so a run in flight never
    sees those change; the rest of the file (what lineage records) is this submission's.
    """
    data = (project.root / "params.yaml").read_bytes()
    sent = 0
    for stage in STAGES:
        if not plan.stages[stage].params:
            continue
        uri = f"{plan.params_root}/{stage}-{plan.digests[stage]}.yaml"
        if not storage.exists(uri) or storage.read_bytes(uri) != data:
            storage.write_bytes(uri, data)
            sent += 1
    return sent


def submit(
    project: Project,
    settings: Settings,
    console: Console,
    tag: str | None,
    detach: bool,
    caching: bool = True,
) -> SubmittedPipeline:
    """Compile, stage params.yaml, create the PipelineJob and (unless `detach`) follow it.

    Raises:
        CloudConfigError: a setting is missing or wrong (before any request).
        StageDefinitionError: dvc.yaml or params.yaml asks what the pipeline cannot do.
        ServiceError: Vertex AI or Cloud Storage refused or did not answer.
    """
    target = CloudTarget.from_settings(settings)
    tag = source_tag(project, tag)
    plan = plan_pipeline(project, settings, target, tag, caching)
    name = pipeline_job_id(job_name("pipeline", project.params))
    body = pipeline_job(compiled_spec(plan), target, name, pipeline_labels(project, plan, tag))
    client = pipeline_client(settings)

    def call(verb: str, **fields: Any) -> Any:
        # A create is never retried: a request that timed out may have started the run.
        with vertex_errors(settings, PIPELINE_REFUSED_FIX):
            method = getattr(client, f"{verb}_pipeline_job")
            return method(**fields, **call_options(settings, retry=verb != "create"))

    for note in pipeline_notes(plan, target, tag):
        console.print(f"[yellow]note[/yellow]: {note}", highlight=False)
    # One cheap request first: a disabled API or a missing permission is said in seconds.
    with vertex_errors(settings, PIPELINE_REFUSED_FIX):
        client.list_pipeline_jobs(
            request={"parent": target.parent, "page_size": 1}, **call_options(settings)
        )
    check_bucket(target.gcs_root, target.region)
    sent = stage_params(project, plan)
    console.print(f"params: {plan.params_root}/ ({sent} file(s) uploaded, the rest already there)")
    created = call("create", parent=target.parent, pipeline_job=body, pipeline_job_id=name)
    handle = JobHandle(
        name=created.name,
        kind="pipeline run",
        get=lambda: call("get", name=created.name),
        cancel=lambda: call("cancel", name=created.name),
        progress=lambda job: "",
        events=step_progress(),
        cancel_hint="its page's Stop button (the console link above)",
    )
    console.print(f"Vertex AI pipeline run {created.name}")
    console.print(f"  console: {console_link(target, handle.id)}")
    console.print(f"  logs:    {logs_link(target, handle.id)}")
    if detach:
        console.print("detached: follow it with the console link above")
        return SubmittedPipeline(name=created.name, final=None)
    # The training step's own limit, half as long again, plus an hour for the other steps.
    limit = 3600 * (1.5 * project.params.vertex.timeout_hours + 1)
    final = follow(handle, console, settings.vertex_poll_seconds, limit)
    submitted = SubmittedPipeline(name=created.name, final=final)
    _say_end(submitted, handle, limit)
    if submitted.succeeded:
        _say_registered(step_states(final), project.params.registry, plan.models_root, console)
    return submitted


def _say_registered(
    states: dict[str, str], registry: RegistryParams, models_root: str, console: Console
) -> None:
    """Where a succeeded run left the model, or that the gate kept it out."""
    if states.get("register") in ("SUCCEEDED", "SKIPPED"):
        console.print(
            f"registered: {models_root}/{registry.model_name}/ and the Vertex AI Model "
            f"Registry's model {registry.model_name} (its aliases say whether it is production)",
            highlight=False,
        )
        return
    console.print(
        f"gate: the candidate is below registry.min_accuracy ({registry.min_accuracy}) or "
        f"min_macro_f1 ({registry.min_macro_f1}): not optimized, not registered (its "
        "evaluation is in the console)",
        highlight=False,
    )


def step_states(job: Any) -> dict[str, str]:
    """Each pipeline step's state in a PipelineJob read: {stage: `SUCCEEDED`, …}."""
    return {
        task.task_name: task.state.name
        for task in job.job_detail.task_details
        if task.task_name in STAGES
    }


def _say_end(submitted: SubmittedPipeline, handle: JobHandle, limit: float) -> None:
    """One line on stderr for a run that did not succeed or is still going."""
    final: Any = submitted.final
    state = state_name(final)
    if state not in PIPELINE_STATES:
        print(
            f"mega: error: stopped following pipeline run {handle.id}, still {state} after "
            f"{limit / 3600:g} h; it goes on running on Vertex AI (console link above)",
            file=sys.stderr,
        )
    elif not submitted.succeeded:
        error = final.error.message if final.error and final.error.message else "no message"
        print(f"mega: error: Vertex AI pipeline run {handle.id} {state}: {error}", file=sys.stderr)
