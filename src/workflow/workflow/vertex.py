"""What a Vertex AI training job runs: the cloud target, the worker pools, the job bodies.

Pure functions from params.yaml's `vertex:` section and the settings to the request
bodies Vertex AI takes (`aiplatform_v1.CustomJob`, `HyperparameterTuningJob`); nothing
here talks to a service (`workflow.vertex_jobs` submits and follows). The trial
container runs the same command as the local `train` stage, on GCS URIs:
`python -m trainer train --data gs://… --params gs://…/params.yaml`, the model going to
Vertex AI's `AIP_MODEL_DIR` under the job's output folder.

Secrets never enter a body: the W&B key stays in Secret Manager and the container
reads it at start (MEGA_WANDB_SECRET names the secret, it is not the key).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from common import storage
from common.params import PipelineParams, VertexParams
from common.settings import Settings
from workflow.images import GPU_TAG_SUFFIX, TRAINING_IMAGE, remote_image, repository_problem

if TYPE_CHECKING:
    from google.cloud import aiplatform_v1

# The settings a cloud job needs, by field, with what each one is for.
REQUIRED_SETTINGS = {
    "gcp_project": "the Google Cloud project",
    "gcs_root": "the gs:// folder for the job's data and outputs",
    "image_repository": "the Artifact Registry repository of the images",
}


class CloudConfigError(ValueError):
    """A setting a cloud job needs is unset or invalid (a usage error: exit 2)."""


@dataclass(frozen=True)
class CloudTarget:
    """Where a job runs: the project, region, output folder, image repository and account.

    `missing` lists the settings (as `MEGA_*` names) that are unset: only a dry run
    gets this far with any, and shows each as its `<MEGA_…>` name in its place.
    """

    project: str
    region: str
    gcs_root: str
    image_repository: str
    service_account: str | None
    wandb_secret: str | None
    missing: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings, *, dry_run: bool = False) -> CloudTarget:
        """The target the settings describe.

        Raises:
            CloudConfigError: a required setting is unset (unless `dry_run`), or
                MEGA_GCS_ROOT is not a gs:// URI.
        """
        missing = [name for name in REQUIRED_SETTINGS if not getattr(settings, name)]
        if missing and not dry_run:
            names = ", ".join(
                f"MEGA_{name.upper()} ({REQUIRED_SETTINGS[name]})" for name in missing
            )
            which = "them" if len(missing) > 1 else "it"
            raise CloudConfigError(
                f"{names} not set; set {which} in .env or the environment (docs/cloud.md)"
            )
        if settings.gcs_root and not storage.is_gcs(settings.gcs_root):
            raise CloudConfigError(
                f"MEGA_GCS_ROOT={settings.gcs_root} is not a gs:// URI; "
                "set it to gs://<bucket>[/<prefix>] (docs/cloud.md)"
            )
        if settings.image_repository and (problem := repository_problem(settings.image_repository)):
            raise CloudConfigError(problem)

        def value(name: str) -> str:
            return getattr(settings, name) or f"<MEGA_{name.upper()}>"

        return cls(
            project=value("gcp_project"),
            region=settings.gcp_region,
            gcs_root=value("gcs_root").rstrip("/"),
            image_repository=value("image_repository"),
            service_account=settings.vertex_service_account,
            wandb_secret=settings.wandb_secret,
            missing=tuple(f"MEGA_{name.upper()}" for name in missing),
        )

    @property
    def parent(self) -> str:
        """The location resource jobs are created under."""
        return f"projects/{self.project}/locations/{self.region}"


def job_name(kind: str, params: PipelineParams, now: datetime | None = None) -> str:
    """A display name unique to the second: `mega-<kind>-<dataset>-<YYYYMMDD-HHMMSS>`."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"mega-{kind}-{params.dataset.lower()}-{stamp}"


def training_image(target: CloudTarget, vertex: VertexParams, tag: str) -> str:
    """The training image at `tag`: its GPU build (`<tag>-gpu`) when the job has GPUs."""
    suffix = GPU_TAG_SUFFIX if vertex.accelerator_count else ""
    return remote_image(target.image_repository, TRAINING_IMAGE, tag + suffix)


def job_env(target: CloudTarget, settings: Settings) -> dict[str, str]:
    """The environment of the trainer in the job: names and modes, never a secret.

    With MEGA_WANDB_SECRET the run is tracked online (the container reads the key from
    Secret Manager); without it W&B is off, since an offline run would be lost with the
    container.
    """
    env = {"MEGA_GCP_PROJECT": target.project, "MEGA_WANDB_PROJECT": settings.wandb_project}
    if target.wandb_secret:
        env["MEGA_WANDB_MODE"] = "online"
        env["MEGA_WANDB_SECRET"] = target.wandb_secret
    else:
        env["MEGA_WANDB_MODE"] = "disabled"
    return env


def accelerator(vertex: VertexParams) -> int:
    """`vertex.accelerator_type` as Vertex AI's enum value.

    Raises:
        CloudConfigError: not one of Vertex AI's accelerator types (the message lists them).
    """
    from google.cloud import aiplatform_v1

    members = aiplatform_v1.AcceleratorType.__members__
    known = [name for name, member in members.items() if member.value]
    if vertex.accelerator_type not in known:
        raise CloudConfigError(
            f"params.yaml vertex.accelerator_type {vertex.accelerator_type!r} is not a Vertex AI "
            f"accelerator type; use one of {', '.join(known)}"
        )
    return int(members[vertex.accelerator_type].value)


