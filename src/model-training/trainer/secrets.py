"""The W&B API key from Google Secret Manager, for runs nobody types a key into.

A Vertex AI job's spec holds only the secret's name (`MEGA_WANDB_SECRET`), never the
key: `wandb_key` reads the secret's version with the job's own credentials (its service
account) and returns the key; `trainer.tracking` puts it in this process's environment,
where wandb reads it. The key is never printed, logged or passed on as an argument.

Every request is bounded by the settings' `ServiceBudget` (a per-request timeout, and a
deadline for the retries of a transient failure); every failure is a one-line
`ServiceError` naming the secret and the way out. The client speaks REST, also in
production, so that the tests' loopback stub checks the path production takes;
`MEGA_SECRET_MANAGER_ENDPOINT` names another endpoint, and an `http://` one (a stub) is
sent no credentials.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from common.services import (
    ServiceBudget,
    ServiceError,
    endpoint_credentials,
    google_call_options,
    unreachable_reason,
)

if TYPE_CHECKING:
    from common.settings import Settings

# A secret's id: letters, digits, `-` and `_` (Secret Manager's rule).
_SHORT_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
_FULL_NAME = re.compile(
    r"projects/(?P<project>[^/\s]+)/secrets/(?P<secret>[A-Za-z0-9_-]{1,255})"
    r"(?:/versions/(?P<version>[^/\s]+))?"
)
_DOCS = "docs/cloud.md, The W&B key in Secret Manager"


def secret_version(secret: str, project: str | None) -> str:
    """The full version name `projects/P/secrets/S/versions/V` of a `MEGA_WANDB_SECRET`.

    `secret` is a secret's name in `project` (`wandb-api-key`) or a full name
    (`projects/P/secrets/S`, optionally `/versions/V`); the version defaults to `latest`.

    Raises:
        ServiceError: `secret` is neither, or it is a short name and `project` is None.
    """
    service = f"Secret Manager ({secret})"
    full = _FULL_NAME.fullmatch(secret)
    if full:
        return (
            f"projects/{full['project']}/secrets/{full['secret']}"
            f"/versions/{full['version'] or 'latest'}"
        )
    if not _SHORT_NAME.fullmatch(secret):
        raise ServiceError(
            service,
            "MEGA_WANDB_SECRET is not a secret name",
            "give the secret's name (letters, digits, - and _) or its full name "
            "projects/PROJECT/secrets/NAME[/versions/VERSION]",
        )
    if not project:
        raise ServiceError(
            service,
            "MEGA_WANDB_SECRET names a secret without its project and MEGA_GCP_PROJECT is unset",
            "set MEGA_GCP_PROJECT, or give the full name projects/PROJECT/secrets/NAME",
        )
    return f"projects/{project}/secrets/{secret}/versions/latest"


def wandb_key(settings: Settings) -> str:
    """The W&B API key held by the secret `settings.wandb_secret` names (whitespace around
    it removed: `gcloud secrets create --data-file=-` keeps echo's newline).

    Raises:
        ServiceError: the name is wrong or incomplete; the secret or version does not
            exist; the credentials are missing or refused; the account may not read it;
            Secret Manager cannot be reached within the budget; the version is empty.
    """
    if not settings.wandb_secret:
        raise ValueError("settings.wandb_secret is unset")
    name = secret_version(settings.wandb_secret, settings.gcp_project)
    service = f"Secret Manager ({name})"
    try:
        payload = _access(name, settings)
    except Exception as exc:
        error = _service_error(service, exc)
        if error is None:
            raise  # not the service's: a bug, with its traceback
        raise error from exc
    try:
        key = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        key = ""
    if not key:
        raise ServiceError(
            service,
            "the version holds no text key",
            f"add a version holding the W&B API key ({_DOCS})",
        )
    return key


def _access(name: str, settings: Settings) -> bytes:
    """One bounded `access_secret_version` call; the payload's bytes."""
    from google.cloud.secretmanager import SecretManagerServiceClient

    endpoint = settings.secret_manager_endpoint
    credentials = endpoint_credentials(endpoint)
    client = SecretManagerServiceClient(
        client_options={"api_endpoint": endpoint} if endpoint else None,
        transport="rest",
        **({"credentials": credentials} if credentials else {}),
    )
    budget = ServiceBudget.from_settings(settings)
    response = client.access_secret_version(name=name, **google_call_options(budget))
    return bytes(response.payload.data)


def _service_error(service: str, exc: Exception) -> ServiceError | None:
    """`exc` from the client as the ServiceError a user can act on; None if not the service's."""
    import requests
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    if isinstance(exc, api.NotFound):
        return ServiceError(
            service,
            "no such secret or version",
            f"create it and add the W&B key as a version ({_DOCS}), or check MEGA_WANDB_SECRET "
            "and MEGA_GCP_PROJECT",
        )
    if isinstance(exc, api.PermissionDenied | api.Forbidden):
        return ServiceError(
            service,
            f"permission denied ({exc.message})",
            "grant roles/secretmanager.secretAccessor on the secret to the service account "
            f"the job runs as (MEGA_VERTEX_SERVICE_ACCOUNT; {_DOCS})",
            denied=True,
        )
    # A 401 makes the client refresh its token and try again; anonymous credentials (an
    # http:// endpoint) cannot be refreshed, which google-auth calls InvalidOperation.
    if isinstance(exc, api.Unauthorized | auth.RefreshError | auth.InvalidOperation):
        return ServiceError(
            service,
            f"the credentials were refused ({_first_line(exc)})",
            "check the account the job runs as (MEGA_VERTEX_SERVICE_ACCOUNT), or locally "
            "`gcloud auth application-default login`",
            denied=True,
        )
    if isinstance(exc, auth.DefaultCredentialsError):
        return ServiceError(
            service,
            f"no Google credentials found ({_first_line(exc)})",
            "on Vertex AI the job's service account provides them; elsewhere run "
            "`gcloud auth application-default login`, or set WANDB_API_KEY yourself",
            denied=True,
        )
    unreachable = (api.RetryError, api.ServiceUnavailable, api.DeadlineExceeded)
    if isinstance(exc, (*unreachable, auth.TransportError, requests.RequestException, OSError)):
        return ServiceError(
            service,
            f"unreachable ({unreachable_reason(exc)})",
            "check the network (or MEGA_SECRET_MANAGER_ENDPOINT); MEGA_SERVICE_RETRY_SECONDS "
            "sets how long to keep trying",
        )
    if isinstance(exc, api.GoogleAPICallError):  # a disabled version, a bad request, ...
        return ServiceError(
            service,
            f"request refused ({exc.code} {exc.message})",
            f"check that MEGA_WANDB_SECRET names an enabled version of the secret ({_DOCS})",
            denied=True,
        )
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
