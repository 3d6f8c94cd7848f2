"""The Vertex AI Model Registry copy of the folder registry (`register --vertex-serving-image`).

One Vertex AI model per `registry.model_name`, with that name as its model ID
(`projects/P/locations/R/models/digits-cnn`); each folder-registry version published
from the cloud pipeline becomes one of its versions, pointing at the version's folder
(`artifact_uri`) and the API service's image. The folder registry stays the source of
truth: its `aliases.json` decides which Vertex AI version holds `production` and
`candidate`, and a version is recognised again by its `content-hash` label, so a re-run
uploads nothing twice and only fixes the aliases.

Every call is bounded by the settings' service budget and every failure is one line
(`ServiceError`) naming Vertex AI; the client speaks REST, so the tests' loopback stub
checks the path production takes.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common import storage
from common.contracts import LINEAGE, METRICS, Lineage, Metrics, RegisterResult
from common.registry import ModelRegistry
from common.services import (
    VERTEX_MODEL_ID,
    ServiceBudget,
    ServiceError,
    google_call_options,
    label_value,
    vertex_client,
    vertex_errors,
    vertex_service,
)
from common.settings import Settings
from trainer.register import CANDIDATE, PRODUCTION

if TYPE_CHECKING:
    from google.cloud import aiplatform_v1

# The aliases the folder registry's gate sets; any a user added are left alone.
MANAGED_ALIASES = (PRODUCTION, CANDIDATE)
# Vertex AI's alias of the version a request without one gets; it follows production.
DEFAULT_ALIAS = "default"
# The API service's container (src/Dockerfile's api-service target, api_service.routes).
SERVING_PORT = 8000
PREDICT_ROUTE = "/v1/predict"
HEALTH_ROUTE = "/readyz"
# How long an upload may take before register gives up waiting (seconds). Vertex AI
# usually finishes in well under a minute; the upload may still complete after this.
UPLOAD_WAIT_SECONDS = 600.0
_DENIED_FIX = (
    "grant the account register runs as roles/aiplatform.user in the project "
    "(docs/cloud.md, Vertex AI Model Registry)"
)


class VertexSetupError(ValueError):
    """`--vertex-serving-image` cannot work with these settings (a usage error)."""


@dataclass(frozen=True)
class VertexVersion:
    """One version of the Vertex AI model register made or found.

    `name` is `projects/P/locations/R/models/M`, `version_id` Vertex AI's number ("3"),
    `uploaded` False when it already existed, `aliases` the managed ones it holds now.
    """

    name: str
    version_id: str
    uploaded: bool
    aliases: tuple[str, ...]


def check_setup(settings: Settings, registry_root: str, model_name: str, image: str) -> None:
    """Before any work: what uploading to Vertex AI needs.

    Raises:
        VertexSetupError: MEGA_GCP_PROJECT unset, a registry Vertex AI cannot read (not
            gs://), a model name that is not a valid model ID, or an empty image.
    """
    if not image.strip():
        raise VertexSetupError("--vertex-serving-image is empty; pass REPO/api-service:TAG")
    if not settings.gcp_project:
        raise VertexSetupError(
            "--vertex-serving-image needs MEGA_GCP_PROJECT to name the Vertex AI project "
            "(MEGA_GCP_REGION picks the region, default us-central1); set it, or leave the "
            "option out to keep the folder registry only"
        )
    if not storage.is_gcs(registry_root):
        raise VertexSetupError(
            f"--registry {registry_root}: Vertex AI reads model versions from Cloud Storage; "
            "pass a gs:// registry with --vertex-serving-image"
        )
    if not VERTEX_MODEL_ID.fullmatch(model_name):
        raise VertexSetupError(
            f"registry.model_name {model_name!r} is not a Vertex AI model ID (a letter first, "
            "then at most 62 of a-z, 0-9, - and _); rename it in params.yaml"
        )


def version_labels(
    version: str, info: dict[str, Any], lineage: Lineage, metrics: Metrics
) -> dict[str, str]:
    """The labels of the Vertex AI version of folder-registry `version`.

    `info` is its version.json (`content_hash`, the identity a re-run finds it by);
    metrics as 4-decimal fractions; facts the lineage lacks are left out.
    """
    labels = {
        "mega-version": version,
        "content-hash": str(info["content_hash"])[:40],
        "test-accuracy": f"{metrics.test.accuracy:.4f}",
        "macro-f1": f"{metrics.test.macro_f1:.4f}",
    }
    if lineage.data_hash:
        labels["data-version"] = lineage.data_hash[:12]
    if lineage.git_sha:
        labels["git-sha"] = lineage.git_sha[:40]
    return {key: label_value(value) for key, value in labels.items()}


def upload_body(
    name: str, version: str, uri: str, registry_root: str, image: str, labels: dict[str, str]
) -> aiplatform_v1.Model:
    """The Model an upload sends: the version's folder and the API service's container,
    told (by its settings) to serve exactly this folder-registry version."""
    from google.cloud.aiplatform_v1 import EnvVar, Model, ModelContainerSpec, Port

    env = {
        "MEGA_MODELS_ROOT": registry_root,
        "MEGA_MODEL_NAME": name,
        "MEGA_MODEL_ALIAS": version,  # a version number resolves to itself
        "MEGA_SERVE_PORT": str(SERVING_PORT),
    }
    return Model(
        display_name=name,
        description=f"{name} version {version} of the Mega Pipeline folder registry ({uri})",
        version_description=f"folder-registry version {version}",
        artifact_uri=uri.rstrip("/") + "/",
        container_spec=ModelContainerSpec(
            image_uri=image,
            env=[EnvVar(name=key, value=value) for key, value in env.items()],
            ports=[Port(container_port=SERVING_PORT)],
            predict_route=PREDICT_ROUTE,
            health_route=HEALTH_ROUTE,
        ),
        labels=labels,
    )


def model_client(settings: Settings) -> aiplatform_v1.ModelServiceClient:
    """A ModelServiceClient for the region (or MEGA_VERTEX_ENDPOINT), over REST."""
    from google.cloud import aiplatform_v1

    return vertex_client(aiplatform_v1.ModelServiceClient, settings)


def publish_to_vertex(
    registry: ModelRegistry, record: RegisterResult, image: str, settings: Settings
) -> VertexVersion:
    """Upload folder-registry version `record.version` as a version of the Vertex AI
    model `registry.name` (the first upload creates the model), unless a version with
    its content hash is there already; then make the managed aliases agree with the
    folder registry's aliases.json.

    Raises:
        ServiceError: Vertex AI cannot be reached, refuses the credentials or the
            request, or the upload does not finish within UPLOAD_WAIT_SECONDS.
    """
    info = registry.version_info(record.version)
    lineage = Lineage.read(storage.join(record.uri, LINEAGE))
    metrics = Metrics.read(storage.join(record.uri, METRICS))
    labels = version_labels(record.version, info, lineage, metrics)
    model = (
        f"projects/{settings.gcp_project}/locations/{settings.gcp_region}/models/{registry.name}"
    )
    hashes = _local_hashes(registry)
    client = model_client(settings)
    with vertex_errors(
        settings,
        denied_fix=_DENIED_FIX,
        refused="the Model Registry refused the request",
        refused_fix="check --vertex-serving-image and registry.model_name",
    ):
        versions = _versions(client, model, settings)
        found = [v for v in versions if v.labels.get("content-hash") == labels["content-hash"]]
        uploaded = not found
        if found:
            version_id = found[0].version_id
        else:
            body = upload_body(
                registry.name, record.version, record.uri, registry.root, image, labels
            )
            version_id = _upload(client, model, body, exists=bool(versions), settings=settings)
            versions = _versions(client, model, settings)
        aliases = _sync_aliases(client, model, versions, hashes, settings)
    return VertexVersion(model, version_id, uploaded, aliases.get(version_id, ()))


def _local_hashes(registry: ModelRegistry) -> dict[str, str]:
    """The managed aliases of aliases.json → the `content-hash` label of their version."""
    wanted = {}
    for alias, version in registry.aliases().items():
        if alias in MANAGED_ALIASES:
            wanted[alias] = label_value(str(registry.version_info(version)["content_hash"])[:40])
    return wanted


def _versions(
    client: aiplatform_v1.ModelServiceClient, model: str, settings: Settings
) -> list[aiplatform_v1.Model]:
    """Every version of `model`; none when the model does not exist yet."""
    from google.api_core.exceptions import NotFound

    try:
        return list(client.list_model_versions(name=model, **_options(settings)))
    except NotFound:
        return []


def _upload(
    client: aiplatform_v1.ModelServiceClient,
    model: str,
    body: aiplatform_v1.Model,
    *,
    exists: bool,
    settings: Settings,
) -> str:
    """Upload `body` as the model's first version (model ID) or a new one (parent model);
    the new version's ID once the operation is done. Sent once: a retry could upload twice."""
    from google.cloud.aiplatform_v1 import UploadModelRequest

    parent, _, model_id = model.rpartition("/models/")
    request = UploadModelRequest(parent=parent, model=body)
    if exists:
        request.parent_model = model
    else:
        request.model_id = model_id
    operation = client.upload_model(request=request, **_options(settings, retry=False))
    try:
        response = operation.result(timeout=UPLOAD_WAIT_SECONDS)
    except concurrent.futures.TimeoutError as exc:
        raise ServiceError(
            vertex_service(settings),
            f"the upload of {model} did not finish within {UPLOAD_WAIT_SECONDS:g} s",
            "it may still finish: a re-run of register finds it by its label rather than "
            "uploading it again",
        ) from exc
    return str(response.model_version_id)


def _holders(
    versions: list[aiplatform_v1.Model],
) -> tuple[dict[str, set[str]], dict[str, str]]:
    """({alias: the version IDs holding it}, {content-hash label: version ID}), for the
    managed aliases and `default`."""
    holders = {alias: set[str]() for alias in (*MANAGED_ALIASES, DEFAULT_ALIAS)}
    by_hash: dict[str, str] = {}
    for version in versions:
        if "content-hash" in version.labels:  # versions uploaded by hand have none
            by_hash.setdefault(version.labels["content-hash"], version.version_id)
        for alias in version.version_aliases:
            if alias in holders:
                holders[alias].add(version.version_id)
    return holders, by_hash


def _sync_aliases(
    client: aiplatform_v1.ModelServiceClient,
    model: str,
    versions: list[aiplatform_v1.Model],
    wanted: dict[str, str],
    settings: Settings,
) -> dict[str, tuple[str, ...]]:
    """Put each managed alias on the version whose content-hash label aliases.json names,
    and `default` with `production`; returns version ID → the managed aliases it holds.

    One merge on the target moves an alias: Vertex AI takes it off the version that held
    it in the same request, so `@production` always names a version. An alias
    aliases.json no longer has is removed (`-alias`) from its holders.
    """
    holders, by_hash = _holders(versions)
    targets = {
        alias: by_hash.get(wanted[alias]) if alias in wanted else None for alias in MANAGED_ALIASES
    }
    changes: dict[str, list[str]] = {}
    for alias, target in targets.items():
        if target is None:
            for holder in sorted(holders[alias]):
                changes.setdefault(holder, []).append(f"-{alias}")
        elif target not in holders[alias]:
            changes.setdefault(target, []).append(alias)
    # What names the model alone (a deployment, `gcloud ai models describe`) serves
    # production; Vertex AI keeps `default` on some version at all times.
    production = targets[PRODUCTION]
    if production is not None and production not in holders[DEFAULT_ALIAS]:
        changes.setdefault(production, []).append(DEFAULT_ALIAS)
    for version_id, aliases in changes.items():
        client.merge_version_aliases(
            name=f"{model}@{version_id}", version_aliases=aliases, **_options(settings)
        )
    held: dict[str, list[str]] = {}
    for alias, target in targets.items():
        if target is not None:
            held.setdefault(target, []).append(alias)
    return {version_id: tuple(aliases) for version_id, aliases in held.items()}


def _options(settings: Settings, *, retry: bool = True) -> dict[str, Any]:
    return google_call_options(ServiceBudget.from_settings(settings), retry=retry)