def worker_pool_specs(
    vertex: VertexParams, image: str, args: list[str], env: dict[str, str]
) -> list[aiplatform_v1.WorkerPoolSpec]:
    """The chief's pool, and with `workers` > 1 a second pool of `workers - 1` replicas.

    Vertex AI describes the pools to each container in CLUSTER_SPEC (pool 0 is the
    chief), which the trainer turns into TF_CONFIG for MultiWorkerMirroredStrategy.
    """
    from google.cloud import aiplatform_v1

    machine = aiplatform_v1.MachineSpec(machine_type=vertex.machine_type)
    if vertex.accelerator_count:
        machine.accelerator_type = accelerator(vertex)  # type: ignore[assignment]
        machine.accelerator_count = vertex.accelerator_count

    def pool(replicas: int) -> aiplatform_v1.WorkerPoolSpec:
        return aiplatform_v1.WorkerPoolSpec(
            machine_spec=machine,
            replica_count=replicas,
            disk_spec=aiplatform_v1.DiskSpec(boot_disk_size_gb=vertex.boot_disk_gb),
            container_spec=aiplatform_v1.ContainerSpec(
                image_uri=image,
                args=args,
                env=[aiplatform_v1.EnvVar(name=k, value=v) for k, v in sorted(env.items())],
            ),
        )

    pools = [pool(1)]
    if vertex.workers > 1:
        pools.append(pool(vertex.workers - 1))
    return pools


@dataclass(frozen=True)
class TrainingRun:
    """One training on Vertex AI: its inputs on GCS and its output folder."""

    display_name: str
    data_uri: str  # the processed data (gs://)
    output_dir: str  # the job's base output directory (gs://); the model goes to model/
    image: str
    labels: dict[str, str]

    @property
    def params_uri(self) -> str:
        """Where params.yaml is staged for the job."""
        return f"{self.output_dir}/params.yaml"

    @property
    def model_dir(self) -> str:
        """Vertex AI's AIP_MODEL_DIR for the job, where the trainer exports."""
        return f"{self.output_dir}/model/"

    def trainer_args(self) -> list[str]:
        """The trainer's command line; `--out` is left to AIP_MODEL_DIR."""
        return ["train", "--data", self.data_uri, "--params", self.params_uri]


def custom_job_spec(
    run: TrainingRun,
    vertex: VertexParams,
    target: CloudTarget,
    settings: Settings,
    extra_env: dict[str, str] | None = None,
) -> aiplatform_v1.CustomJobSpec:
    """The CustomJobSpec of `run`: pools, output folder, account, timeout, restarts;
    `extra_env` joins the trainer's environment."""
    from google.cloud import aiplatform_v1
    from google.protobuf import duration_pb2

    env = {**job_env(target, settings), **(extra_env or {})}
    spec = aiplatform_v1.CustomJobSpec(
        worker_pool_specs=worker_pool_specs(vertex, run.image, run.trainer_args(), env),
        base_output_directory=aiplatform_v1.GcsDestination(output_uri_prefix=run.output_dir),
        scheduling=aiplatform_v1.Scheduling(
            timeout=duration_pb2.Duration(seconds=round(vertex.timeout_hours * 3600)),
            restart_job_on_worker_restart=vertex.restart_on_worker_restart,
        ),
    )
    if target.service_account:
        spec.service_account = target.service_account
    return spec


def custom_job(
    run: TrainingRun, vertex: VertexParams, target: CloudTarget, settings: Settings
) -> aiplatform_v1.CustomJob:
    """The CustomJob body `mega train --on vertex` creates."""
    from google.cloud import aiplatform_v1

    return aiplatform_v1.CustomJob(
        display_name=run.display_name,
        job_spec=custom_job_spec(run, vertex, target, settings),
        labels=run.labels,
    )


def tuning_job(
    run: TrainingRun, params: PipelineParams, target: CloudTarget, settings: Settings
) -> aiplatform_v1.HyperparameterTuningJob:
    """The HyperparameterTuningJob body `mega tune --on vertex` creates: params.yaml's
    `tune:` study, each trial the custom job of `run` with the trial's values appended
    to the trainer's arguments (`--<key>=<value>`) by Vertex AI."""
    from google.cloud import aiplatform_v1

    from workflow.tuning import vertex_metric, vertex_parameters, vertex_trial_env

    tune = params.tune
    return aiplatform_v1.HyperparameterTuningJob(
        display_name=run.display_name,
        study_spec=aiplatform_v1.StudySpec(
            metrics=[vertex_metric(tune)], parameters=vertex_parameters(tune)
        ),
        max_trial_count=tune.trials,
        parallel_trial_count=tune.parallel_trials,
        trial_job_spec=custom_job_spec(
            run,
            params.vertex,
            target,
            settings,
            # The trials' W&B runs in one group, as a local study's are.
            extra_env={**vertex_trial_env(), "WANDB_RUN_GROUP": run.display_name},
        ),
        labels=run.labels,
    )


def as_json(message: Any) -> str:
    """A job body as the JSON a user reads: enum names, default fields left out."""
    from google.protobuf import json_format

    body = json_format.MessageToDict(type(message).pb(message))
    return json.dumps(body, indent=2)
